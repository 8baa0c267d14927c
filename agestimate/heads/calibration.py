"""Calibration of a heads model: conformal age intervals and temperature-scaled gender
probabilities, fitted on held-out labelled faces and kept in the model card.

Age
---
Split conformal prediction (Vovk et al.; Lei et al. 2018, "normalised" scores) over the signed
residual of the expected age, divided by the spread of the predicted age distribution::

    score = (true age - age) / max(age_spread, MIN_SPREAD)

The calibration keeps the sorted scores of the calibration faces. An interval at level L is
``age + spread * [s_lo, s_hi]`` where s_lo is the floor((n + 1)(1 - L)/2)-th smallest score and
s_hi the ceil((n + 1)(1 + L)/2)-th: each tail misses with probability at most (1 - L)/2 for a
face exchangeable with the calibration faces, so the interval covers with probability at least
L. The interval is wide where the model's distribution is wide and skewed where its errors
are (old faces are predicted too young). The same scores give a conformal predictive
distribution, hence calibrated threshold probabilities such as P(age < 18).

The scores are kept per group of predicted age (a "Mondrian" split: minors, adults, seniors by
default, `GROUP_EDGES`), so the guarantee holds within each group, not only on average: a
single pool leaves children's intervals far too narrow on UTKFace (52% of 0-9 year olds in an
80% interval, against 78% with the groups; see BENCHMARKS.md). A group with fewer than
`MIN_GROUP_SIZE` calibration faces is merged into its neighbour.

Gender
------
Temperature scaling (Guo et al. 2017): P(female) = sigmoid(logit / T), with T minimising the
negative log-likelihood on the calibration faces. It changes probabilities, never the
predicted gender. One T per band of predicted age (`GENDER_AGE_EDGES`: under 10, 10-17, 18 and
over): children's faces say much less of their gender, and one T over all ages left their
probabilities as sure as adults' (BENCHMARKS.md, issue 28). A band with fewer than
`MIN_GENDER_BAND` calibration faces of known gender takes the T of all faces.

The fitted numbers live in ``model.json`` under ``"calibration"``; `calibrate` writes them.
A model without them predicts NaN intervals and uncalibrated gender probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agestimate.errors import ModelFileError

DEFAULT_LEVEL = 0.8
GROUP_EDGES = (18.0, 65.0)  # predicted age: minors, adults, seniors
MIN_GROUP_SIZE = 100
MIN_SPREAD = 0.5  # years; the age grid's half step, so no score divides by ~0
GENDER_AGE_EDGES = (10.0, 18.0)  # predicted age: children, teenagers, adults
MIN_GENDER_BAND = 50
_PROBABILITY_CLIP = 1e-7


def check_level(level: float) -> float:
    """`level` as a float in (0, 1), or a ValueError naming it."""
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1 (e.g. 0.8), got {level}")
    return level


@dataclass(frozen=True)
class AgeCalibration:
    """Sorted conformal scores per group of predicted age (see the module docstring).

    group_edges : the predicted ages where a group ends and the next begins (ascending).
    scores : one sorted array of scores per group, ``len(group_edges) + 1`` of them.
    """

    group_edges: tuple[float, ...]
    scores: tuple[np.ndarray, ...]

    @classmethod
    def fit(cls, age, spread, true_age, *, group_edges=GROUP_EDGES, min_group_size: int = MIN_GROUP_SIZE) -> AgeCalibration:
        """Scores of calibration faces: predicted `age` and `age_spread`, and their `true_age`, each (n,)."""
        age, spread, true_age = (np.asarray(v, np.float64) for v in (age, spread, true_age))
        if not (age.shape == spread.shape == true_age.shape) or age.ndim != 1:
            raise ValueError(f"age, spread and true_age must be 1-D of equal length, got {age.shape}, {spread.shape}, {true_age.shape}")
        if len(age) == 0:
            raise ValueError("need at least one calibration face")
        edges = sorted(float(edge) for edge in group_edges)
        while edges:  # merge the smallest group too small to calibrate into its neighbour
            sizes = np.bincount(np.digitize(age, edges), minlength=len(edges) + 1)
            if sizes.min() >= min_group_size:
                break
            smallest = int(np.argmin(sizes))
            edges.pop(min(smallest, len(edges) - 1))
        scores = (true_age - age) / np.maximum(spread, MIN_SPREAD)
        groups = np.digitize(age, edges)
        return cls(tuple(edges), tuple(np.sort(scores[groups == g]) for g in range(len(edges) + 1)))

    def _groups(self, age: np.ndarray) -> np.ndarray:
        return np.digitize(age, self.group_edges)

    def interval(self, age, spread, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ends (n,) of the intervals at `level` for predicted `age` and `spread` (n,).

        The lower end is at least 0; an end the calibration set is too small to bound at this
        level is -inf or +inf (before the clip at 0), as conformal prediction says.
        """
        level = check_level(level)
        age = np.asarray(age, np.float64)
        scale = np.maximum(np.asarray(spread, np.float64), MIN_SPREAD)
        low, high = np.empty_like(age), np.empty_like(age)
        groups = self._groups(age)
        for group, scores in enumerate(self.scores):
            n = len(scores)
            rank_low = int(np.floor((n + 1) * (1 - level) / 2 + 1e-9))  # 1-based; 1e-9: 1 - 0.8 is 0.19999999999999996
            rank_high = int(np.ceil((n + 1) * (1 + level) / 2 - 1e-9))
            s_low = scores[rank_low - 1] if rank_low >= 1 else -np.inf
            s_high = scores[rank_high - 1] if rank_high <= n else np.inf
            chosen = groups == group
            low[chosen] = age[chosen] + s_low * scale[chosen]
            high[chosen] = age[chosen] + s_high * scale[chosen]
        return np.maximum(low, 0.0), high

    def probability_below(self, age, spread, threshold: float) -> np.ndarray:
        """P(true age < `threshold`) (n,) from the conformal predictive distribution (ties count half)."""
        age = np.asarray(age, np.float64)
        z = (threshold - age) / np.maximum(np.asarray(spread, np.float64), MIN_SPREAD)
        probability = np.empty_like(age)
        groups = self._groups(age)
        for group, scores in enumerate(self.scores):
            chosen = groups == group
            below = np.searchsorted(scores, z[chosen], side="left")
            ties = np.searchsorted(scores, z[chosen], side="right") - below
            probability[chosen] = (below + 0.5 * (ties + 1)) / (len(scores) + 1)
        return probability

    def to_dict(self) -> dict:
        return {"group_edges": list(self.group_edges), "min_spread": MIN_SPREAD,
                "scores": [np.round(scores, 4).tolist() for scores in self.scores]}

    @classmethod
    def from_dict(cls, values: dict) -> AgeCalibration:
        scores = tuple(np.asarray(group, np.float64) for group in values["scores"])
        if len(scores) != len(values["group_edges"]) + 1 or any(len(s) == 0 or (np.diff(s) < 0).any() for s in scores):
            raise ValueError("scores must be one non-empty sorted list per group")
        return cls(tuple(float(edge) for edge in values["group_edges"]), scores)


