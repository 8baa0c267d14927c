"""Calibration: coverage and width of the age intervals, P(age < 18), gender calibration.

    python benchmarks/calibration.py --utk-store utk.store --fgnet-store fg.store --out benchmarks/results/calibration.json

Measures a model (default: the shipped default model, calibrated by its recipe on the UTKFace
val split and FG-NET) on
- the UTKFace test split: coverage of the 80% and 90% intervals overall and per decade of true
  age, median widths, P(age < 18) and gender ECE, before and after temperature scaling;
- FG-NET by person folds: each fold's people predicted with a calibration fitted on the UTKFace
  val split plus the other folds' people (FG-NET is never used for training);
and compares, on the same model, calibration variants: one pool of scores against groups of
predicted age, UTKFace val alone against UTKFace val + FG-NET, and the uncalibrated reading of
the age spread as a Gaussian standard deviation (age +- 1.28 spread for 80%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from agestimate.estimator import DEFAULT_MODEL
from agestimate.evaluation.calibrate import fit_calibration_on
from agestimate.evaluation.folds import person_fold_evaluation
from agestimate.evaluation.measure import evaluate, labelled_faces, select_split
from agestimate.evaluation.metrics import decade_keys, expected_calibration_error, interval_metrics
from agestimate.heads.calibration import GROUP_EDGES, fit_calibration
from agestimate.heads.model import AgeGenderHeads

LEVELS = (0.8, 0.9)
GAUSSIAN_Z = {0.8: 1.2816, 0.9: 1.6449}


def headline(metrics: dict) -> dict:
    keys = ["n", "mae", "coverage_80", "median_width_80", "coverage_90", "median_width_90", "under_18_share",
            "under_18_accuracy", "under_18_brier", "under_18_ece", "gender_accuracy", "gender_ece"]
    result = {key: metrics.get(key) for key in keys}
    for level in ("80", "90"):
        result[f"coverage_{level}_per_decade"] = {key.removeprefix(f"coverage_{level}_"): metrics.get(key)
                                                     for key in decade_keys(f"coverage_{level}")}
        if f"fold_coverage_{level}" in metrics:
            result[f"fold_coverage_{level}"] = metrics[f"fold_coverage_{level}"]
    return result


def variant_row(test_age, test_out, fg_folds: dict, level_intervals) -> dict:
    row = {}
    for level in LEVELS:
        low, high = level_intervals(test_out, level)
        metrics = interval_metrics(test_age, low, high, level=level)
        tag = f"{round(100 * level)}"
        decades = [metrics[key] for key in decade_keys(f"coverage_{tag}")[:9]]  # 0-89: decades with 44+ test faces
        row[f"utk_coverage_{tag}"] = metrics[f"coverage_{tag}"]
        row[f"utk_median_width_{tag}"] = metrics[f"median_width_{tag}"]
        row[f"utk_worst_decade_0_89_{tag}"] = min(decades)
        row[f"utk_coverage_0_9_{tag}"] = decades[0]
        row[f"fgnet_coverage_{tag}"] = fg_folds.get(tag)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utk-store", required=True)
    parser.add_argument("--fgnet-store", required=True)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    began = time.perf_counter()
    utk, fg = args.utk_store, args.fgnet_store
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "command": "python benchmarks/calibration.py --utk-store UTK --fgnet-store FG" +
                         (f" --model {args.model}" if args.model != str(DEFAULT_MODEL) else ""),
              "model": args.model, "calibration": json.loads((Path(args.model) / "model.json").read_text()).get("calibration", {}).get("sources")}

    test = evaluate(args.model, utk, split="test")
    result["utkface_test"] = headline(test.metrics)
    raw = AgeGenderHeads.load(args.model, calibrated=False)
    records, _ = labelled_faces(utk, raw.card.get("descriptor"))
    test_records = select_split(records, "test")
    test_raw = raw.predict(test_records.features)
    known = test_records.gender >= 0
    calibrated_female = test.uncertainty["prob_female"]
    result["utkface_test"]["gender_ece_before_temperature"] = expected_calibration_error(
        test_raw.prob_female[known], test_records.gender[known])
    rng = np.random.default_rng(0)  # the noise of an ECE over ~2,000 faces: bootstrap over the faces
    resamples = [rng.choice(np.flatnonzero(known), known.sum()) for _ in range(200)]
    for key, probability in (("gender_ece", calibrated_female), ("gender_ece_before_temperature", test_raw.prob_female)):
        values = [expected_calibration_error(probability[i], test_records.gender[i]) for i in resamples]
        result["utkface_test"][f"{key}_bootstrap_95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    fg_shipped = person_fold_evaluation(args.model, fg, calibration_sources=[(utk, "val")])
    result["fgnet_person_folds"] = headline(fg_shipped.metrics)

    # variants, all on this model's raw outputs
    val_records = select_split(records, "val")
    val_raw = raw.predict(val_records.features)
    fg_records, _ = labelled_faces(fg, raw.card.get("descriptor"))
    fg_raw = raw.predict(fg_records.features)
    variants = {}
    for name, edges in (("one pool", ()), (f"groups at predicted ages {list(GROUP_EDGES)}", GROUP_EDGES)):
        for data in ("UTKFace val", "UTKFace val + FG-NET"):
            if data == "UTKFace val":
                calibration = fit_calibration(val_raw, val_records.age, val_records.gender, group_edges=edges)
                folds = {}
                fg_low_high = {level: calibration.age.interval(fg_raw.age, fg_raw.age_spread, level) for level in LEVELS}
                for level, (low, high) in fg_low_high.items():
                    folds[f"{round(100 * level)}"] = float(np.mean((low <= fg_records.age) & (fg_records.age <= high)))
            else:
                calibration = fit_calibration_on([(val_records, val_raw), (fg_records, fg_raw)], group_edges=edges)
                folded = fg_shipped if edges == GROUP_EDGES else person_fold_evaluation(  # the shipped grouping: run above
                    args.model, fg, calibration_sources=[(utk, "val")], group_edges=edges)
                folds = {tag: folded.metrics[f"coverage_{tag}"] for tag in ("80", "90")}
            variants[f"{name}, calibrated on {data}"] = variant_row(
                test_records.age, test_raw, folds,
                lambda out, level, c=calibration: c.age.interval(out.age, out.age_spread, level))
    gaussian = lambda out, level: (out.age - GAUSSIAN_Z[level] * out.age_spread, out.age + GAUSSIAN_Z[level] * out.age_spread)  # noqa: E731
    fg_gauss = {f"{round(100 * level)}": float(np.mean(np.abs(fg_records.age - fg_raw.age) <= GAUSSIAN_Z[level] * fg_raw.age_spread))
                for level in LEVELS}
    variants["uncalibrated: age +- z * age_spread (Gaussian reading)"] = variant_row(test_records.age, test_raw, fg_gauss, gaussian)
    result["variants"] = variants
    result["seconds"] = round(time.perf_counter() - began, 1)

    print(json.dumps({key: result[key] for key in ("utkface_test", "fgnet_person_folds")}, indent=2))
    print("| calibration | UTK 80% cov. | width | worst decade 0-89 | 0-9 | FG-NET 80% | UTK 90% cov. | width | worst decade 0-89 | 0-9 | FG-NET 90% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, row in variants.items():
        cells = []
        for tag in ("80", "90"):
            cells += [pct(row[f"utk_coverage_{tag}"]), f"{row[f'utk_median_width_{tag}']:.1f}",
                      pct(row[f"utk_worst_decade_0_89_{tag}"]), pct(row[f"utk_coverage_0_9_{tag}"]), pct(row[f"fgnet_coverage_{tag}"])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
