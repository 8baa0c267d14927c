"""What the task branch costs: recogniser ms per aligned crop with and without it.

    python benchmarks/branch_cost.py --data ../shared/data --count 300

On the aligned crops of the first `count` images of the UTKFace test split: one recogniser pass
computing the identity embedding and `grid509` (the frozen model), against the same pass with
the `adapted` block (the trunk shared up to tensor 473, the fine-tuned branch after it), on each
runtime (`backends.runtime_choices`); batches of 32, interleaved rounds, median.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backends import median_rounds, runtime_choices  # noqa: E402

from agestimate.faces.descriptors import DescriptorModel  # noqa: E402
from agestimate.faces.encoder import FaceEncoder  # noqa: E402
from agestimate.io.images import load_image  # noqa: E402

from end_to_end import data_sets  # noqa: E402

DESCRIPTORS = ("grid509", "grid509+adapted")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    encoder = FaceEncoder()
    images = [load_image(path) for path in data_sets(args.data, args.count)["utkface_test"][0]]
    aligned = np.concatenate([encoder.align(image, encoder.detect(image)[:1]) for image in images])
    batches = [aligned[i:i + 32] for i in range(0, len(aligned), 32)]
    result = {"crops": len(aligned), "ms_per_crop": {}, "adapted_over_grid509": {}}
    for runtime, options in runtime_choices().items():
        models = {descriptor: DescriptorModel(descriptor, **options) for descriptor in DESCRIPTORS}
        seconds = median_rounds({d: (lambda m=model: [m(batch) for batch in batches]) for d, model in models.items()},
                                rounds=args.rounds)
        result["ms_per_crop"][runtime] = {d: round(1000 * s / len(aligned), 3) for d, s in seconds.items()}
        result["adapted_over_grid509"][runtime] = round(seconds[DESCRIPTORS[1]] / seconds[DESCRIPTORS[0]], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
