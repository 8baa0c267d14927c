"""Faces in images: detection, alignment, and the recogniser pass giving embeddings and descriptor features."""
