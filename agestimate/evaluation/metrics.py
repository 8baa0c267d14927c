"""Age and gender metrics: MAE, CS@l, age-group accuracies and a flat summary.

NumPy only (no scikit-learn: it is not a core dependency, and costs seconds at import), so
evaluation works wherever inference does.

Age groups
----------
An age is mapped to a group with ``np.digitize`` over a scheme's cut points; an age that
falls exactly on a cut point belongs to the upper group. Predictions are continuous and
are mapped with the same cut points, so an Adience prediction of 23.4 counts as "25-32".

- ``"adience8"``: Adience's 8 groups 0-2, 4-6, 8-12, 15-20, 25-32, 38-43, 48-53, 60+,
  cut at 3, 7, 13.5, 22.5, 35, 45.5, 56.5.
- ``"bins5"``: 5-year bins 0-4, 5-9, ..., 95-99, and an open-ended 100+.
- ``"bins10"``: 10-year bins 0-9, ..., 90-99, and an open-ended 100+.
"""

from __future__ import annotations

import numpy as np

from agestimate.io.labels import UNKNOWN_GENDER

AGE_GROUP_CUTS = {
    "adience8": np.array([3.0, 7.0, 13.5, 22.5, 35.0, 45.5, 56.5]),
    "bins5": np.arange(5.0, 101.0, 5.0),
    "bins10": np.arange(10.0, 101.0, 10.0),
}
_ADIENCE8_LABELS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60+")


def _check_scheme(scheme: str) -> np.ndarray:
    if scheme not in AGE_GROUP_CUTS:
        raise ValueError(f"unknown age group scheme {scheme!r}; supported: {sorted(AGE_GROUP_CUTS)}")
    return AGE_GROUP_CUTS[scheme]


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """Convert a pair of label/prediction vectors to float64 and check their shapes."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got shapes {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("need at least one sample, got empty arrays")
    return y_true, y_pred


def age_group(ages, scheme: str) -> np.ndarray:
    """Map ages to group indices of an age group scheme.

    Parameters
    ----------
    ages : array-like, shape (N,)
        Ages in years (true or predicted; fractions allowed).
    scheme : {"adience8", "bins5", "bins10"}
        Group scheme (see the module docstring).

    Returns
    -------
    ndarray of int64, shape (N,)
        Group index, 0 for the youngest group; a cut point belongs to the upper group.
    """
    cuts = _check_scheme(scheme)
    return np.digitize(np.asarray(ages, dtype=np.float64), cuts).astype(np.int64)


def age_group_labels(scheme: str) -> list[str]:
    """Names of a scheme's groups, in group-index order, e.g. ``["0-2", "4-6", ...]``."""
    cuts = _check_scheme(scheme)
    if scheme == "adience8":
        return list(_ADIENCE8_LABELS)
    edges = [0, *cuts.astype(int)]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]



def decade_keys(prefix: str) -> list[str]:
    """Metric names per decade of true age: ``<prefix>_0_9`` ... ``<prefix>_90_99``, ``<prefix>_100plus``."""
    return [f"{prefix}_{label.replace('-', '_').replace('+', 'plus')}" for label in age_group_labels("bins10")]


DECADE_KEYS = decade_keys("mae")
"""Keys of the MAE per decade of true age in `age_metrics`: mae_0_9, ..., mae_90_99, mae_100plus."""
# Children's gender, the hardest to read: accuracy under these true ages (gender_accuracy_under_10, _under_13).
GENDER_BANDS = (10, 13)
GENDER_BAND_KEYS = [f"gender_accuracy_under_{age}" for age in GENDER_BANDS]


def mae(y_true, y_pred) -> float:
    """Mean absolute error in years (Eq. 9); y_true and y_pred have shape (N,)."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def cumulative_score(y_true, y_pred, *, tolerance: float = 5) -> float:
    """CS@l (Eq. 10): the fraction (0 to 1, not percent) of samples with ``|error| <= tolerance``."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred) <= tolerance))


def exact_accuracy(y_true, y_pred, *, scheme: str) -> float:
    """Fraction of samples whose predicted age falls in the true age's group."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(age_group(y_true, scheme) == age_group(y_pred, scheme)))


def one_off_accuracy(y_true, y_pred, *, scheme: str) -> float:
    """One-class-off accuracy: the predicted group is the true group or an adjacent one."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(np.abs(age_group(y_true, scheme) - age_group(y_pred, scheme)) <= 1))


