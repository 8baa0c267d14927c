"""Files replaced whole: a reader, another process or a crash sees the old file or the new one, never half."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; flushed to disk and renamed onto
    `path` when the block succeeds, removed when it fails. Hidden (a leading dot), so folder
    readers such as Parquet's skip it, and named per process and thread, so writers never share it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
