"""Age and gender of every face in an image: the `Estimator`, and `predict` on the default model."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agestimate.evaluation.metrics import age_group, age_group_labels
from agestimate.faces.encoder import EncodedImage, FaceEncoder
from agestimate.heads.calibration import DEFAULT_LEVEL, check_level
from agestimate.heads.model import AgeGenderHeads, HeadOutputs
from agestimate.io.images import DEFAULT_MAX_PIXELS
from agestimate.io.labels import GENDER_NAMES, UNKNOWN_GENDER
from agestimate.runtime.registry import WEIGHTS

DEFAULT_MODEL = WEIGHTS / "default"  # features of DEFAULT_DESCRIPTOR: one recogniser pass and the task branch
FROZEN_MODEL = WEIGHTS / "frozen"  # grid509 alone: the pretrained recogniser's features, no branch
FLIP_MODEL = WEIGHTS / "flip"  # the default's features averaged with the mirrored crop's: two passes
EMBEDDING_MODEL = WEIGHTS / "embedding"  # plain 512-d ArcFace embeddings
SHIPPED_MODELS = {"default": DEFAULT_MODEL, "frozen": FROZEN_MODEL, "flip": FLIP_MODEL, "embedding": EMBEDDING_MODEL}
AGE_GROUPS = age_group_labels("adience8")


@dataclass(frozen=True)
class Face:
    """One face and what the model says of it.

    box : (x1, y1, x2, y2) in image pixels. landmarks : five (x, y) points (eyes, nose, mouth).
    age : expected age in years (EVR). age_spread : standard deviation of the predicted age
    distribution. age_interval : (low, high), the conformal interval of the true age at the
    level asked for (default 0.8; NaN for an uncalibrated model; see `agestimate.heads.calibration`).
    age_group : Adience-8 group of `age`. gender : "male" or "female", with gender_probability
    its calibrated probability; both None for a model without a gender head. confidence :
    agreement of the EVR age and the RAPL position in [0, 1] (probability mass of positions
    within 3 years of `age`). track : in videos, the number of the track the face belongs to
    (see `agestimate.apps.tracking`), else None.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    detection_score: float
    detection_method: str
    age: float
    age_spread: float
    age_interval: tuple[float, float]
    age_group: str
    gender: str | None
    gender_probability: float | None
    confidence: float
    track: int | None = None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        result = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "embedding"}
        result["box"], result["landmarks"] = list(self.box), [list(point) for point in self.landmarks]
        # JSON has no NaN or infinity: an end the model cannot give (no calibration, or too few
        # calibration faces for the level) is None
        result["age_interval"] = [end if np.isfinite(end) else None for end in self.age_interval]
        if self.embedding is not None:
            result["embedding"] = self.embedding.tolist()
        return result


@dataclass(frozen=True)
class ImageResult:
    """The faces of one image, or of one video frame, or why it could not be read.

    source : the image's path (or a short description of an in-memory source), or the video's.
    error, error_kind : why the source could not be read (see `ImageLoadError`), else None.
    frame : index of the frame in a video, None for an image.
    analysed : False for a video frame whose faces were carried over from an earlier frame.
    image : the decoded RGB image, kept only when asked for (``return_image=True``), for `plot`.
    """

    source: str
    faces: list[Face]
    error: str | None = None
    error_kind: str | None = None
    frame: int | None = None
    analysed: bool = True
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> list[dict]:
        """One row per face (file, frame, face index, box x1..y2 in pixels to 0.1, the `Face`
        fields without landmarks and embedding, the age interval as age_low and age_high, floats
        to 4 decimals), or a single row whose
        ``error`` says why there is no face: the reason the source could not be read, or "no face"."""
        head = {"file": self.source, "frame": self.frame}
        if not self.ok:
            return [{**head, "error": self.error}]
        if not self.faces:
            return [{**head, "error": "no face"}]
        rows = []
        for index, face in enumerate(self.faces):
            values = replace(face, embedding=None).to_dict()  # no list of 512 floats to drop
            x1, y1, x2, y2 = values.pop("box")
            values.pop("landmarks")
            values["age_low"], values["age_high"] = values.pop("age_interval")
            rows.append({**head, "face": index, "x1": round(x1, 1), "y1": round(y1, 1), "x2": round(x2, 1),
                         "y2": round(y2, 1), **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}})
        return rows

    def plot(self) -> np.ndarray:
        """A copy of the image (RGB) with each face's box and "age (interval), gender" drawn on it."""
        from agestimate.io.drawing import draw_faces

        if self.image is None:
            raise ValueError(f"{self.source}: the result holds no image; predict with return_image=True to plot it")
        return draw_faces(self.image, self.faces)


def model_folder(model=None) -> Path:
    """The folder of `model`: a shipped model's name (None: "default"), else the path given."""
    if model is None or str(model) in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(model or "default")]
    return Path(model)


