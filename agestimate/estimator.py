"""Age and gender of every face in an image: the `Estimator`, and `predict` on the default model."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agestimate.faces.encoder import AS_CONSTRUCTED, EncodedImage, FaceEncoder
from agestimate.heads.calibration import DEFAULT_LEVEL, check_level
from agestimate.heads.model import AgeGenderHeads, HeadOutputs
from agestimate.io.images import DEFAULT_MAX_PIXELS
from agestimate.results import AGE_GROUPS, Face, ImageResult, faces_from_outputs  # noqa: F401 (AGE_GROUPS: its old home)
from agestimate.runtime.registry import WEIGHTS

DEFAULT_MODEL = WEIGHTS / "default"  # features of DEFAULT_DESCRIPTOR: one recogniser pass and the task branch
FROZEN_MODEL = WEIGHTS / "frozen"  # grid509 alone: the pretrained recogniser's features, no branch
FLIP_MODEL = WEIGHTS / "flip"  # the default's features averaged with the mirrored crop's: two passes
EMBEDDING_MODEL = WEIGHTS / "embedding"  # plain 512-d ArcFace embeddings
SHIPPED_MODELS = {"default": DEFAULT_MODEL, "frozen": FROZEN_MODEL, "flip": FLIP_MODEL, "embedding": EMBEDDING_MODEL}
__all__ = ["Estimator", "Face", "ImageResult", "model_folder", "predict", "predict_batch", "predict_embeddings"]


def model_folder(model=None) -> Path:
    """The folder of `model`: a shipped model's name (None: "default"), else the path given."""
    if model is None or str(model) in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(model or "default")]
    return Path(model)


def model_name(model=None) -> str:
    """How results name `model`: a shipped model's name, else the folder given."""
    return str(model or "default") if model is None or str(model) in SHIPPED_MODELS else str(model)


class Estimator:
    """Face detection, descriptors and trained heads, loaded once and reused.

    Parameters
    ----------
    model : folder with `model.json` and `heads.onnx`, or the name of a shipped model (see
        `SHIPPED_MODELS`; default: "default").
    backend, precision, providers, threads, det_size, det_thresh : see `FaceEncoder`.
    max_faces, crops : the defaults of `predict` and `predict_batch`, which take them per call
        (see `FaceEncoder`; another value loads no model).
    """

    def __init__(self, model=None, *, backend=None, precision="auto", providers=None, threads=None, det_size=640,
                 det_thresh=0.5, max_faces=None, crops=False):
        self.model = model_name(model)
        self.heads = AgeGenderHeads.load(model_folder(model), providers=providers)
        self.encoder = FaceEncoder(det_size=det_size, det_thresh=det_thresh, max_faces=max_faces, crops=crops,
                                   backend=backend, precision=precision, providers=providers, threads=threads,
                                   descriptor=self.heads.require_descriptor())
        self._runtime = self.encoder.runtime.as_dict()

    @classmethod
    def load(cls, path, **options) -> Estimator:
        """An estimator over the model folder `path` (see the class parameters for `options`)."""
        return cls(path, **options)

    def predict_features(self, X, *, interval: float = DEFAULT_LEVEL) -> HeadOutputs:
        """Head outputs for feature vectors of the model's descriptor (`heads.card["descriptor"]`,
        as `FaceEncoder` computes them beside the embeddings), shape (n, d), with age intervals at
        level `interval`. For plain 512-d ArcFace embeddings use `agestimate.predict_embeddings`."""
        return self.heads.predict(X, interval=interval)

    def predict_embeddings(self, X, *, interval: float = DEFAULT_LEVEL) -> HeadOutputs:
        """Deprecated name of `predict_features` (it takes the descriptor's features, not embeddings)."""
        warnings.warn("Estimator.predict_embeddings is deprecated: use Estimator.predict_features (features of the "
                      "model's descriptor); agestimate.predict_embeddings takes 512-d embeddings", FutureWarning,
                      stacklevel=2)
        return self.predict_features(X, interval=interval)

    def _results(self, encoded_images: list[EncodedImage], return_embedding: bool, interval: float) -> list[ImageResult]:
        """An `ImageResult` per encoded image, the heads run once over the faces of all of them."""
        features = [encoded.features for encoded in encoded_images if encoded.error is None and len(encoded.faces)]
        outputs = self.heads.predict(np.concatenate(features), interval=interval) if features else None
        results, start = [], 0
        for encoded in encoded_images:
            common = {"width": encoded.width, "height": encoded.height, "model": self.model, "runtime": dict(self._runtime)}
            if encoded.error is not None:
                results.append(ImageResult(encoded.source, [], encoded.error.reason, encoded.error.kind, **common))
                continue
            count = len(encoded.faces)
            faces = [] if not count else faces_from_outputs(
                outputs.subset(slice(start, start + count)), encoded.faces,
                encoded.embeddings if return_embedding else None)
            start += count
            results.append(ImageResult(encoded.source, faces, image=encoded.image, **common))
        return results

    def predict(self, image, *, max_faces=AS_CONSTRUCTED, crops=AS_CONSTRUCTED, return_embedding: bool = False,
                return_image: bool = True, max_pixels=DEFAULT_MAX_PIXELS, interval: float = DEFAULT_LEVEL) -> ImageResult:
        """Every face in one image (any source `load_image` takes), largest first, with age
        intervals at level `interval`: an `ImageResult`, a sequence of `Face` that keeps the
        decoded image (for `ImageResult.plot` and `save`; ``return_image=False``: not).

        max_faces, crops : for this call (default: the estimator's; see `FaceEncoder`).
        Raises `ImageLoadError` when the image cannot be read.
        """
        check_level(interval)
        encoded = self.encoder.encode(image, max_pixels=max_pixels, keep_image=return_image, max_faces=max_faces,
                                      crops=crops)
        if encoded.error is not None:
            raise encoded.error
        return self._results([encoded], return_embedding, interval)[0]

    def predict_batch(self, images: Iterable, *, batch_size: int = 32, show_progress: bool = False,
                      max_faces=AS_CONSTRUCTED, crops=AS_CONSTRUCTED, return_embedding: bool = False,
                      return_image: bool = False, max_pixels=DEFAULT_MAX_PIXELS,
                      interval: float = DEFAULT_LEVEL) -> Iterator[ImageResult]:
        """One `ImageResult` per image, lazily and in input order, with age intervals at level
        `interval`; a bad image gives an error record. The options are those of `predict`.

        Results are not held back to fill a batch: when the next image is not ready within
        `agestimate.faces.encoder.PATIENCE` (0.1 s; a camera that stalls, say), the images already
        prepared come out, faces or not. The heads run once per batch of faces. With
        ``return_image=True`` each result keeps its
        decoded image (`ImageResult.plot`); up to about 3 x `batch_size` are then in memory.
        """
        check_level(interval)
        total = len(images) if show_progress and hasattr(images, "__len__") else None
        batches = self.encoder.encode_batches(images, batch_size=batch_size, max_pixels=max_pixels,
                                              keep_image=return_image, max_faces=max_faces, crops=crops)
        with tqdm(total=total, disable=not show_progress, unit="img", dynamic_ncols=True) as progress:
            for batch in batches:
                for result in self._results(batch, return_embedding, interval):
                    progress.update()
                    yield result


