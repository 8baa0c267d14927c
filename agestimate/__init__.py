"""agestimate: age and gender estimation from face photos."""

from .errors import AgestimateError, ImageLoadError
from .faces import FaceEncoder
from .images import load_image
from .store import EmbeddingStore

__all__ = ["AgestimateError", "EmbeddingStore", "FaceEncoder", "ImageLoadError", "load_image"]
__version__ = "0.1.0"
