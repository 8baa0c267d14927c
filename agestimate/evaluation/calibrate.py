"""Calibrating a model on the labelled faces of stores: fit its intervals and gender temperature
(`agestimate.heads.calibration`) and write them into its model card."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agestimate.errors import StoreError
from agestimate.evaluation.measure import labelled_faces, select_split
from agestimate.heads.calibration import GROUP_EDGES, Calibration, fit_calibration
from agestimate.heads.model import AgeGenderHeads, HeadOutputs, update_card

logger = logging.getLogger(__name__)


def fit_calibration_on(parts, *, source: dict | None = None, group_edges=GROUP_EDGES) -> Calibration:
    """`fit_calibration` on several (records, raw head outputs) pairs of labelled faces, pooled."""
    return fit_calibration(HeadOutputs.concatenate([outputs for _, outputs in parts]),
                           np.concatenate([records.age for records, _ in parts]),
                           np.concatenate([records.gender for records, _ in parts]), source=source, group_edges=group_edges)


def calibrate(model_dir, sources, *, group_edges=GROUP_EDGES) -> Calibration:
    """Fit the calibration of the model in `model_dir` and write it into its ``model.json``.

    Parameters
    ----------
    model_dir : a heads model folder (see `agestimate.heads.model`).
    sources : (store, split) pairs whose labelled faces calibrate the model: the largest face of
        each labelled image, split "val", "test", "train" or "all". Use faces the model was not
        trained on (its validation split, or people it never saw).

    Returns
    -------
    Calibration
        What was written; later predictions with this model use it.
    """
    model_dir = Path(model_dir)
    heads = AgeGenderHeads.load(model_dir, calibrated=False)
    parts = []
    for store, split in sources:
        records = select_split(labelled_faces(store, heads.card.get("descriptor"))[0], split)
        if len(records) == 0:
            raise StoreError(f"{store}: no labelled faces in split {split!r} to calibrate with")
        parts.append((records, heads.predict(records.features)))
    calibration = fit_calibration_on(
        parts, source={"sources": [{"store": str(store), "split": split, "faces": len(r)} for (store, split), (r, _) in
                                   zip(sources, parts)]},
        group_edges=group_edges,
    )
    update_card(model_dir, calibration=calibration.to_dict())
    logger.info("calibrated %s on %d faces: groups %s, gender temperature %s", model_dir, calibration.source["faces"],
                calibration.age.group_edges, None if calibration.gender is None else calibration.gender.describe())
    return calibration
