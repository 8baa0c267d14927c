"""Data hygiene of a store: distributions, duplicates, train/test leakage and label outliers.

Near-duplicates are pairs of faces whose identity embeddings have a cosine similarity of at
least a threshold, found with a FAISS range search (no O(n^2) loop in Python; an IVF index for
large sets, see `agestimate.search_index`). Label outliers
are faces whose age label is far from the median label of their nearest neighbours in the
descriptor space (the features the age heads read).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from .descriptors import normalise
from .errors import AgestimateError
from .images import load_image
from .search_index import build_index, tune_for_range
from .store import EmbeddingStore, FaceRecords

DEFAULT_THRESHOLD = 0.9  # UTKFace: 501 pairs at 0.9, median age gap 2 years (same person, same shoot)


def near_duplicate_pairs(vectors: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows of L2-normalised `vectors` with cosine >= threshold: (i, j, cosine)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = build_index(vectors)  # exact, or IVF for large sets (see agestimate.search_index)
    tune_for_range(index, vectors, threshold)
    limits, similarities, neighbours = index.range_search(vectors, threshold)
    rows = np.repeat(np.arange(len(vectors)), np.diff(limits).astype(np.int64))
    keep = neighbours > rows
    return rows[keep], neighbours[keep], similarities[keep]


def leaking_test_faces(records: FaceRecords, *, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask of faces outside the train split with a near-duplicate inside it."""
    first, second, _ = near_duplicate_pairs(records.embedding, threshold=threshold)
    in_train = records.split == "train"
    crossing = in_train[first] != in_train[second]
    mask = np.zeros(len(records), bool)
    mask[np.where(in_train[first[crossing]], second[crossing], first[crossing])] = True
    return mask


