"""Choose the face descriptor by measurement: heads (EVR + gender + RAPL) trained on the train
split of a UTKFace store, measured on its val split, for each candidate feature block.

    agestimate embed ../shared/data/utkface/images --labels ../shared/data/utkface/labels.csv \
        --store utk.store --descriptor gap473+gap505+gap509+grid509+flip
    python benchmarks/descriptors.py --store utk.store --out benchmarks/results/descriptors.json

Flip-averaged candidates are sliced from the store's features. Their unflipped twins are
computed here: each face is re-aligned from its stored landmarks and passed once through the
recogniser (no mirror), and the time of both recogniser variants is measured on the way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from agestimate.evaluation.measure import labelled_faces, select_split
from agestimate.faces.descriptors import Descriptor, DescriptorModel
from agestimate.faces.encoder import FaceDetection, FaceEncoder
from agestimate.io.images import load_image
from agestimate.training.fit import HeadOptions
from agestimate.training.protocols import fit_on, predict_with

FLIPPED = ["gap473+flip", "gap505+flip", "gap509+flip", "grid509+flip", "gap505+grid509+flip",
           "gap473+gap505+grid509+flip", "gap473+gap505+gap509+grid509+flip"]
UNFLIPPED = ["grid509", "gap505+grid509"]  # computed in one pass of the last, which holds the others


def unflipped_features(records, descriptor: str, batch: int = 256) -> tuple[np.ndarray, float, float]:
    """Features of `descriptor` without flip, and seconds per face of the recogniser without and with flip."""
    plain = DescriptorModel(descriptor)
    flipped = DescriptorModel(descriptor + "+flip")
    features, seconds_plain, seconds_flip = [], 0.0, 0.0
    for start in range(0, len(records), batch):
        crops = np.stack([
            FaceEncoder.align(load_image(path), [FaceDetection(box, landmarks, 0.0, "stored")])[0]
            for path, box, landmarks in zip(records.path[start:start + batch], records.box[start:start + batch],
                                            records.landmarks[start:start + batch])
        ])
        began = time.perf_counter()
        features.append(plain(crops)[1])
        seconds_plain += time.perf_counter() - began
        if start < 8 * batch:  # time the flipped pass on the first 2,048 faces only
            began = time.perf_counter()
            flipped(crops)
            seconds_flip += time.perf_counter() - began
    timed = min(len(records), 8 * batch)
    return np.concatenate(features), seconds_plain / len(records), seconds_flip / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--epochs", type=int, default=HeadOptions().epochs)
    parser.add_argument("--out", default="benchmarks/results/descriptors.json")
    args = parser.parse_args()
    records, store_descriptor = labelled_faces(args.store)
    records = records.subset(np.isin(records.split, ["train", "val"]))
    full = Descriptor.parse(store_descriptor)
    options = HeadOptions(epochs=args.epochs)
    candidates = {"emb (identity embedding)": records.embedding}
    for name in FLIPPED:
        candidates[name] = records.features[:, full.columns_of(Descriptor.parse(name))]
    unflipped = Descriptor.parse(UNFLIPPED[-1])
    features, plain, flipped = unflipped_features(records, unflipped.name)
    timing = {unflipped.name: {"recogniser_ms_per_face": round(1000 * plain, 2),
                               "with_flip_ms_per_face": round(1000 * flipped, 2)}}
    for name in UNFLIPPED:
        candidates[name] = features[:, unflipped.columns_of(Descriptor.parse(name))]
    rows = []
    for name, features in candidates.items():
        data = dataclasses.replace(records, features=features)
        train, val = select_split(data, "train"), select_split(data, "val")
        began = time.perf_counter()
        fitted = fit_on(train, val, options)
        metrics = predict_with(fitted, val).metrics
        rows.append({"descriptor": name, "dim": features.shape[1], "val_mae": metrics["mae"], "val_cs5": metrics["cs5"],
                     "val_gender_accuracy": metrics["gender_accuracy"], "val_mae_60plus": metrics["mae_60plus"],
                     "train_seconds": round(time.perf_counter() - began, 1)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"store": args.store, "epochs": args.epochs, "rows": rows, "timing": timing}, indent=2))
    print("| descriptor | dim | val MAE | val CS@5 | val gender acc. | val MAE 60+ | train s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['descriptor']} | {row['dim']} | {row['val_mae']:.3f} | {100 * row['val_cs5']:.1f} | "
              f"{100 * row['val_gender_accuracy']:.1f} | {row['val_mae_60plus']:.2f} | {row['train_seconds']} |")
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
