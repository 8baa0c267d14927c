"""The recipe of the models shipped in `agestimate/weights/`: rerun it with one command.

    agestimate embed ../shared/data/utkface/images --labels ../shared/data/utkface/labels.csv --store utk.store
    agestimate embed ../shared/data/fgnet/images --labels fgnet --store fg.store
    python -m agestimate.training.default_model --store utk.store --fgnet-store fg.store

Trains EVR + gender + RAPL heads on the UTKFace train split (best epoch on val), once with the
default descriptor (`weights/default`, used by `agestimate.predict`) and once on the plain
512-d identity embedding (`weights/embedding`, for users who already have ArcFace embeddings).
Each model is calibrated (age intervals, gender temperature; `agestimate.calibration`) on the
UTKFace val split and all of FG-NET, whose people are never seen in training: old scanned
photos and children widen the calibration beyond UTKFace's crops. Each model card records
the metrics on the UTKFace test split and on all of FG-NET, whose intervals come from person
folds (each fold calibrated without its own people). The stores are made with the default
backend (see `agestimate.runtimes`), so the heads learn the features that prediction computes.

`weights/flip` (the same heads on features averaged with the mirrored crop, two recogniser
passes) is retrained when stores embedded with ``--descriptor grid509+flip`` are given as
``--flip-store`` and ``--flip-fgnet-store``.

``--calibrate-only`` keeps the heads in the weights folders and reruns only the steps after
training (calibration and measurement), for heads trained by an earlier run of this recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agestimate.calibration import calibrate
from agestimate.descriptors import DEFAULT_DESCRIPTOR
from agestimate.evaluation import evaluate, person_fold_evaluation
from agestimate.estimator import DEFAULT_MODEL
from agestimate.heads import update_card

from .fit import HeadOptions
from .protocols import train

WEIGHTS = DEFAULT_MODEL.parent  # agestimate/weights of the checkout (or installation) running this
MODELS = {"default": DEFAULT_DESCRIPTOR, "embedding": "emb", "flip": DEFAULT_DESCRIPTOR + "+flip"}
OPTIONS = HeadOptions()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="UTKFace store with the fixed train/val/test split")
    parser.add_argument("--fgnet-store", required=True, help="FG-NET store, evaluated as a whole")
    parser.add_argument("--flip-store", help="the UTKFace store embedded with --descriptor grid509+flip (weights/flip)")
    parser.add_argument("--flip-fgnet-store", help="the FG-NET store embedded with --descriptor grid509+flip")
    parser.add_argument("--out", default=str(WEIGHTS), help="folder receiving default/, embedding/ (and flip/)")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the trained heads in --out; calibrate and measure them again")
    args = parser.parse_args(argv)
    if (args.flip_store is None) != (args.flip_fgnet_store is None):
        parser.error("--flip-store and --flip-fgnet-store go together")
    command = "python -m agestimate.training.default_model " + " ".join(argv if argv is not None else sys.argv[1:])
    stores = {"default": (args.store, args.fgnet_store), "embedding": (args.store, args.fgnet_store),
              "flip": (args.flip_store, args.flip_fgnet_store)}
    for name, descriptor in MODELS.items():
        store, fgnet_store = stores[name]
        if store is None:
            continue
        folder = Path(args.out) / name
        if args.calibrate_only:
            card = json.loads((folder / "model.json").read_text())
        else:
            card = train(store, folder, descriptor=descriptor, options=OPTIONS, progress=True, command=command)
        calibrate(folder, [(store, "val"), (fgnet_store, "all")])
        metrics = {split: evaluate(folder, store, split=split).metrics for split in ("train", "val", "test")}
        metrics["fgnet_all"] = person_fold_evaluation(folder, fgnet_store, calibration_sources=[(store, "val")]).metrics
        update_card(folder, metrics=metrics, data={**card["data"], "fgnet_store": fgnet_store},
                    licence="heads trained on UTKFace (non-commercial research only); "
                            "face models from insightface (non-commercial research only)")
        print(json.dumps({"model": name, "training_seconds": card["training_seconds"],
                          "utkface_test": metrics["test"], "fgnet": metrics["fgnet_all"]}, indent=2))


if __name__ == "__main__":
    main()