class Estimator:
    """Face detection, descriptors and trained heads, loaded once and reused.

    Parameters
    ----------
    model : folder with `model.json` and `heads.onnx`, or the name of a shipped model (see
        `SHIPPED_MODELS`; default: "default").
    backend, precision, providers, threads, det_size, det_thresh, max_faces, crops : see `FaceEncoder`.
    """

    def __init__(self, model=None, *, backend=None, precision="auto", providers=None, threads=None, det_size=640,
                 det_thresh=0.5, max_faces=None, crops=False):
        self.heads = AgeGenderHeads.load(model_folder(model), providers=providers)
        self.encoder = FaceEncoder(det_size=det_size, det_thresh=det_thresh, max_faces=max_faces, crops=crops,
                                   backend=backend, precision=precision, providers=providers, threads=threads,
                                   descriptor=self.heads.require_descriptor())

    @classmethod
    def load(cls, path, **options) -> Estimator:
        """An estimator over the model folder `path` (see the class parameters for `options`)."""
        return cls(path, **options)

    def predict_embeddings(self, X, *, interval: float = DEFAULT_LEVEL) -> HeadOutputs:
        """Head outputs for feature vectors of the model's descriptor (`heads.card["descriptor"]`),
        shape (n, d), with age intervals at level `interval`. For plain ArcFace embeddings use
        ``Estimator.load(EMBEDDING_MODEL)`` or `agestimate.predict_embeddings`."""
        return self.heads.predict(X, interval=interval)

    def _faces(self, encoded: EncodedImage, return_embedding: bool, interval: float = DEFAULT_LEVEL) -> list[Face]:
        outputs = self.heads.predict(encoded.features, interval=interval)
        groups = age_group(outputs.age, "adience8")
        faces = []
        for i, detection in enumerate(encoded.faces):
            female, code = float(outputs.gender_prob_female[i]), int(outputs.gender[i])
            faces.append(Face(
                box=tuple(float(v) for v in detection.box),
                landmarks=tuple((float(x), float(y)) for x, y in detection.landmarks),
                detection_score=detection.score,
                detection_method=detection.method,
                age=float(outputs.age[i]),
                age_spread=float(outputs.age_spread[i]),
                age_interval=(float(outputs.age_low[i]), float(outputs.age_high[i])),
                age_group=AGE_GROUPS[groups[i]],
                gender=None if code == UNKNOWN_GENDER else GENDER_NAMES[code],
                gender_probability=None if code == UNKNOWN_GENDER else (female if code == 1 else 1 - female),
                confidence=float(outputs.confidence[i]),
                embedding=encoded.embeddings[i].copy() if return_embedding else None,
            ))
        return faces

    def predict(self, image, *, return_embedding: bool = False, max_pixels=DEFAULT_MAX_PIXELS,
                interval: float = DEFAULT_LEVEL) -> list[Face]:
        """Every face in one image (any source `load_image` takes), largest first, with age
        intervals at level `interval`.

        Raises `ImageLoadError` when the image cannot be read.
        """
        check_level(interval)
        encoded = self.encoder.encode(image, max_pixels=max_pixels)
        if encoded.error is not None:
            raise encoded.error
        return self._faces(encoded, return_embedding, interval)

    def predict_batch(self, images: Iterable, *, batch_size: int = 32, show_progress: bool = False,
                      return_embedding: bool = False, return_image: bool = False,
                      max_pixels=DEFAULT_MAX_PIXELS, interval: float = DEFAULT_LEVEL) -> Iterator[ImageResult]:
        """One `ImageResult` per image, lazily and in input order, with age intervals at level
        `interval`; a bad image gives an error record.

        Results are not held back to fill a batch: when the next image is not ready within
        `agestimate.faces.encoder.PATIENCE` (0.1 s; a camera that stalls, say), the images already
        prepared come out, faces or not. With ``return_image=True`` each result keeps its
        decoded image (`ImageResult.plot`); up to about 3 x `batch_size` are then in memory.
        """
        check_level(interval)
        total = len(images) if show_progress and hasattr(images, "__len__") else None
        encoded_images = self.encoder.encode_batch(images, batch_size=batch_size, max_pixels=max_pixels,
                                                   keep_image=return_image)
        for encoded in tqdm(encoded_images, total=total, disable=not show_progress, unit="img", dynamic_ncols=True):
            if encoded.error is not None:
                yield ImageResult(encoded.source, [], encoded.error.reason, encoded.error.kind)
            else:
                yield ImageResult(encoded.source, self._faces(encoded, return_embedding, interval), image=encoded.image)


@functools.lru_cache(maxsize=4)
def _estimator(max_faces=None, backend=None) -> Estimator:
    return Estimator(max_faces=max_faces, backend=backend)


def predict(image, *, max_faces: int | None = None, return_embedding: bool = False,
            backend: str | None = None, interval: float = DEFAULT_LEVEL) -> list[Face]:
    """Age and gender of every face in `image` with the default model (loaded once, on first use);
    `interval` is the level of `Face.age_interval`."""
    return _estimator(max_faces, backend).predict(image, return_embedding=return_embedding, interval=interval)


def predict_embeddings(embeddings, *, interval: float = DEFAULT_LEVEL) -> HeadOutputs:
    """Age and gender from L2-normalised 512-d ArcFace (w600k_mbf) embeddings, shape (n, 512).

    Uses the shipped model trained on plain embeddings; no detector or recogniser is loaded.
    """
    return _embedding_heads().predict(embeddings, interval=interval)


@functools.lru_cache(maxsize=1)
def _embedding_heads() -> AgeGenderHeads:
    return AgeGenderHeads.load(EMBEDDING_MODEL)


def predict_batch(images: Iterable, *, batch_size: int = 32, show_progress: bool = False,
                  max_faces: int | None = None, backend: str | None = None,
                  interval: float = DEFAULT_LEVEL) -> Iterator[ImageResult]:
    """`Estimator.predict_batch` on the default model."""
    return _estimator(max_faces, backend).predict_batch(images, batch_size=batch_size, show_progress=show_progress,
                                                        interval=interval)