def logit(probability: np.ndarray) -> np.ndarray:
    probability = np.clip(np.asarray(probability, np.float64), _PROBABILITY_CLIP, 1 - _PROBABILITY_CLIP)
    return np.log(probability) - np.log1p(-probability)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def _temperature(prob_female: np.ndarray, female: np.ndarray) -> float:
    """T minimising the negative log-likelihood of the genders `female` (bool) under sigmoid(logit / T)."""
    signed = np.where(female, logit(prob_female), -logit(prob_female))  # each face's log-likelihood: log sigmoid(signed / T)

    def nll(log_t: np.ndarray) -> np.ndarray:
        scaled = signed[None, :] / np.exp(log_t)[:, None]
        return np.logaddexp(0, -scaled).mean(axis=1)

    grid = np.linspace(-3, 3, 601)  # T from 0.05 to 20, steps of 1%
    best = grid[np.argmin(nll(grid))]
    fine = np.linspace(best - 0.01, best + 0.01, 201)
    return float(np.exp(fine[np.argmin(nll(fine))]))


@dataclass(frozen=True)
class GenderCalibration:
    """Temperatures of the gender logit, one per band of predicted age: P(female) =
    sigmoid(logit / T[band]); the bands are split at `age_edges` (none: one T for all)."""

    temperatures: tuple[float, ...]
    age_edges: tuple[float, ...] = ()

    @classmethod
    def fit(cls, prob_female, gender, predicted_age=None, *, age_edges=GENDER_AGE_EDGES,
            min_band: int = MIN_GENDER_BAND) -> GenderCalibration:
        """Temperatures minimising the negative log-likelihood of the known genders (0 male, 1
        female; -1 skipped) in each band of `predicted_age` (None: one band)."""
        gender, prob_female = np.asarray(gender), np.asarray(prob_female, np.float64)
        known = gender >= 0
        if not known.any():
            raise ValueError("no calibration face has a known gender")
        pooled = _temperature(prob_female[known], gender[known] == 1)
        if predicted_age is None or not age_edges:
            return cls((pooled,))
        band = np.digitize(np.asarray(predicted_age), age_edges)
        temperatures = []
        for b in range(len(age_edges) + 1):
            chosen = known & (band == b)
            temperatures.append(_temperature(prob_female[chosen], gender[chosen] == 1) if chosen.sum() >= min_band else pooled)
        return cls(tuple(temperatures), tuple(float(edge) for edge in age_edges))

    def apply(self, prob_female, predicted_age=None) -> np.ndarray:
        """Calibrated P(female) for raw P(female) (n,) of faces predicted `predicted_age` (n,) old; 0.5 stays 0.5."""
        if len(self.temperatures) == 1:
            return sigmoid(logit(prob_female) / self.temperatures[0])
        band = np.digitize(np.asarray(predicted_age), self.age_edges)
        return sigmoid(logit(prob_female) / np.asarray(self.temperatures)[band])

    def to_dict(self) -> dict:
        return {"temperatures": list(self.temperatures), "age_edges": list(self.age_edges)}

    @classmethod
    def from_dict(cls, values: dict) -> GenderCalibration:
        if "temperature" in values:  # cards written before the bands
            return cls((float(values["temperature"]),))
        return cls(tuple(map(float, values["temperatures"])), tuple(map(float, values["age_edges"])))

    def describe(self) -> str:
        """The temperatures with their bands of predicted age, e.g. "3.100 under 10, 1.800 10-18, 1.200 from 18"."""
        if len(self.temperatures) == 1:
            return f"{self.temperatures[0]:.3f}"
        ends = [f"under {self.age_edges[0]:g}"] + [f"{low:g}-{high:g}" for low, high in zip(self.age_edges, self.age_edges[1:])] \
            + [f"from {self.age_edges[-1]:g}"]
        return ", ".join(f"{t:.3f} {end}" for t, end in zip(self.temperatures, ends))


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` fitted: the age intervals, the gender temperature (None without a gender
    head) and where the calibration faces came from."""

    age: AgeCalibration
    gender: GenderCalibration | None
    source: dict

    def to_dict(self) -> dict:
        return {"method": "split conformal: (true - predicted age) / spread, per group of predicted age; "
                          "gender temperature scaling",
                **self.source, "age": self.age.to_dict(),
                "gender": None if self.gender is None else self.gender.to_dict()}

    @classmethod
    def from_card(cls, card: dict, *, path="model.json") -> Calibration | None:
        """The calibration recorded in a model card, or None when it has none."""
        values = card.get("calibration")
        if values is None:
            return None
        try:
            gender = values.get("gender")
            return cls(AgeCalibration.from_dict(values["age"]),
                       None if gender is None else GenderCalibration.from_dict(gender),
                       {key: values[key] for key in ("faces", "sources") if key in values})
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: unreadable calibration ({error!r})") from error


def fit_calibration(outputs, true_age, gender=None, *, source: dict | None = None,
                    group_edges=GROUP_EDGES) -> Calibration:
    """A `Calibration` from head outputs of labelled faces (raw, uncalibrated gender) and their
    labels: the age intervals from the faces with an age (NaN: unknown), the gender temperature
    from those with a gender (-1: unknown)."""
    true_age = np.asarray(true_age, np.float64)
    aged = ~np.isnan(true_age)
    age = AgeCalibration.fit(outputs.age[aged], outputs.age_spread[aged], true_age[aged], group_edges=group_edges)
    has_gender = gender is not None and (np.asarray(gender) >= 0).any() and (outputs.gender >= 0).any()
    return Calibration(age, GenderCalibration.fit(outputs.prob_female, gender, outputs.age) if has_gender else None,
                       {"faces": int(len(true_age)), **(source or {})})
