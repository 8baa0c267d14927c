"""The recipe of the models shipped in `agestimate/weights/`: rerun it with one command.

    D=../shared/data
    agestimate embed $D/utkface/images --labels $D/utkface/labels.csv --store utk.store
    agestimate embed $D/aaf/images --labels $D/aaf/labels.csv --store aaf.store
    agestimate embed $D/lfw/images --labels $D/lfw/labels.csv --store lfw.store
    agestimate embed $D/fgnet/images --labels $D/fgnet/labels.csv --store fg.store
    python -m agestimate.training.default_model --store utk.store --store aaf.store --store lfw.store \
        --fgnet-store fg.store [--models default] [--shuffles 3]

The default descriptor includes the task branch `weights/branches/adapted.onnx`, trained before
(and apart) from the heads by `python -m agestimate.training.branch` (see there); the stores are
embedded with it.

Trains EVR + gender + RAPL heads on the train splits of UTKFace, All-Age-Faces (AAF) and LFW
(gender only: its faces train the gender head, the age losses skip them) plus all FG-NET people
(ages only), with the default descriptor (`weights/default`, used by `agestimate.predict`), with
`grid509` alone (`weights/frozen`: the pretrained recogniser's features, no branch) and on the
plain 512-d identity embedding (`weights/embedding`, for users who already have ArcFace
embeddings); `--models` trains some of them only. The heads over the default's features (`default`,
`flip`) take dropout 0.5 and weigh the faces under 13 three times in the gender loss, `frozen`'s
and `embedding`'s dropout 0.3 and weight 1 (`MODELS`).
Faces per epoch per store: `REPEATS`. The epoch is chosen on the union of the val splits plus a
tenth of the FG-NET people held out, then the heads are trained again for that many epochs with
those people added (`train(..., refit=True)`). Each model is calibrated
(age intervals, gender temperatures per band of predicted age; `agestimate.heads.calibration`) on
the union of the val splits, which it never trains on. Each model card records the metrics on
each set's test split (`metrics_by_source`) and, as FG-NET accuracy on people never seen,
`eval --protocol folds --shuffles N` (5 person-grouped folds, each predicted by heads trained on
the train splits and the other folds, the epoch chosen on the val splits and a tenth of those
folds' people; the people dealt into folds `--shuffles` times, 3 by default, metrics over all).
The stores are made with the default backend (see `agestimate.runtime.sessions`), so the heads
learn the features that prediction computes.

`weights/flip` (the default's heads on its features averaged with the mirrored crop's, two
recogniser passes) is retrained when stores embedded with ``--descriptor grid509+adapted+flip``
are given as ``--flip-store`` (one per ``--store``) and ``--flip-fgnet-store``.

The int8 face models (`weights/int8`, `agestimate.training.quantize`) do not depend on the
heads: rerun that only when the branch changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agestimate.estimator import DEFAULT_MODEL
from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR
from agestimate.heads.model import update_card

from .fit import HeadOptions
from .protocols import person_folds, train

WEIGHTS = DEFAULT_MODEL.parent  # agestimate/weights of the checkout (or installation) running this
# Each model's descriptor and head options. The default's 4096 features take more dropout than the
# 0.3 measured on the 512-d embedding: UTKFace val MAE 4.208/4.203 at 0.5 against 4.238/4.244 at 0.3
# (seeds 0/1); grid509 alone 4.345 against 4.322, the embedding 5.36 against 4.89 (BENCHMARKS.md, issue 18).
# WIDE_OPTIONS, the heads over the default's features (alone or flip-averaged): children's faces weigh 3 in
# the gender loss (issue 28, val splits, seeds 0-2 against 1): gender UTKFace
# 94.99% / 94.78%, under 10 76.4% / 75.1%, AAF 96.81% / 96.37%, under 13 85.8% / 82.5%, val MAE unchanged
# (UTKFace 4.169 / 4.176, AAF 4.355 / 4.353). Children repeated 3 times instead moved UTKFace MAE to 4.199,
# and the gender loss weighed 2 for every face was unstable (UTKFace val MAE 4.454 with seed 1).
WIDE_OPTIONS = HeadOptions(dropout=0.5, child_gender_weight=3.0)
MODELS = {"default": (DEFAULT_DESCRIPTOR, WIDE_OPTIONS), "frozen": ("grid509", HeadOptions()),
          "embedding": ("emb", HeadOptions()), "flip": (f"{DEFAULT_DESCRIPTOR}+flip", WIDE_OPTIONS)}
FOLDS = 5  # person-grouped folds of FG-NET for the card
# ... dealt 3 times (seeds 0, 1, 2), the card's numbers over all three: one dealing of 41 people is a noisy
# measure (over seeds 0-5 MAE 2.87 to 3.03, and one decade's bias as far as -2.28 or +2.56; BENCHMARKS.md, issue 18).
SHUFFLES = 3
# Training faces per epoch, per store in the order UTKFace, AAF, LFW, FG-NET: each FG-NET face is seen 4
# times (495 photos beside 16,570 UTKFace faces: FG-NET person folds MAE 2.98 vs 3.19 once and 3.06 eight
# times, UTKFace val unchanged; BENCHMARKS.md, issue 18); AAF's and LFW's chosen on the val splits (issue 28).
REPEATS = (1, 2, 1, 4)
LICENCE = ("heads trained on UTKFace, All-Age-Faces, LFW and FG-NET (each non-commercial research only); "
           "face models from insightface (non-commercial research only)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, action="append",
                        help="a labelled set with train/val/test splits (UTKFace, AAF, LFW); repeat, in the order of REPEATS")
    parser.add_argument("--fgnet-store", required=True, help="FG-NET store (people, no split): trained on, measured in person folds")
    parser.add_argument("--flip-store", action="append",
                        help="each --store embedded with --descriptor grid509+adapted+flip, in the same order (weights/flip)")
    parser.add_argument("--flip-fgnet-store", help="the FG-NET store embedded with --descriptor grid509+adapted+flip")
    parser.add_argument("--out", default=str(WEIGHTS), help="folder receiving default/, frozen/, embedding/ (and flip/)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"the models to train, comma-separated (default: all of {', '.join(MODELS)}; flip only with --flip-store)")
    parser.add_argument("--shuffles", type=int, default=SHUFFLES,
                        help="times the FG-NET people are dealt into folds for the card's person-fold metrics")
    args = parser.parse_args(argv)
    if (args.flip_store is None) != (args.flip_fgnet_store is None):
        parser.error("--flip-store and --flip-fgnet-store go together")
    if args.flip_store is not None and len(args.flip_store) != len(args.store):
        parser.error("give one --flip-store per --store")
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose among {', '.join(MODELS)}")
    if len(args.store) + 1 != len(REPEATS):
        parser.error(f"REPEATS has a count for {len(REPEATS) - 1} stores with splits and FG-NET; got {len(args.store)} --store")
    command = "python -m agestimate.training.default_model " + " ".join(argv if argv is not None else sys.argv[1:])
    for name, (descriptor, options) in MODELS.items():
        if name not in args.models.split(","):
            continue
        stores = [*args.flip_store, args.flip_fgnet_store] if name == "flip" and args.flip_store else \
            None if name == "flip" else [*args.store, args.fgnet_store]
        if stores is None:
            continue
        folder = Path(args.out) / name
        card = train(stores, folder, descriptor=descriptor, options=options, refit=True, repeats=REPEATS,
                     progress=True, command=command)
        folds = person_folds(stores, folds=FOLDS, descriptor=descriptor, options=options,
                             repeats=REPEATS, shuffles=args.shuffles).metrics
        update_card(folder, metrics={**card["metrics"], "fgnet_person_folds": folds},
                    data={**card["data"], "fgnet_person_folds": (
                        f"{FOLDS} folds of FG-NET people, each predicted by heads trained on the train splits of the "
                        f"other sets and the other folds, the people dealt into folds {args.shuffles} times "
                        f"(`agestimate eval --protocol folds --shuffles {args.shuffles}`)")},
                    licence=LICENCE)
        print(json.dumps({"model": name, "training_seconds": card["training_seconds"],
                          "test_by_store": {store: metrics.get("test") for store, metrics in card["metrics_by_source"].items()},
                          "fgnet_person_folds": folds}, indent=2))


if __name__ == "__main__":
    main()
