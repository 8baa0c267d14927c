"""agestimate: age and gender estimation from face photos."""

from .errors import AgestimateError, ImageLoadError
from .faces import FaceEncoder
from .images import load_image
from .estimator import Estimator, Face, ImageResult, predict, predict_batch, predict_embeddings
from .store import EmbeddingStore

__all__ = [
    "AgestimateError",
    "EmbeddingStore",
    "Estimator",
    "Face",
    "FaceEncoder",
    "ImageLoadError",
    "ImageResult",
    "load_image",
    "predict",
    "predict_batch",
    "predict_embeddings",
]
__version__ = "0.1.0"