@functools.lru_cache(maxsize=4)
def _estimator(model=None, backend=None) -> Estimator:
    """The estimator of `model` on `backend`, loaded once: the per-call options (max_faces, crops)
    are no part of this key, so they never load a second detector or recogniser."""
    return Estimator(model, backend=backend)


def _shipped_key(model):
    """One cache key per model: None and "default" are the same one."""
    return None if model is None or str(model) == "default" else str(model)


def predict(image, *, model=None, max_faces: int | None = None, crops: bool = False, return_embedding: bool = False,
            max_pixels=DEFAULT_MAX_PIXELS, backend: str | None = None, interval: float = DEFAULT_LEVEL) -> ImageResult:
    """Age and gender of every face in `image` (see `Estimator.predict`) with `model` (default: the
    default model; loaded once, on first use); `interval` is the level of `Face.age_interval`.
    Returns an `ImageResult`: iterate over it for the `Face`s, or plot, save, `to_json`, `to_pandas` it."""
    return _estimator(_shipped_key(model), backend).predict(
        image, max_faces=max_faces, crops=crops, return_embedding=return_embedding, max_pixels=max_pixels,
        interval=interval)


def predict_embeddings(embeddings, *, interval: float = DEFAULT_LEVEL) -> HeadOutputs:
    """Age and gender from L2-normalised 512-d ArcFace (w600k_mbf) embeddings, shape (n, 512).

    Uses the shipped model trained on plain embeddings; no detector or recogniser is loaded.
    """
    return _embedding_heads().predict(embeddings, interval=interval)


@functools.lru_cache(maxsize=1)
def _embedding_heads() -> AgeGenderHeads:
    return AgeGenderHeads.load(EMBEDDING_MODEL)


def predict_batch(images: Iterable, *, model=None, batch_size: int = 32, show_progress: bool = False,
                  max_faces: int | None = None, crops: bool = False, return_embedding: bool = False,
                  return_image: bool = False, max_pixels=DEFAULT_MAX_PIXELS, backend: str | None = None,
                  interval: float = DEFAULT_LEVEL) -> Iterator[ImageResult]:
    """`Estimator.predict_batch` with `model` (default: the default model), the options of `predict`."""
    return _estimator(_shipped_key(model), backend).predict_batch(
        images, batch_size=batch_size, show_progress=show_progress, max_faces=max_faces, crops=crops,
        return_embedding=return_embedding, return_image=return_image, max_pixels=max_pixels, interval=interval)
