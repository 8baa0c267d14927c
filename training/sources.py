"""Labelled faces from one or more stores as one data set: the store (source) of each face,
person groups that never straddle two parts, and the train/val part of faces whose store has
no split labels.

Rules, in one place:
- a face's group is its person where the label names one (per store: person "001" of two
  stores are two people), else its image: photos of one person are always on the same side;
- faces with a split label keep it (UTKFace's fixed train/val/test);
- faces without one are training faces, except a ``val_fraction`` of their groups (drawn
  with the seed) that join the validation set used to choose the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agestimate.errors import StoreError
from agestimate.faces.descriptors import normalise
from agestimate.store.index import EmbeddingIndex
from agestimate.store.store import EmbeddingStore, FaceRecords


@dataclass(frozen=True)
class LabelledSources:
    """The largest face of every labelled image of some stores, one after another.

    records : the faces (features of `descriptor`).
    source : the store each face came from, as given (object array, one per face).
    stores : the stores, in the order given.
    """

    records: FaceRecords
    source: np.ndarray
    stores: list[str]
    descriptor: str
    embedding_model: str

    @property
    def groups(self) -> np.ndarray:
        """Group key of each face: store and person where the person is known, else store and image."""
        records = self.records
        known = records.person != ""
        return np.where(known, self.source + "\0p" + records.person, self.source + "\0i" + records.sha256)

    def counts(self, split: np.ndarray) -> dict:
        """Faces per source and split: ``{store: {split: n}}``, empty splits left out."""
        return {store: {name: int(((self.source == store) & (split == name)).sum())
                        for name in ("train", "val", "test") if ((self.source == store) & (split == name)).any()}
                for store in self.stores}


def load_sources(stores, descriptor: str | None = None) -> LabelledSources:
    """Read the labelled faces of one store (a path) or several (a list of paths).

    The stores must come from the same embedding model and hold `descriptor` (default: the
    first store's descriptor).
    """
    stores = [str(stores)] if isinstance(stores, (str, Path)) else [str(store) for store in stores]
    if not stores:
        raise ValueError("give at least one store")
    if len(set(stores)) != len(stores):
        raise StoreError(f"a store is given twice: {stores}")
    parts, models = [], {}
    for store in stores:
        with EmbeddingStore(store) as database:
            descriptor = descriptor or database.descriptor
            parts.append(database.faces(labelled=True, primary=True, descriptor=descriptor))
            models[store] = database.model_sha256
    if len(set(models.values())) > 1:
        raise StoreError(f"the stores were made with different embedding models, their features do not mix: {models}")
    source = np.concatenate([np.full(len(part), store, dtype=object) for part, store in zip(parts, stores)])
    return LabelledSources(FaceRecords.concatenate(parts), source, stores, descriptor, models[stores[0]])


def held_out_groups(groups: np.ndarray, candidates: np.ndarray, *, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of the faces of a `fraction` of the groups of the `candidates` faces (at least one
    group when there are two or more), drawn with `rng`."""
    pool = np.array(sorted(set(groups[candidates].tolist())), dtype=object)
    size = max(1, round(fraction * len(pool))) if len(pool) >= 2 else 0
    chosen = rng.choice(pool, size=size, replace=False) if size else pool[:0]
    return candidates & np.isin(groups, chosen)


def assign_splits(sources: LabelledSources, *, val_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """The split of each face: its label, or for faces without one "train", and "val" for a
    `val_fraction` of their groups (people, else images)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = sources.records.split.astype(object).copy()
    free = split == ""
    held = held_out_groups(sources.groups, free, fraction=val_fraction, rng=np.random.default_rng(seed)) if val_fraction else free & False
    split[free] = "train"
    split[held] = "val"
    return split


def label_quality_exclusions(sources: LabelledSources, split: np.ndarray, *, label_outliers: bool = False,
                             near_duplicates: float | None = None) -> dict[str, np.ndarray]:
    """Training faces to leave out, by reason (masks over all faces; see `agestimate.evaluation.hygiene`).

    label_outliers : training faces whose age is 15+ years from the median of their 10 nearest
        training faces (identity embeddings), the hygiene report's label outliers.
    near_duplicates : a cosine threshold: training faces whose identity embedding is at least
        this similar to a val or test face (the same photo or shoot on both sides).
    """
    from agestimate.evaluation.hygiene import label_outliers as find_label_outliers
    from agestimate.evaluation.hygiene import near_duplicate_pairs

    train = split == "train"
    records = sources.records.replace(face_id=np.arange(len(split)))  # faces of several stores: rows as ids
    index = EmbeddingIndex.from_vectors(normalise(records.embedding), records.face_id, kind="flat")  # as a store's search
    excluded = {}
    if label_outliers:
        indices, _ = find_label_outliers(index, records.subset(train))
        mask = np.zeros(len(split), bool)
        mask[np.flatnonzero(train)[indices]] = True
        excluded["label_outliers"] = mask
    if near_duplicates is not None:
        first, second, _ = near_duplicate_pairs(index, records, threshold=near_duplicates)
        held = np.isin(split, ("val", "test"))
        mask = np.zeros(len(split), bool)
        mask[first[train[first] & held[second]]] = True
        mask[second[train[second] & held[first]]] = True
        excluded["near_duplicates_of_val_test"] = mask
    return excluded


def repeat_index(sources: LabelledSources, mask: np.ndarray, repeats=None) -> np.ndarray:
    """Indices of the faces in `mask`, each face of the i-th store `repeats[i]` times (None: once):
    a small set (FG-NET beside UTKFace) then weighs as much per epoch as that many copies."""
    if repeats is None:
        return np.flatnonzero(mask)
    repeats = [int(n) for n in repeats]
    if len(repeats) != len(sources.stores) or min(repeats) < 1:
        raise ValueError(f"give one repeat count of 1 or more per store ({len(sources.stores)}), got {repeats}")
    times = np.zeros(len(mask), np.int64)
    for store, n in zip(sources.stores, repeats):
        times[sources.source == store] = n
    return np.repeat(np.arange(len(mask)), np.where(mask, times, 0))
