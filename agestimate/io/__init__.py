"""Reading and writing: decoded images, the sources a user names, labels, prediction rows, drawings, whole-file writes."""
