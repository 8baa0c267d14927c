"""`evaluate`: run a heads model over the labelled faces of a store and measure it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agestimate.errors import StoreError
from agestimate.evaluation.hygiene import leaking_test_faces
from agestimate.evaluation.metrics import (
    expected_calibration_error,
    interval_metrics,
    mae_by_group,
    summary,
    threshold_metrics,
)
from agestimate.heads.model import AgeGenderHeads
from agestimate.io.labels import GENDER_NAME_OF_CODE
from agestimate.store.store import EmbeddingStore, FaceRecords

RACE_NAMES = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}
INTERVAL_LEVELS = (0.8, 0.9)
MINOR_AGE = 18


@dataclass(frozen=True)
class Evaluation:
    """Predictions for labelled faces and their metrics.

    metrics : flat dict (see `agestimate.evaluation.metrics.summary`) plus ``mae_gender_<name>`` and
        ``mae_race_<name>`` (the fairness table, where labels exist); with `uncertainty`, the
        coverage and width of its intervals (`agestimate.evaluation.metrics.interval_metrics`), how well
        P(age < 18) answers "is this a minor?" and ``gender_ece``.
    uncertainty : what a calibrated model says beyond the point estimates, per face:
        ``intervals`` {level: (low, high)}, ``prob_female`` and ``prob_under_18``; None when
        the predictions came without it.
    """

    metrics: dict
    records: FaceRecords
    predicted_age: np.ndarray
    predicted_gender: np.ndarray
    uncertainty: dict | None = None

    def subset(self, mask) -> Evaluation:
        """The same evaluation on the faces of `mask`, its metrics recomputed."""
        uncertainty = None if self.uncertainty is None else {
            "intervals": {level: (low[mask], high[mask]) for level, (low, high) in self.uncertainty["intervals"].items()},
            "prob_female": self.uncertainty["prob_female"][mask], "prob_under_18": self.uncertainty["prob_under_18"][mask]}
        return measure(self.records.subset(mask), self.predicted_age[mask], self.predicted_gender[mask], uncertainty=uncertainty)


def measure(records: FaceRecords, predicted_age: np.ndarray, predicted_gender: np.ndarray, *,
            uncertainty: dict | None = None) -> Evaluation:
    """Metrics of predictions for `records` (their true labels); see `Evaluation` for `uncertainty`.
    Age metrics count the faces with an age label, gender metrics those with a gender label."""
    metrics = summary(records.age, predicted_age, gender_true=records.gender, gender_pred=predicted_gender)
    aged = ~np.isnan(records.age)
    for name, labels, names in (("gender", records.gender, GENDER_NAME_OF_CODE), ("race", records.race, RACE_NAMES)):
        known = aged & (labels >= 0)
        by_group = mae_by_group(records.age[known], predicted_age[known], labels[known]) if known.any() else {}
        metrics.update({f"mae_{name}_{names.get(group, group)}": value for group, value in by_group.items()})
    if uncertainty is not None and aged.any():
        for level, (low, high) in uncertainty["intervals"].items():
            metrics.update(interval_metrics(records.age[aged], low[aged], high[aged], level=level))
        metrics.update(threshold_metrics(records.age[aged], uncertainty["prob_under_18"][aged], threshold=MINOR_AGE))
        known = (records.gender >= 0) & (predicted_gender >= 0)
        metrics["gender_ece"] = (expected_calibration_error(uncertainty["prob_female"][known], records.gender[known])
                                 if known.any() else None)
    return Evaluation(metrics, records, predicted_age, predicted_gender, uncertainty)


def predict_records(heads: AgeGenderHeads, records: FaceRecords, *, levels=INTERVAL_LEVELS) -> Evaluation:
    """Predict `records` with `heads` and measure them, intervals and probabilities included
    when the model is calibrated."""
    outputs = heads.predict(records.features)
    uncertainty = None
    if heads.calibration is not None:
        uncertainty = {
            "intervals": {level: heads.calibration.age.interval(outputs.age, outputs.age_spread, level) for level in levels},
            "prob_female": outputs.prob_female,
            "prob_under_18": heads.calibration.age.probability_below(outputs.age, outputs.age_spread, MINOR_AGE),
        }
    return measure(records, outputs.age, outputs.gender, uncertainty=uncertainty)


def select_split(records: FaceRecords, split: str) -> FaceRecords:
    """Faces of one split ("train", "val", "test"), or all of them ("all")."""
    return records if split == "all" else records.subset(records.split == split)


def labelled_faces(store, descriptor: str | None = None) -> tuple[FaceRecords, str]:
    """The largest face of every labelled image in `store`, with the features of `descriptor`
    (default: the store's own), and that descriptor's name."""
    with EmbeddingStore(store) as database:
        descriptor = descriptor or database.descriptor
        return database.faces(labelled=True, primary=True, descriptor=descriptor), descriptor


def evaluate(model, store, *, split: str = "test", exclude_near_duplicates: float | None = None,
             providers=None) -> Evaluation:
    """Predict the labelled faces of `split` in `store` with the heads in the folder `model`.

    The largest face of each labelled image is used, with the features of the descriptor
    the model was trained on (the store must hold it). A calibrated model is also measured on
    its 80% and 90% intervals, P(age < 18) and the calibration of its gender probabilities.

    exclude_near_duplicates : leave out the faces with a near-duplicate in the train split
        (identity cosine >= this; see `agestimate.evaluation.hygiene.leaking_test_faces`); the metrics
        then also hold ``mae_with_near_duplicates``, ``cs5_with_near_duplicates`` and
        ``excluded_near_duplicates``.
    """
    heads = AgeGenderHeads.load(model, providers=providers)
    records, _ = labelled_faces(store, heads.require_descriptor())
    chosen = select_split(records, split)
    if len(chosen) == 0:
        present = sorted(set(records.split.tolist()) - {""})
        raise StoreError(f"{store}: no labelled faces in split {split!r} (splits present: {present or 'none'}; 'all' takes every face)")
    result = predict_records(heads, chosen)
    if exclude_near_duplicates is None:
        return result
    with EmbeddingStore(store) as database:
        leaking = records.face_id[leaking_test_faces(database, records, threshold=exclude_near_duplicates)]
    keep = ~np.isin(chosen.face_id, leaking)
    clean = result.subset(keep)
    clean.metrics.update({"excluded_near_duplicates": int((~keep).sum()), "near_duplicate_threshold": exclude_near_duplicates,
                          "mae_with_near_duplicates": result.metrics["mae"], "cs5_with_near_duplicates": result.metrics["cs5"]})
    return clean
