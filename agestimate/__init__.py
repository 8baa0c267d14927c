"""agestimate: age and gender estimation from face photos."""

from agestimate.errors import AgestimateError, ImageLoadError
from agestimate.estimator import Estimator, predict, predict_batch, predict_embeddings
from agestimate.faces.encoder import FaceEncoder
from agestimate.io.images import load_image
from agestimate.results import Face, ImageResult
from agestimate.store.store import EmbeddingStore

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
