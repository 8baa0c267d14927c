"""Data hygiene of a store: distributions, duplicates, train/test leakage and label outliers.

Both searches go through the store's own FAISS index (cosine of the identity embeddings),
restricted to the faces examined: near-duplicates are pairs of faces with a cosine of at least
a threshold (a range search, no O(n^2) loop in Python); label outliers are faces whose age
label is far from the median label of their nearest labelled faces (as `agestimate.store.neighbours`
finds them for predictions).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from agestimate.errors import AgestimateError
from agestimate.io.images import load_image
from agestimate.store.store import EmbeddingStore, FaceRecords

DEFAULT_THRESHOLD = 0.9  # UTKFace: 501 pairs at 0.9, median age gap 2 years (same person, same shoot)


def near_duplicate_pairs(store: EmbeddingStore, records: FaceRecords, *,
                         threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows of `records` (faces of `store`) with identity cosine >= threshold: (i, j, cosine)."""
    limits, similarities, face_ids = store.range_search(records.embedding, threshold, among=records.face_id)
    rows = np.repeat(np.arange(len(records)), np.diff(limits).astype(np.int64))
    neighbours = _rows_of(records, face_ids)
    keep = neighbours > rows
    return rows[keep], neighbours[keep], similarities[keep]


def _rows_of(records: FaceRecords, face_ids: np.ndarray) -> np.ndarray:
    """Row numbers in `records` of store face ids (all of which are in `records`)."""
    order = np.argsort(records.face_id)
    return order[np.searchsorted(records.face_id, face_ids, sorter=order)]


def leaking_test_faces(store: EmbeddingStore, records: FaceRecords, *, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask of faces outside the train split with a near-duplicate inside it."""
    first, second, _ = near_duplicate_pairs(store, records, threshold=threshold)
    return _crossing_the_split(records, first, second)


def _crossing_the_split(records: FaceRecords, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Of the pairs (first, second), the faces outside the train split whose pair is inside it."""
    in_train = records.split == "train"
    crossing = in_train[first] != in_train[second]
    mask = np.zeros(len(records), bool)
    mask[np.where(in_train[first[crossing]], second[crossing], first[crossing])] = True
    return mask


def label_outliers(store: EmbeddingStore, records: FaceRecords, *, neighbours: int = 10,
                   min_gap: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Faces whose age label differs by at least `min_gap` years from the median label of their
    `neighbours` nearest other faces among `records` (identity embeddings, through the store's
    index; all other faces where there are fewer): (indices sorted by gap, neighbour medians).
    Faces without an age label are left out."""
    aged = np.flatnonzero(~np.isnan(records.age))
    if len(aged) < len(records):
        order, medians = label_outliers(store, records.subset(aged), neighbours=neighbours, min_gap=min_gap)
        return aged[order], medians
    count = len(records)
    neighbours = min(neighbours, count - 1)  # a small store has fewer faces than asked for
    if neighbours < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    _, face_ids = store.search(records.embedding, neighbours + 1, among=records.face_id)
    nearest = _rows_of(records, face_ids)
    # each face's own row is not its neighbour (it need not come first: an exact copy ties with it)
    others = nearest != np.arange(count)[:, None]
    others[others.sum(axis=1) > neighbours, -1] = False
    nearest = nearest[others].reshape(count, neighbours)
    medians = np.median(records.age[nearest], axis=1)
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
        records = database.faces(labelled=True, primary=True, descriptor="emb")
        faces_per_image = database.images_by_face_count()
        copies = database.duplicate_files()
        first, second, similarity = near_duplicate_pairs(database, records, threshold=threshold)
        leaking = _crossing_the_split(records, first, second)
        outliers, medians = label_outliers(database, records, neighbours=neighbours, min_gap=min_gap)
    finally:
        database.close()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    in_train = records.split == "train"
    crossing = (in_train[first] != in_train[second]) & (records.split[first] != "") & (records.split[second] != "")
    agree = np.abs(records.age[first] - records.age[second]) <= 2

    result = {
        "store": str(store), "threshold": threshold, "labelled_faces": len(records),
        "faces_by_method": summary["faces_by_method"], "files": summary["files"],
        "errors_by_kind": summary["errors_by_kind"], "images_by_face_count": faces_per_image,
        "exact_duplicate_groups": copies[0], "exact_duplicate_files": copies[1],
        "near_duplicate_pairs": int(len(first)), "near_duplicate_pairs_labels_within_2_years": int(agree.sum()),
        "near_duplicate_pairs_across_train_and_val_test": int(crossing.sum()),
        "test_faces_with_a_train_near_duplicate": int(leaking[records.split == "test"].sum()),
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
        f"## Label outliers (label {min_gap:.0f}+ years from the median of {neighbours} nearest faces, identity embeddings)\n\n"
        f"| face | label | neighbours' median |\n|---|---|---|\n{outlier_list}\n\n![outliers](label_outliers.png)\n"
    )
    return result
