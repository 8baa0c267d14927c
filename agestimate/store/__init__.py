"""The embedding store: the SQLite record, its FAISS index, `embed` filling it, nearest labelled faces."""
