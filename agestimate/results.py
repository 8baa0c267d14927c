"""What a prediction returns: `Face` (one face and what the model says of it), `ImageResult`
(the faces of one image, a sequence of `Face`), and the one rule that makes a `Face` of head outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from agestimate.evaluation.metrics import age_group, age_group_labels
from agestimate.heads.model import HeadOutputs, gender_codes
from agestimate.io.labels import GENDER_NAMES, UNKNOWN_GENDER

AGE_GROUPS = age_group_labels("adience8")


@dataclass(frozen=True)
class Face:
    """One face and what the model says of it.

    box : (x1, y1, x2, y2) in image pixels. landmarks : five (x, y) points (eyes, nose, mouth).
    age : expected age in years (EVR). age_spread : standard deviation of the predicted age
    distribution. age_interval : (low, high), the conformal interval of the true age at the
    level asked for (default 0.8; NaN for an uncalibrated model; see `agestimate.heads.calibration`).
    age_group : Adience-8 group of `age`. gender : "male" or "female", with gender_probability
    its calibrated probability (of the predicted gender; `prob_female` is P(female)); both None
    for a model without a gender head. confidence :
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

    @property
    def prob_female(self) -> float | None:
        """P(female) (None for a model without a gender head)."""
        if self.gender is None:
            return None
        return self.gender_probability if self.gender == "female" else 1 - self.gender_probability

    def to_dict(self) -> dict:
        result = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "embedding"}
        result["box"], result["landmarks"] = list(self.box), [list(point) for point in self.landmarks]
        # JSON has no NaN or infinity: an end the model cannot give (no calibration, or too few
        # calibration faces for the level) is None
        result["age_interval"] = [end if np.isfinite(end) else None for end in self.age_interval]
        if self.embedding is not None:
            result["embedding"] = self.embedding.tolist()
        return result


def predicted_face(*, box, landmarks, detection_score: float, detection_method: str, age: float, age_spread: float,
                   age_interval: tuple[float, float], prob_female: float | None, confidence: float,
                   track: int | None = None, embedding: np.ndarray | None = None) -> Face:
    """The `Face` that a prediction makes: the Adience-8 group of `age`, the gender P(female)
    `prob_female` says (female above 0.5, see `gender_codes`) with its probability, or no gender
    where `prob_female` is None (a model without a gender head)."""
    if prob_female is None:
        gender, probability = None, None
    else:
        code = int(gender_codes([prob_female])[0])
        gender, probability = GENDER_NAMES[code], float(prob_female if code == 1 else 1 - prob_female)
    return Face(
        box=tuple(float(v) for v in box),
        landmarks=tuple((float(x), float(y)) for x, y in landmarks),
        detection_score=float(detection_score),
        detection_method=detection_method,
        age=float(age),
        age_spread=float(age_spread),
        age_interval=(float(age_interval[0]), float(age_interval[1])),
        age_group=AGE_GROUPS[int(age_group([age], "adience8")[0])],
        gender=gender,
        gender_probability=probability,
        confidence=float(confidence),
        track=track,
        embedding=embedding,
    )


def faces_from_outputs(outputs: HeadOutputs, detections, embeddings: np.ndarray | None = None) -> list[Face]:
    """One `Face` per detection (an object with box, landmarks, score, method) and row of
    `outputs`, with the row of `embeddings` (copied) when given."""
    return [
        predicted_face(
            box=detection.box, landmarks=detection.landmarks, detection_score=detection.score,
            detection_method=detection.method, age=outputs.age[i], age_spread=outputs.age_spread[i],
            age_interval=(outputs.age_low[i], outputs.age_high[i]),
            prob_female=None if int(outputs.gender[i]) == UNKNOWN_GENDER else float(outputs.prob_female[i]),
            confidence=outputs.confidence[i],
            embedding=None if embeddings is None else embeddings[i].copy(),
        )
        for i, detection in enumerate(detections)
    ]


@dataclass(frozen=True, eq=False)
class ImageResult(Sequence):
    """The faces of one image, or of one video frame, or why it could not be read: a sequence
    of `Face` (``for face in result``, ``len(result)``, ``result[0]``), largest first.

    source : the image's path (or a short description of an in-memory source), or the video's.
    error, error_kind : why the source could not be read (see `ImageLoadError`), else None.
    frame : index of the frame in a video, None for an image.
    analysed : False for a video frame whose faces were carried over from an earlier frame.
    image : the decoded RGB image, for `plot` and `save` (`predict` keeps it; `predict_batch`
        only with ``return_image=True``).
    width, height : the image's size in pixels as decoded (0 when unknown or unreadable).
    model : the model that made the result (a shipped model's name or the folder), runtime :
        what ran the recogniser (backend, device, precision, threads; see `RuntimeInfo`).
    """

    source: str
    faces: list[Face]
    error: str | None = None
    error_kind: str | None = None
    frame: int | None = None
    analysed: bool = True
    image: np.ndarray | None = field(default=None, repr=False)
    width: int = 0
    height: int = 0
    model: str | None = None
    runtime: dict | None = None

    # -- a sequence of faces -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index):
        return self.faces[index]

    def __iter__(self):
        return iter(self.faces)

    def __eq__(self, other) -> bool:
        if isinstance(other, ImageResult):
            return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name != "image")
        if isinstance(other, (list, tuple)):
            return list(self.faces) == list(other)
        return NotImplemented

    __hash__ = None

    @property
    def ok(self) -> bool:
        return self.error is None

    # -- views -----------------------------------------------------------------------------
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

    def to_dict(self) -> dict:
        """The result as JSON-ready values: source, frame, image size, model, runtime, error and
        one `Face.to_dict` per face."""
        return {"source": self.source, "frame": self.frame, "image": {"width": self.width, "height": self.height},
                "model": self.model, "runtime": self.runtime, "error": self.error, "error_kind": self.error_kind,
                "faces": [face.to_dict() for face in self.faces]}

    def to_json(self, **options) -> str:
        """`to_dict` as a JSON string (`options` go to `json.dumps`, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **options)

    def to_pandas(self):
        """The `summary` rows as a pandas DataFrame, one row per face (or one with the error)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("ImageResult.to_pandas needs pandas, which is not installed: pip install pandas") from error
        return pandas.DataFrame(self.summary())

    def plot(self) -> np.ndarray:
        """A copy of the image (RGB) with each face's box and "age (interval), gender" drawn on it."""
        from agestimate.io.drawing import draw_faces

        if self.image is None:
            raise ValueError(f"{self.source}: the result holds no image; predict with return_image=True to plot it")
        return draw_faces(self.image, self.faces)

    def save(self, path: str | Path) -> Path:
        """Write the annotated image (`plot`) to `path` (the format follows the suffix); returns the path."""
        from agestimate.io.drawing import save_image

        save_image(path, self.plot())
        return Path(path)
