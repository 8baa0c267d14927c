"""`evaluate`: run a heads model over the labelled faces of a store and measure it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StoreError
from .heads import AgeGenderHeads
from .hygiene import leaking_test_faces
from .labels import GENDER_NAMES
from .metrics import mae_by_group, summary
from .store import EmbeddingStore, FaceRecords

RACE_NAMES = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}


@dataclass(frozen=True)
class Evaluation:
    """Predictions for labelled faces and their metrics.

    metrics : flat dict (see `agestimate.metrics.summary`) plus ``mae_gender_<name>`` and
        ``mae_race_<name>`` (the fairness table, where labels exist).
    """

    metrics: dict
    records: FaceRecords
    predicted_age: np.ndarray
    predicted_gender: np.ndarray


def measure(records: FaceRecords, predicted_age: np.ndarray, predicted_gender: np.ndarray) -> Evaluation:
    """Metrics of predictions for `records` (their true labels)."""
    metrics = summary(records.age, predicted_age, gender_true=records.gender, gender_pred=predicted_gender)
    for name, labels, names in (("gender", records.gender, dict(enumerate(GENDER_NAMES))), ("race", records.race, RACE_NAMES)):
        known = labels >= 0
        by_group = mae_by_group(records.age[known], predicted_age[known], labels[known]) if known.any() else {}
        metrics.update({f"mae_{name}_{names.get(group, group)}": value for group, value in by_group.items()})
    return Evaluation(metrics, records, predicted_age, predicted_gender)


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
    the model was trained on (the store must hold it).

    exclude_near_duplicates : leave out the faces with a near-duplicate in the train split
        (identity cosine >= this; see `agestimate.hygiene.leaking_test_faces`); the metrics
        then also hold ``mae_with_near_duplicates``, ``cs5_with_near_duplicates`` and
        ``excluded_near_duplicates``.
    """
    heads = AgeGenderHeads.load(model, providers=providers)
    records, _ = labelled_faces(store, heads.require_descriptor())
    chosen = select_split(records, split)
    if len(chosen) == 0:
        present = sorted(set(records.split.tolist()) - {""})
        raise StoreError(f"{store}: no labelled faces in split {split!r} (splits present: {present or 'none'}; 'all' takes every face)")
    outputs = heads.predict(chosen.features)
    result = measure(chosen, outputs.age, outputs.gender)
    if exclude_near_duplicates is None:
        return result
    leaking = records.face_id[leaking_test_faces(records, threshold=exclude_near_duplicates)]
    keep = ~np.isin(chosen.face_id, leaking)
    clean = measure(chosen.subset(keep), outputs.age[keep], outputs.gender[keep])
    clean.metrics.update({"excluded_near_duplicates": int((~keep).sum()), "near_duplicate_threshold": exclude_near_duplicates,
                          "mae_with_near_duplicates": result.metrics["mae"], "cs5_with_near_duplicates": result.metrics["cs5"]})
    return clean
