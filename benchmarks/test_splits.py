"""Where the shipped model travels: each labelled set's test split measured, one table.

    python benchmarks/test_splits.py --store utkface=utk.store --store aaf=aaf.store --store lfw=lfw.store \
        [--model default] [--json out.json]

For each set (the largest face of each labelled image of its test split, the features of the
model's descriptor read from the store): faces, MAE, CS@5, bias per decade of true age, gender
accuracy overall, under 10 and under 13 and per decade, and the coverage of the 80% age
interval; a set without ages (LFW) shows its gender only. FG-NET, which has no test split, is
measured on people the model never saw by the recipe's person folds (its model card's
``fgnet_person_folds``), printed below the table when the card has it.
"""

from __future__ import annotations

import argparse
import json
import sys

from agestimate.estimator import model_folder
from agestimate.evaluation.measure import evaluate
from agestimate.evaluation.metrics import age_group_labels, decade_keys
from agestimate.heads.model import AgeGenderHeads

COLUMNS = ("n", "mae", "cs5", "coverage_80", "n_gender", "gender_accuracy", "gender_accuracy_under_10",
           "gender_accuracy_under_13")


def cell(value, key: str) -> str:
    if value is None:
        return "-"
    if key.startswith(("n", "mae", "bias")):
        return f"{value:+.2f}" if key.startswith("bias") else f"{value:.3f}" if key == "mae" else str(value)
    return f"{100 * value:.1f}%"


def tables(results: dict) -> str:
    """Markdown: the headline table, then bias and gender accuracy per decade of true age, per set."""
    lines = ["| set | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(metrics.get(key), key) for key in COLUMNS) + " |"
              for name, metrics in results.items()]
    decades = age_group_labels("bins10")
    for prefix in ("bias", "gender_accuracy"):
        lines += ["", f"{prefix} per decade of true age:", "",
                  "| set | " + " | ".join(decades) + " |", "|---" * (len(decades) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(metrics.get(key), prefix) for key in decade_keys(prefix)) + " |"
                  for name, metrics in results.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", action="append", required=True, metavar="NAME=STORE",
                        help="a labelled set and its store, e.g. aaf=aaf.store; repeat")
    parser.add_argument("--model", default="default", help="a shipped model's name or a model folder")
    parser.add_argument("--json", help="also write the metrics here")
    args = parser.parse_args(argv)
    stores = dict(item.split("=", 1) for item in args.store)
    folder = model_folder(args.model)
    results = {name: evaluate(folder, store, split="test").metrics for name, store in stores.items()}
    print(tables(results))
    folds = AgeGenderHeads.load(folder).card.get("metrics", {}).get("fgnet_person_folds")
    if folds is not None:
        print(f"\nFG-NET, people never seen (person folds dealt {folds.get('shuffles', 1)} times, from the model card): "
              f"MAE {folds['mae']:.3f}, CS@5 {100 * folds['cs5']:.1f}%, "
              + ", ".join(f"bias {label} {folds[key]:+.2f}" for label, key in zip(age_group_labels("bins10"),
                                                                                 decade_keys("bias")) if folds.get(key) is not None))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"command": "python benchmarks/test_splits.py " + " ".join(argv or sys.argv[1:]), "model": str(folder),
                       "test_splits": results, "fgnet_person_folds": folds}, stream, indent=2)


if __name__ == "__main__":
    main()
