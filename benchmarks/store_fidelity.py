"""How close stores embedded at other precisions are to a reference store of the same images.

    agestimate embed IMAGES --labels L.csv --store ort.store --backend onnxruntime      # the reference, fp32
    agestimate embed IMAGES --labels L.csv --store int8.store --precision int8
    python benchmarks/store_fidelity.py --reference ort.store --store int8=int8.store [--store bf16=...]

For the largest face of each image in both stores (matched by image content): the cosine of the
identity embeddings and of the descriptor features to the reference's (mean, 1st percentile,
minimum), and the largest shift of the five landmarks in pixels (median, maximum).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from agestimate.store.store import EmbeddingStore


def primary_faces(path: str):
    with EmbeddingStore(path) as store:
        records = store.faces(primary=True)
    return {sha: i for i, sha in enumerate(records.sha256)}, records


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def fidelity(reference, other) -> dict:
    (ref_rows, ref), (rows, records) = reference, other
    shared = sorted(set(ref_rows) & set(rows))
    i, j = [ref_rows[s] for s in shared], [rows[s] for s in shared]
    embedding, features = cosines(records.embedding[j], ref.embedding[i]), cosines(records.features[j], ref.features[i])
    shift = np.linalg.norm(records.landmarks[j] - ref.landmarks[i], axis=2).max(axis=1)
    summary = {"faces": len(shared)}
    for name, values in (("embedding_cosine", embedding), ("feature_cosine", features)):
        summary |= {f"{name}_mean": float(values.mean()), f"{name}_p1": float(np.percentile(values, 1)),
                    f"{name}_min": float(values.min())}
    return summary | {"landmark_shift_px_median": float(np.median(shift)), "landmark_shift_px_max": float(shift.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--store", action="append", required=True, help="NAME=PATH; repeat")
    args = parser.parse_args()
    reference = primary_faces(args.reference)
    results = {name: fidelity(reference, primary_faces(path))
               for name, path in (item.split("=", 1) for item in args.store)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