def gender_accuracy(g_true, g_pred) -> float | None:
    """Gender accuracy over the samples whose true gender is known.

    Parameters
    ----------
    g_true : array-like of int, shape (N,)
        0 male, 1 female, -1 unknown; unknown samples are left out.
    g_pred : array-like of int, shape (N,)
        Predicted gender, 0 or 1; -1 from a model without a gender head.

    Returns
    -------
    float or None
        Accuracy from 0 to 1, or None when no sample has a known gender or no gender was
        predicted at all (every prediction -1).
    """
    g_true = np.asarray(g_true, dtype=np.int64)
    g_pred = np.asarray(g_pred, dtype=np.int64)
    if g_true.ndim != 1 or g_true.shape != g_pred.shape:
        raise ValueError(f"g_true and g_pred must be 1-D of equal length, got {g_true.shape} and {g_pred.shape}")
    known = g_true != UNKNOWN_GENDER
    if not known.any() or (g_pred == UNKNOWN_GENDER).all():
        return None
    return float(np.mean(g_true[known] == g_pred[known]))


def bias(y_true, y_pred) -> float:
    """Mean signed error in years, predicted minus true: positive when ages are overestimated."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(y_pred - y_true))


def mae_by_group(y_true, y_pred, groups, *, signed: bool = False) -> dict:
    """MAE (or, with ``signed``, the mean signed error, see `bias`) within each group.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (N,)
        True and predicted ages.
    groups : array-like, shape (N,)
        Any hashable label per sample (an age group index, a gender, a race).

    Returns
    -------
    dict
        ``{group: mae}`` in sorted group order, for the groups present; NumPy scalars are
        converted to Python ones so the dict serialises to JSON.
    """
    y_true, y_pred = _paired(y_true, y_pred)
    groups = np.asarray(groups)
    if groups.shape != y_true.shape:
        raise ValueError(f"groups must have shape {y_true.shape}, got {groups.shape}")
    error = y_pred - y_true if signed else np.abs(y_true - y_pred)
    return {g.item(): float(error[groups == g].mean()) for g in np.unique(groups)}


def age_metrics(y_true, y_pred) -> dict:
    """Age metrics as one flat dict, the same keys for every data set.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (N,)
        True and predicted ages.

    Returns
    -------
    dict
        ``n``, ``mae``, ``cs5`` (fraction), ``one_off_<scheme>`` and ``exact_<scheme>`` for
        adience8, bins5 and bins10, ``mae_60plus`` (true age >= 60) and the MAE per decade
        of true age, ``mae_0_9`` ... ``mae_90_99``, ``mae_100plus``; ``bias`` (mean signed
        error, predicted minus true) and the bias per decade of true age, ``bias_0_9`` ...
        ``bias_100plus``. A value is None where there is no sample to compute it from (every
        value but ``n`` for empty input).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    result = {"n": int(y_true.size)}
    if y_true.size == 0:
        keys = ["mae", "cs5"] + [f"{kind}_{s}" for s in AGE_GROUP_CUTS for kind in ("one_off", "exact")]
        return result | dict.fromkeys(keys + ["mae_60plus"] + DECADE_KEYS + ["bias"] + decade_keys("bias"))
    result["mae"] = mae(y_true, y_pred)
    result["cs5"] = cumulative_score(y_true, y_pred, tolerance=5)
    for scheme in AGE_GROUP_CUTS:
        result[f"one_off_{scheme}"] = one_off_accuracy(y_true, y_pred, scheme=scheme)
        result[f"exact_{scheme}"] = exact_accuracy(y_true, y_pred, scheme=scheme)
    old = y_true >= 60
    result["mae_60plus"] = mae(y_true[old], y_pred[old]) if old.any() else None
    decade = age_group(y_true, "bins10")
    by_decade = mae_by_group(y_true, y_pred, decade)
    result.update({key: by_decade.get(i) for i, key in enumerate(DECADE_KEYS)})
    result["bias"] = bias(y_true, y_pred)
    by_decade = mae_by_group(y_true, y_pred, decade, signed=True)
    result.update({key: by_decade.get(i) for i, key in enumerate(decade_keys("bias"))})
    return result


