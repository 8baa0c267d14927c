"""Tail-age augmentation on the UTKFace fixed split: none vs mixup vs CAE, several seeds.

    python benchmarks/augmentation.py --store utk.store --descriptor grid509+flip --seeds 0,1,2

Also reports the autoencoder's reconstruction quality on val (cosine to the original feature
vector) and what a head trained on real features loses on reconstructed val features.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from agestimate.evaluation.measure import labelled_faces, select_split
from agestimate.training.augment import LatentInterpolator
from agestimate.training.fit import HeadOptions
from agestimate.training.protocols import fit_on, predict_with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--descriptor", default="grid509+flip")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    records, _ = labelled_faces(args.store, args.descriptor)
    train, val, test = (select_split(records, name) for name in ("train", "val", "test"))
    results = {"descriptor": args.descriptor, "runs": []}

    interpolator = LatentInterpolator(train.features)
    reconstructed = interpolator.reconstruct(val.features)
    cosine = (reconstructed * val.features).sum(1) / np.linalg.norm(reconstructed, axis=1) / np.linalg.norm(val.features, axis=1)
    baseline = fit_on(train, val, HeadOptions())
    results["reconstruction"] = {
        "val_cosine_median": float(np.median(cosine)), "val_cosine_p5": float(np.percentile(cosine, 5)),
        "head_val_mae_on_real": predict_with(baseline, val).metrics["mae"],
        "head_val_mae_on_reconstructed": predict_with(baseline, dataclasses.replace(val, features=reconstructed)).metrics["mae"],
    }
    print(json.dumps(results["reconstruction"]), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in ("none", "mixup", "cae"):
            metrics = predict_with(fit_on(train, val, HeadOptions(seed=seed), augment_with=method), test).metrics
            run = {"seed": seed, "augment": method, **{k: metrics[k] for k in ("mae", "cs5", "mae_60plus", "gender_accuracy")}}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    print("| augment | test MAE | test MAE 60+ | CS@5 % | gender % |\n|---|---|---|---|---|")
    for method in ("none", "mixup", "cae"):
        runs = [r for r in results["runs"] if r["augment"] == method]
        cell = lambda key, scale=1: f"{np.mean([r[key] for r in runs]) * scale:.3f} ± {np.std([r[key] for r in runs]) * scale:.3f}"  # noqa: E731
        print(f"| {method} | {cell('mae')} | {cell('mae_60plus')} | {cell('cs5', 100)} | {cell('gender_accuracy', 100)} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