def label_outliers(records: FaceRecords, *, neighbours: int = 10, min_gap: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Faces whose age label differs by at least `min_gap` years from the median label of their
    `neighbours` nearest faces (descriptor features, cosine): (indices sorted by gap, neighbour medians)."""
    features = normalise(records.features.astype(np.float32))
    index = build_index(features)
    _, nearest = index.search(features, neighbours + 1)
    medians = np.median(records.age[nearest[:, 1:]], axis=1)
    gaps = np.abs(records.age - medians)
    order = np.argsort(-gaps)
    order = order[gaps[order] >= min_gap]
    return order, medians[order]


def contact_sheet(rows: list[list[tuple[str, str]]], path: Path, *, tile: int = 112) -> None:
    """A PNG grid: one row per item, each cell an image (path) with a caption under it."""
    canvas = np.full((len(rows) * (tile + 18), max(len(r) for r in rows) * tile, 3), 255, np.uint8)
    for r, cells in enumerate(rows):
        for c, (image_path, caption) in enumerate(cells):
            try:
                image = cv2.resize(load_image(image_path), (tile, tile))
            except AgestimateError:
                image = np.zeros((tile, tile, 3), np.uint8)
            top = r * (tile + 18)
            canvas[top:top + tile, c * tile:(c + 1) * tile] = image
            cv2.putText(canvas, caption[:18], (c * tile + 2, top + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                        cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def hygiene_report(store, folder, *, threshold: float = DEFAULT_THRESHOLD, neighbours: int = 10,
                   min_gap: float = 15.0, sheet_rows: int = 20) -> dict:
    """Write report.md, hygiene.json and PNG plots and contact sheets about `store` into `folder`."""
    try:
        import matplotlib
    except ImportError as error:
        raise AgestimateError("reports need matplotlib: pip install 'agestimate[train]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    database = EmbeddingStore(store)
    try:
        summary = database.summary()
        records = database.faces(labelled=True, primary=True)
        faces_per_image = dict(database._db.execute(
            "SELECT n_faces, COUNT(*) FROM images GROUP BY n_faces ORDER BY n_faces").fetchall())
        copies = database._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM files WHERE sha256 IS NOT NULL "
            "GROUP BY sha256 HAVING n > 1)").fetchone()
    finally:
        database.close()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first, second, similarity = near_duplicate_pairs(records.embedding, threshold=threshold)
    in_train = records.split == "train"
    crossing = (in_train[first] != in_train[second]) & (records.split[first] != "") & (records.split[second] != "")
    agree = np.abs(records.age[first] - records.age[second]) <= 2
    outliers, medians = label_outliers(records, neighbours=neighbours, min_gap=min_gap)

    result = {
        "store": str(store), "threshold": threshold, "labelled_faces": len(records),
        "faces_by_method": summary["faces_by_method"], "files": summary["files"],
        "errors_by_kind": summary["errors_by_kind"], "images_by_face_count": faces_per_image,
        "exact_duplicate_groups": copies[0], "exact_duplicate_files": copies[1],
        "near_duplicate_pairs": int(len(first)), "near_duplicate_pairs_labels_within_2_years": int(agree.sum()),
        "near_duplicate_pairs_across_train_and_val_test": int(crossing.sum()),
        "test_faces_with_a_train_near_duplicate": int(leaking_test_faces(records, threshold=threshold)[records.split == "test"].sum()),
        "label_outliers": int(len(outliers)),
        "gender_counts": {str(k): v for k, v in Counter(records.gender.tolist()).items()},
        "race_counts": {str(k): v for k, v in Counter(records.race.tolist()).items()},
        "split_counts": dict(Counter(records.split.tolist())),
    }
    (folder / "hygiene.json").write_text(json.dumps(result, indent=2) + "\n")

    figure, axes = plt.subplots(figsize=(8, 4))
    for split in sorted(set(records.split.tolist())):
        axes.hist(records.age[records.split == split], bins=range(0, 118, 2), alpha=0.5, label=split or "no split")
    axes.set(xlabel="age", ylabel="faces", title="age histogram per split")
    axes.legend()
    figure.savefig(folder / "age_histogram.png", dpi=100, bbox_inches="tight")
    plt.close("all")

    worst = np.argsort(-similarity[crossing])[:sheet_rows]
    pairs = [(first[crossing][k], second[crossing][k], similarity[crossing][k]) for k in worst]
    caption = lambda i: f"{records.split[i]} age {records.age[i]:.0f}"  # noqa: E731
    if pairs:
        contact_sheet([[(records.path[i], caption(i)), (records.path[j], caption(j) + f" {s:.2f}")] for i, j, s in pairs],
                      folder / "leakage_pairs.png")
    if len(outliers):
        contact_sheet([[(records.path[i], f"label {records.age[i]:.0f} knn {m:.0f}")] for i, m in
                       zip(outliers[:sheet_rows], medians[:sheet_rows])], folder / "label_outliers.png")
    listing = "\n".join(f"| {records.path[i]} | {records.split[i]} | {records.age[i]:.0f} | {records.path[j]} | "
                        f"{records.split[j]} | {records.age[j]:.0f} | {s:.3f} |" for i, j, s in pairs)
    outlier_list = "\n".join(f"| {records.path[i]} | {records.age[i]:.0f} | {m:.0f} |"
                             for i, m in zip(outliers[:sheet_rows], medians[:sheet_rows]))
    (folder / "report.md").write_text(
        f"# Data hygiene: {store}\n\n```json\n{json.dumps(result, indent=2)}\n```\n\n![ages](age_histogram.png)\n\n"
        f"## Near-duplicates across train and val/test (cosine >= {threshold}), most similar first\n\n"
        "| face | split | age | near-duplicate | split | age | cosine |\n|---|---|---|---|---|---|---|\n"
        f"{listing}\n\n![pairs](leakage_pairs.png)\n\n"
        f"## Label outliers (label {min_gap:.0f}+ years from the median of {neighbours} nearest faces)\n\n"
        f"| face | label | neighbours' median |\n|---|---|---|\n{outlier_list}\n\n![outliers](label_outliers.png)\n"
    )
    return result