def summary(y_true, y_pred, *, gender_true=None, gender_pred=None) -> dict:
    """All age metrics (see `age_metrics`) over the samples with a known age, plus
    ``gender_accuracy`` over those with a known gender: overall, under 10 and under 13
    (``gender_accuracy_under_10``, ``_under_13``) and per decade of true age
    (``gender_accuracy_0_9`` ... ``gender_accuracy_100plus``; these need the age too), and the
    counts ``n_gender`` (``n`` counts the samples with an age), as one flat dict.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (N,)
        True ages (NaN for unknown: a face labelled with its gender only) and predicted ages.
    gender_true, gender_pred : array-like of int, shape (N,), optional
        True (-1 for unknown) and predicted gender; the gender accuracies are None when either
        is missing or no true gender is known (in that band).
    """
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    aged = ~np.isnan(y_true)
    result = age_metrics(y_true[aged], y_pred[aged])
    keys = ["gender_accuracy", *GENDER_BAND_KEYS, *decade_keys("gender_accuracy")]
    if gender_true is None or gender_pred is None:
        return result | {"n_gender": 0} | dict.fromkeys(keys)
    gender_true, gender_pred = np.asarray(gender_true), np.asarray(gender_pred)
    result["n_gender"] = int((gender_true >= 0).sum())
    result["gender_accuracy"] = gender_accuracy(gender_true, gender_pred)
    for key, below in zip(GENDER_BAND_KEYS, GENDER_BANDS):
        result[key] = gender_accuracy(gender_true[y_true < below], gender_pred[y_true < below])
    decades = np.full(len(y_true), -1)
    decades[aged] = age_group(y_true[aged], "bins10")
    result.update({key: gender_accuracy(gender_true[decades == i], gender_pred[decades == i])
                   for i, key in enumerate(decade_keys("gender_accuracy"))})
    return result


def interval_metrics(y_true, low, high, *, level: float) -> dict:
    """Coverage and width of age intervals at one level, overall and per decade of true age.

    Parameters
    ----------
    y_true, low, high : array-like, shape (N,)
        True ages and the intervals' ends.
    level : the intervals' nominal level, e.g. 0.8; it names the keys.

    Returns
    -------
    dict
        ``coverage_80`` (fraction of true ages inside, ends included), ``median_width_80``
        and ``coverage_80_0_9`` ... ``coverage_80_100plus`` (None where a decade is empty), for
        level 0.8; all None for a model without intervals (NaN ends).
    """
    y_true, low = _paired(y_true, low)
    _, high = _paired(y_true, high)
    tag = f"{round(100 * level):d}"
    keys = [f"coverage_{tag}", f"median_width_{tag}", *decade_keys(f"coverage_{tag}")]
    if np.isnan(low).all():
        return dict.fromkeys(keys)
    inside = (low <= y_true) & (y_true <= high)
    decades = age_group(y_true, "bins10")
    result = {keys[0]: float(inside.mean()), keys[1]: float(np.median(high - low))}
    result.update({key: float(inside[decades == i].mean()) if (decades == i).any() else None
                   for i, key in enumerate(keys[2:])})
    return result


def reliability_bins(probability, outcome, *, bins: int = 15) -> list[dict]:
    """Binary predictions grouped by their confidence (the probability of the predicted class)
    in `bins` equal-width bins from 0.5 to 1: for each bin with faces, ``count``, mean
    ``confidence`` and ``accuracy``. probability: P(outcome = 1), outcome: 0 or 1, each (N,)."""
    probability = np.asarray(probability, np.float64)
    outcome = np.asarray(outcome).astype(bool)
    predicted = probability > 0.5
    confidence = np.where(predicted, probability, 1 - probability)
    index = np.minimum(((confidence - 0.5) * 2 * bins).astype(int), bins - 1)
    return [{"low": 0.5 + b / (2 * bins), "high": 0.5 + (b + 1) / (2 * bins), "count": int((index == b).sum()),
             "confidence": float(confidence[index == b].mean()), "accuracy": float((predicted == outcome)[index == b].mean())}
            for b in range(bins) if (index == b).any()]


def expected_calibration_error(probability, outcome, *, bins: int = 15) -> float:
    """ECE (Guo et al. 2017) of binary predictions: the count-weighted mean gap between
    confidence and accuracy over `reliability_bins`. probability: P(outcome = 1), each (N,)."""
    table = reliability_bins(probability, outcome, bins=bins)
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in table) / total)


def threshold_metrics(y_true, probability_below, *, threshold: float = 18) -> dict:
    """How well P(age < threshold) answers "is this person under `threshold`?".

    Returns ``under_18_share`` (true share), ``under_18_accuracy`` (P > 0.5 against the truth),
    ``under_18_brier`` and ``under_18_ece`` for threshold 18.
    """
    y_true, probability = _paired(y_true, probability_below)
    tag = f"under_{threshold:g}"
    if np.isnan(probability).all():
        return dict.fromkeys([f"{tag}_share", f"{tag}_accuracy", f"{tag}_brier", f"{tag}_ece"])
    below = y_true < threshold
    return {f"{tag}_share": float(below.mean()), f"{tag}_accuracy": float(np.mean((probability > 0.5) == below)),
            f"{tag}_brier": float(np.mean((probability - below) ** 2)),
            f"{tag}_ece": expected_calibration_error(probability, below)}
