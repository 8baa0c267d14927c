"""Age/gender heads at inference: an ONNX graph over embeddings, run with ONNX Runtime.

A model directory holds ``model.json`` (the model card) and ``heads.onnx``, as written by
``agestimate.training.export.save_model_dir``. The graph maps features (N, d) to an age
distribution over 0..max_age, the expected age, [male, female] probabilities and a
distribution over RAPL age positions. The card's calibration (see `agestimate.heads.calibration`)
turns these into age intervals and calibrated gender probabilities.

Confidence
----------
The RAPL paper (Eq. 12) scores agreement between the two age estimates over a set of images:
the fraction whose EVR age and position age (the age of the argmax position) differ by at
most t years; Table 5 reaches 100% at t = 3. Per face we report the expectation of that
indicator under the position distribution instead of at its argmax: the probability mass of
positions whose age lies within t (default 3) years of the EVR age. It is a number in [0, 1]
that can be thresholded, and its mean over a set estimates the paper's score. A model
trained without RAPL exports the age distribution as its position distribution, so there
the confidence measures how concentrated the age distribution is around its mean.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agestimate.errors import ModelFileError
from agestimate.faces.descriptors import Descriptor
from agestimate.heads.calibration import DEFAULT_LEVEL, Calibration, check_level
from agestimate.io.atomic import atomic_path
from agestimate.io.labels import UNKNOWN_GENDER
from agestimate.runtime.sessions import providers_or_default

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of model.json and heads.onnx, written by agestimate.training.export
INPUT_NAME = "features"
OUTPUT_NAMES = ("age_probs", "age", "gender_probs", "position_probs")
REQUIRED_CARD_FIELDS = ("format_version", "input_dim", "max_age", "position_ages", "options")


def gender_codes(prob_female: np.ndarray, *, uses_gender: bool = True) -> np.ndarray:
    """Gender codes from P(female), shape (N,): 1 female where P(female) > 0.5, else 0 male;
    `UNKNOWN_GENDER` (-1) for every face of a model without a gender head."""
    prob_female = np.asarray(prob_female)
    if not uses_gender:
        return np.full(prob_female.shape, UNKNOWN_GENDER, np.int64)
    return (prob_female > 0.5).astype(np.int64)


@dataclass(frozen=True)
class HeadOutputs:
    """Predictions for N feature vectors, in input order.

    Attributes
    ----------
    age : ndarray of float32, shape (N,)
        Expected age in years (Eq. 1).
    age_spread : ndarray of float32, shape (N,)
        Standard deviation of the age distribution, in years.
    age_low, age_high : ndarray of float64, shape (N,)
        Conformal interval of the true age at the level asked for (NaN for a model without
        calibration; see `agestimate.heads.calibration`).
    age_probs : ndarray of float32, shape (N, max_age + 1)
        Probability of each age 0..max_age.
    prob_female : ndarray of float32, shape (N,)
        P(female), temperature-scaled when the model is calibrated; 0.5 for a model trained
        without gender.
    gender : ndarray of int64, shape (N,)
        0 male, 1 female (see `gender_codes`); -1 for a model trained without gender.
    position_age : ndarray of float32, shape (N,)
        Age of the most probable RAPL position.
    confidence : ndarray of float32, shape (N,)
        EVR/RAPL agreement in [0, 1] (see the module docstring).
    """

    age: np.ndarray
    age_spread: np.ndarray
    age_low: np.ndarray
    age_high: np.ndarray
    age_probs: np.ndarray
    prob_female: np.ndarray
    gender: np.ndarray
    position_age: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.age)

    @property
    def gender_prob_female(self) -> np.ndarray:
        """Deprecated name of `prob_female`."""
        warnings.warn("HeadOutputs.gender_prob_female is deprecated: use HeadOutputs.prob_female (P(female))",
                      FutureWarning, stacklevel=2)
        return self.prob_female

    def subset(self, mask) -> HeadOutputs:
        """The rows selected by a boolean mask or an index array."""
        return HeadOutputs(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})

    @classmethod
    def concatenate(cls, parts) -> HeadOutputs:
        """The rows of several `HeadOutputs`, one after the other."""
        return cls(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in cls.__dataclass_fields__})


def write_card(model_dir, card: dict, *, default=None) -> None:
    """Write `card` as the model card ``model.json`` of `model_dir`, atomically (a temporary file,
    then a rename); `default` converts what JSON cannot hold (see `json.dumps`)."""
    with atomic_path(Path(model_dir) / "model.json") as temporary:
        temporary.write_text(json.dumps(card, indent=2, default=default) + "\n")


def update_card(model_dir, **fields) -> dict:
    """Set `fields` in the model card ``model.json`` of `model_dir`, written atomically; returns the card."""
    card = {**json.loads((Path(model_dir) / "model.json").read_text()), **fields}
    write_card(model_dir, card)
    return card


class AgeGenderHeads:
    """Trained heads, loaded from a model directory with `load`.

    Attributes
    ----------
    card : dict
        The parsed ``model.json``.
    input_dim : int
        Width d of the features the heads take.
    age_labels : ndarray of float32, shape (max_age + 1,)
        The ages of the ``age_probs`` columns.
    position_ages : ndarray of float32, shape (n_positions,)
        The ages of the position distribution's columns.
    uses_gender : bool
        Whether the model has a trained gender head.
    descriptor : str or None
        The face features the heads take (see `agestimate.faces.descriptors`), from the card; None
        for heads over other features (see `require_descriptor`).
    calibration : Calibration or None
        The card's calibration, applied by `predict` (None: the card has none, or the model
        was loaded with ``calibrated=False``).
    """

    def __init__(self, session: ort.InferenceSession, card: dict, *, card_path: Path | None = None,
                 calibration: Calibration | None = None):
        self.session = session
        self.card = card
        self.card_path = card_path
        self.input_dim = int(card["input_dim"])
        self.age_labels = np.arange(int(card["max_age"]) + 1, dtype=np.float32)
        self.position_ages = np.asarray(card["position_ages"], dtype=np.float32)
        self.uses_gender = bool(card["options"]["use_gender"])
        self.descriptor = card.get("descriptor")
        self.calibration = calibration

    @classmethod
    def load(cls, model_dir, *, providers=None, calibrated: bool = True) -> AgeGenderHeads:
        """Load ``model.json`` and the ONNX graph it names from ``model_dir``.

        Parameters
        ----------
        model_dir : str or Path
            Directory written by ``save_model_dir``.
        providers : list of str, optional
            ONNX Runtime execution providers; default: `agestimate.runtime.sessions.default_providers`.
        calibrated : bool
            Apply the card's calibration; False gives the raw outputs (what `calibrate` fits).
        """
        model_dir = Path(model_dir)
        card_path = model_dir / "model.json"
        if not card_path.is_file():
            raise ModelFileError(f"no model card {card_path} (is {model_dir} a heads model directory?)")
        try:
            card = json.loads(card_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelFileError(f"{card_path} is not valid JSON: {error}") from error
        missing = [name for name in REQUIRED_CARD_FIELDS if name not in card]
        if missing:
            raise ModelFileError(f"{card_path} lacks the fields {missing}")
        if card["format_version"] != FORMAT_VERSION:
            raise ModelFileError(
                f"{card_path} has format_version {card['format_version']!r}; this agestimate reads {FORMAT_VERSION}"
            )
        if "descriptor" in card:
            try:
                dim = Descriptor.parse(str(card["descriptor"])).dim
            except ValueError as error:
                raise ModelFileError(f"{card_path}: {error}") from None
            if dim != card["input_dim"]:
                raise ModelFileError(f"{card_path}: descriptor {card['descriptor']!r} has {dim} features, "
                                     f"input_dim says {card['input_dim']}")
        onnx_path = model_dir / card.get("onnx_file", "heads.onnx")
        if not onnx_path.exists():
            raise ModelFileError(f"ONNX file {onnx_path} named in {card_path} does not exist")
        if not onnx_path.is_file():
            raise ModelFileError(f"ONNX file {onnx_path} is not a regular file")
        try:
            session = ort.InferenceSession(str(onnx_path), providers=providers_or_default(providers))
        except Exception as error:  # ONNX Runtime raises its own exception types for bad files
            raise ModelFileError(f"cannot load ONNX file {onnx_path}: {error}") from error
        outputs = {o.name for o in session.get_outputs()}
        if not set(OUTPUT_NAMES) <= outputs:
            raise ModelFileError(f"{onnx_path} lacks the outputs {sorted(set(OUTPUT_NAMES) - outputs)}")
        logger.debug("loaded heads %s on %s", onnx_path, session.get_providers())
        calibration = Calibration.from_card(card, path=card_path) if calibrated else None
        if calibrated and calibration is None:
            logger.warning("%s has no calibration: age intervals are NaN and gender probabilities uncalibrated "
                           "(agestimate calibrate --model %s --store STORE)", card_path, model_dir)
        return cls(session, card, card_path=card_path, calibration=calibration)

    def require_descriptor(self) -> str:
        """The card's descriptor, or a clear `ModelFileError` where the card names none (then
        nothing says which face features to compute for these heads)."""
        if self.descriptor is None:
            raise ModelFileError(
                f"{self.card_path or 'the model card'} names no descriptor, so the face features these heads take "
                f"({self.input_dim} values) are unknown; add e.g. \"descriptor\": \"grid509\" (2048) or \"emb\" (512)"
            )
        return self.descriptor

    def predict(self, X, *, batch_size: int = 4096, confidence_tolerance: float = 3.0,
                interval: float = DEFAULT_LEVEL) -> HeadOutputs:
        """Predict age, gender and confidence for feature vectors.

        Parameters
        ----------
        X : array-like, shape (N, d)
            Features of the kind the heads were trained on (e.g. L2-normalised embeddings).
        batch_size : int
            Rows per ONNX Runtime call. On CPU, 4096 keeps the intermediate arrays in cache:
            about 300k vectors/s on 2 cores for 512-d input, against 210k at 65536; a GPU
            may prefer larger batches.
        confidence_tolerance : float
            t of Eq. 12, in years.
        interval : float
            Level of the age intervals ``age_low``, ``age_high`` (default 0.8: the true age lies
            inside for at least 80% of faces like the calibration faces).

        Returns
        -------
        HeadOutputs
            Arrays of length N in input order (empty for N = 0).
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.input_dim:
            raise ValueError(f"X must have shape (N, {self.input_dim}), got {X.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        interval = check_level(interval)
        if len(X) == 0:
            return self._empty_outputs()
        parts = [self._predict_batch(X[i : i + batch_size], confidence_tolerance, interval)
                 for i in range(0, len(X), batch_size)]
        return parts[0] if len(parts) == 1 else HeadOutputs.concatenate(parts)

    def _empty_outputs(self) -> HeadOutputs:
        vector = {name: np.zeros(0, np.float32) for name in HeadOutputs.__dataclass_fields__}
        vector["gender"] = np.zeros(0, np.int64)
        vector["age_probs"] = np.zeros((0, len(self.age_labels)), np.float32)
        return HeadOutputs(**vector)

    def _predict_batch(self, X: np.ndarray, tolerance: float, level: float) -> HeadOutputs:
        age_probs, age, gender_probs, position_probs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: X})
        second_moment = age_probs @ np.square(self.age_labels)
        age_spread = np.sqrt(np.maximum(second_moment - np.square(age), 0))
        female = np.ascontiguousarray(gender_probs[:, 1])
        if self.calibration is None:
            age_low = age_high = np.full(len(X), np.nan)
        else:
            age_low, age_high = self.calibration.age.interval(age, age_spread, level)
            if self.calibration.gender is not None and self.uses_gender:
                female = self.calibration.gender.apply(female, age).astype(np.float32)
        gender = gender_codes(female, uses_gender=self.uses_gender)
        distance = np.subtract.outer(age, self.position_ages)  # (N, n), in place below: this is the hot loop
        np.abs(distance, out=distance)
        confidence = np.einsum("ij,ij->i", position_probs, distance <= tolerance, dtype=np.float32)
        return HeadOutputs(
            age=age,
            age_spread=age_spread,
            age_low=age_low,
            age_high=age_high,
            age_probs=age_probs,
            prob_female=female,
            gender=gender,
            position_age=self.position_ages[position_probs.argmax(axis=1)],
            confidence=np.clip(confidence, 0.0, 1.0),
        )
