"""The library's error types: every failure a user can cause or fix is one of these."""

from __future__ import annotations


class AgestimateError(Exception):
    """Base class of every error agestimate raises on purpose."""


class ImageLoadError(AgestimateError):
    """An image source could not be read or decoded; the message names the source and why.

    `kind` is a short category for summaries: "unreadable", "empty", "not an image",
    "corrupt", "too large" or "bad array".
    """

    def __init__(self, source: str, reason: str, *, kind: str = "corrupt"):
        self.source = source
        self.reason = reason
        self.kind = kind
        super().__init__(f"{source}: {reason}")

    @classmethod
    def unreadable(cls, source: str, error: OSError) -> ImageLoadError:
        """The file `source` could not be read (`error` from the operating system)."""
        return cls(source, f"cannot read file ({error.strerror or error})", kind="unreadable")


class ModelFileError(AgestimateError):
    """A weight file is missing or does not match its pinned SHA-256."""


class StoreError(AgestimateError):
    """An embedding store is missing, damaged, or was made by another model."""


class LabelError(AgestimateError):
    """A label source (file name or CSV row) could not be parsed."""
