"""The recipe of the model shipped in `agestimate/weights/default`: rerun it with one command.

    agestimate embed ../shared/data/utkface/images --labels ../shared/data/utkface/labels.csv --store utk.store
    agestimate embed ../shared/data/fgnet/images --labels fgnet --store fg.store
    python -m agestimate.training.default_model --store utk.store --fgnet-store fg.store

Trains EVR + gender + RAPL heads on the UTKFace train split (best epoch on val) with the
default descriptor, and records in the model card the metrics on the UTKFace test split and on
all of FG-NET (never seen in training).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agestimate.descriptors import DEFAULT_DESCRIPTOR
from agestimate.evaluation import evaluate

from .fit import HeadOptions
from .protocols import train

OUTPUT = Path(__file__).resolve().parents[1] / "agestimate" / "weights" / "default"
OPTIONS = HeadOptions()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="UTKFace store with the fixed train/val/test split")
    parser.add_argument("--fgnet-store", required=True, help="FG-NET store, evaluated as a whole")
    parser.add_argument("--out", default=str(OUTPUT))
    args = parser.parse_args(argv)
    command = "python -m agestimate.training.default_model " + " ".join(argv if argv is not None else sys.argv[1:])
    card = train(args.store, args.out, descriptor=DEFAULT_DESCRIPTOR, options=OPTIONS, progress=True, command=command)
    fgnet = evaluate(args.out, args.fgnet_store, split="all").metrics
    card_path = Path(args.out) / "model.json"
    stored = json.loads(card_path.read_text())
    stored["metrics"]["fgnet_all"] = fgnet
    stored["data"]["fgnet_store"] = args.fgnet_store
    stored["licence"] = "heads trained on UTKFace (non-commercial research); face models: insightface, non-commercial research only"
    card_path.write_text(json.dumps(stored, indent=2) + "\n")
    print(json.dumps({"utkface_test": card["metrics"]["test"], "fgnet": fgnet}, indent=2))


if __name__ == "__main__":
    main()
