"""Person folds: people dealt into folds, and a model measured on every person with an
uncertainty calibrated without that person."""

from __future__ import annotations

import numpy as np

from agestimate.errors import StoreError
from agestimate.evaluation.calibrate import fit_calibration_on
from agestimate.evaluation.measure import INTERVAL_LEVELS, MINOR_AGE, Evaluation, labelled_faces, measure, select_split
from agestimate.heads.calibration import GROUP_EDGES
from agestimate.heads.model import AgeGenderHeads
from agestimate.store.store import FaceRecords


def deal_into_folds(people: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`people` in an order drawn with `rng`, dealt into `folds` groups whose sizes differ by at most one."""
    return np.array_split(rng.permutation(people), folds)


def fold_of_each_face(records: FaceRecords, folds: int = 5, *, seed: int = 0) -> np.ndarray:
    """Fold number (n,) of each face: people dealt into folds with `seed` (`deal_into_folds`), all
    photos of a person in one fold; -1 for faces without a person label."""
    people = np.array(sorted(set(records.person.tolist()) - {""}))
    if len(people) < folds:
        raise StoreError(f"person folds need at least {folds} people with a person label, found {len(people)}")
    dealt = deal_into_folds(people, folds, np.random.default_rng(seed))
    fold_of = {person: fold for fold, group in enumerate(dealt) for person in group}
    return np.array([fold_of.get(person, -1) for person in records.person], np.int64)


def person_fold_evaluation(model, store, *, calibration_sources=(), folds: int = 5, seed: int = 0,
                           levels=INTERVAL_LEVELS, group_edges=GROUP_EDGES) -> Evaluation:
    """The model on every labelled person of `store`, with uncertainty that never saw that person.

    People are split into `folds` (all photos of a person in one fold); each fold is predicted
    with a calibration fitted on `calibration_sources` ((store, split) pairs, e.g. the training
    store's val split) plus the people of the other folds. Use it for a store of people the
    model was not trained on, calibrated with some of them (see `agestimate.heads.calibration`).
    The metrics have ``fold_coverage_80`` (etc.): the coverage of each fold. `group_edges`:
    see `agestimate.heads.calibration.AgeCalibration.fit`.
    """
    heads = AgeGenderHeads.load(model, calibrated=False)
    descriptor = heads.require_descriptor()
    records, _ = labelled_faces(store, descriptor)
    fold = fold_of_each_face(records, folds, seed=seed)
    records = records.subset(fold >= 0)
    fold = fold[fold >= 0]
    base = [select_split(labelled_faces(source, descriptor)[0], split) for source, split in calibration_sources]
    base_outputs = [heads.predict(part.features) for part in base]
    outputs = heads.predict(records.features)
    intervals = {level: (np.empty(len(records)), np.empty(len(records))) for level in levels}
    prob_female, prob_under = np.empty(len(records)), np.empty(len(records))
    for k in range(folds):
        others, held_out = fold != k, fold == k
        parts = [*zip(base, base_outputs), (records.subset(others), outputs.subset(others))]
        calibration = fit_calibration_on(parts, group_edges=group_edges)
        age, spread = outputs.age[held_out], outputs.age_spread[held_out]
        for level, (low, high) in intervals.items():
            low[held_out], high[held_out] = calibration.age.interval(age, spread, level)
        female = outputs.prob_female[held_out]
        prob_female[held_out] = female if calibration.gender is None else calibration.gender.apply(female, age)
        prob_under[held_out] = calibration.age.probability_below(age, spread, MINOR_AGE)
    result = measure(records, outputs.age, outputs.gender,
                     uncertainty={"intervals": intervals, "prob_female": prob_female, "prob_under_18": prob_under})
    for level, (low, high) in intervals.items():
        inside = (low <= records.age) & (records.age <= high)
        result.metrics[f"fold_coverage_{round(100 * level):d}"] = [float(inside[fold == k].mean()) for k in range(folds)]
    result.metrics.update({"folds": folds, "fold_seed": seed})
    return result

