"""Heads alone: feature vectors per second through a model folder's ONNX graph (ONNX Runtime, CPU).

    python benchmarks/heads_speed.py --model agestimate/weights/default --count 100000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from agestimate.heads.model import AgeGenderHeads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    heads = AgeGenderHeads.load(args.model, providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).normal(size=(args.count, heads.input_dim)).astype(np.float32)
    heads.predict(features[:1000])  # warm-up
    seconds = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        heads.predict(features)
        seconds.append(time.perf_counter() - began)
    rates = [args.count / s for s in seconds]
    print(json.dumps({"model": args.model, "input_dim": heads.input_dim, "count": args.count,
                      "vectors_per_s_median": round(float(np.median(rates))), "min": round(min(rates)),
                      "max": round(max(rates))}, indent=2))


if __name__ == "__main__":
    main()
