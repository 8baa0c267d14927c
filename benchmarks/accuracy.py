"""Accuracy rows of the comparison: metrics of the largest face of each image against its labels.

`accuracy_rows` measures the end-to-end runs of `end_to_end` (images where no face was found
are left out of the metrics and counted in `images_with_face`); `variant_rows` trains the
ablation's variants (seed 0, plain embedding) on the UTKFace store and measures them on its
test split and on all of FG-NET.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agestimate.evaluation.metrics import summary
from agestimate.io.labels import GENDER_NAMES

GENDER_CODES = {name: code for code, name in enumerate(GENDER_NAMES)}


def measured(rows: list[dict], labels: dict, images: int, age_key="age", gender_key="gender") -> dict:
    found = [row for row in rows if row["faces"] > 0]
    truth = [labels[Path(row["path"]).resolve()] for row in found]
    age_true = np.array([label.age for label in truth], float)
    gender_true = np.array([-1 if label.gender is None else label.gender for label in truth])
    metrics = summary(age_true, np.array([row[age_key] for row in found], float), gender_true=gender_true,
                      gender_pred=np.array([GENDER_CODES[row[gender_key]] for row in found]))
    return {"images_with_face": len(found) / images, **metrics}


def accuracy_rows(runs: dict, peer: str, labels: dict, images: int) -> dict:
    """Metrics of each agestimate `predict_batch` run of `runs` (tool -> run), of the shipped
    embedding model on the default run's embeddings, of the peer, and of the default run on the
    images where the peer found a face."""
    ours = runs["agestimate predict_batch"]["results"]
    peer_found = {row["path"] for row in runs[peer]["results"] if row["faces"] > 0}
    rows = {f"{tool}: {run['runtime']['backend']} {run['runtime']['precision']}": measured(run["results"], labels, images)
            for tool, run in runs.items() if "runtime" in run}
    rows["agestimate embedding model (emb)"] = measured(ours, labels, images, "age_embedding_model",
                                                        "gender_embedding_model")
    rows[peer] = measured(runs[peer]["results"], labels, images)
    rows[f"agestimate predict_batch, only the images where {peer} found a face"] = measured(
        [row for row in ours if row["path"] in peer_found], labels, images)
    return rows


def variant_rows(utk_store, fgnet_store, descriptor: str = "emb", seed: int = 0) -> dict:
    import dataclasses

    from agestimate.evaluation.measure import labelled_faces, select_split
    from agestimate.training.fit import HeadOptions
    from agestimate.training.protocols import ABLATION_VARIANTS, fit_on, predict_with

    records, _ = labelled_faces(utk_store, descriptor)
    fgnet, _ = labelled_faces(fgnet_store, descriptor)
    train, val, test = (select_split(records, name) for name in ("train", "val", "test"))
    rows = {"utkface_test": {}, "fgnet": {}}
    for name, changes in ABLATION_VARIANTS.items():
        fitted = fit_on(train, val, dataclasses.replace(HeadOptions(), seed=seed, **changes))
        for data, chosen in (("utkface_test", test), ("fgnet", fgnet)):
            metrics = predict_with(fitted, chosen).metrics
            if not changes["use_gender"]:
                metrics["gender_accuracy"] = None
            rows[data][f"{name} ({descriptor}, seed {seed})"] = metrics
    return rows
