"""`predict` with a per-call `max_faces`, and `predict_batch` images/s, in two checkouts, interleaved.

    python benchmarks/predict_calls.py --trees ../before ../after --images ../shared/data/utkface/images

Each round runs, in a fresh process per checkout (its own `agestimate` imported from that
folder, the compiled-model cache warm): `predict(img)` twice, then `predict(img, max_faces=2)`
(seconds and resident memory around that call: before issue 27 it loaded and compiled a second
detector and recogniser), and `predict_batch` over `--count` UTKFace crops (every 100th file,
``crops=True``, 2 threads, after a warm-up batch), and the heads alone on those faces called
once per image (what `predict_batch` did before) and once per batch of 32 (best of 5). Rounds alternate the checkouts, so a noisy
machine weighs on both alike; compare them as ratios within a round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import glob, json, sys, time
sys.path.insert(0, ".")
import agestimate
from agestimate.runtime.registry import weights_dir

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

images, count = sys.argv[1], int(sys.argv[2])
photo = weights_dir() / "players.jpg"
agestimate.predict(photo); agestimate.predict(photo)
before, started = rss_mb(), time.perf_counter()
agestimate.predict(photo, max_faces=2)
max_faces_s, after = time.perf_counter() - started, rss_mb()
from agestimate.estimator import Estimator
paths = sorted(glob.glob(images + "/*.jpg"))[::100][:count]
estimator = Estimator(crops=True, threads=2)
list(estimator.predict_batch(paths[:32], batch_size=32))
started = time.perf_counter()
done = len(list(estimator.predict_batch(paths, batch_size=32)))
batch_rate = done / (time.perf_counter() - started)
# the heads alone, on the same faces: once per image (before) against once per batch of 32 (after)
import numpy as np
features = [encoded.features for encoded in estimator.encoder.encode_batch(paths, batch_size=32)]
heads, timings = estimator.heads, {}
for name, calls in (("per_image", features), ("per_batch", [np.concatenate(features[i:i + 32]) for i in range(0, len(features), 32)])):
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for X in calls:
            heads.predict(X)
        best = min(best, time.perf_counter() - started)
    timings[name] = best
print(json.dumps({"max_faces_call_s": round(max_faces_s, 3), "rss_growth_mb": round(after - before, 1),
                  "batch_images_per_s": round(batch_rate, 1), "images": done,
                  "heads_per_image_ms": round(1000 * timings["per_image"] / done, 3),
                  "heads_per_batch_ms": round(1000 * timings["per_batch"] / done, 3)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs=2, type=Path, required=True, help="the checkouts: before, after")
    parser.add_argument("--images", type=Path, required=True, help="a folder of UTKFace crops")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        for tree in args.trees:
            done = subprocess.run([sys.executable, "-c", CHILD, str(args.images.resolve()), str(args.count)],
                                  cwd=tree, capture_output=True, text=True, check=True, env=os.environ)
            rows.append({"round": round_ + 1, "tree": str(tree), **json.loads(done.stdout.splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    before, after = (row for row in rows if row["tree"] == str(args.trees[0])), (row for row in rows if row["tree"] == str(args.trees[1]))
    for old, new in zip(before, after):
        print(f"round {old['round']}: max_faces call {old['max_faces_call_s'] / new['max_faces_call_s']:.1f}x faster, "
              f"memory +{old['rss_growth_mb']:.0f} MB -> +{new['rss_growth_mb']:.0f} MB; predict_batch "
              f"{new['batch_images_per_s'] / old['batch_images_per_s']:.2f}x; heads alone "
              f"{new['heads_per_image_ms']:.2f} ms/image called per image, {new['heads_per_batch_ms']:.2f} per batch")


if __name__ == "__main__":
    main()
