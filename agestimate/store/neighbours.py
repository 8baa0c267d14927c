"""Evidence from a store: the labelled faces most like a given face, found by the store's own
FAISS index (cosine of the 512-d identity embeddings), with their files and labels.

A face's nearest labelled faces are often photos of the same person, or of people who look
alike; their ages say what the labelled data holds near this face. A query image that is
itself in the store finds itself first, with similarity 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agestimate.faces.descriptors import EMBEDDING_DIM
from agestimate.io.labels import GENDER_NAME_OF_CODE
from agestimate.store.store import EmbeddingStore

DEFAULT_K = 5


@dataclass(frozen=True)
class Neighbour:
    """One labelled face of a store: its file, age label, gender label ("male", "female" or None),
    split label ('' when none), the cosine similarity of its identity embedding to the query,
    and its face id in the store. age is None for a face labelled with its gender only."""

    file: str
    age: float | None
    gender: str | None
    split: str
    similarity: float
    face_id: int

    def to_dict(self) -> dict:
        return {"file": self.file, "age": self.age, "gender": self.gender, "split": self.split,
                "similarity": round(self.similarity, 4), "face_id": self.face_id}


class StoreNeighbours:
    """The labelled faces of a store, searched with its FAISS index.

    Parameters
    ----------
    store : a store folder or an open `EmbeddingStore` (then it is not closed by `close`).

    Examples
    --------
    >>> with StoreNeighbours("utk.store") as search:                        # doctest: +SKIP
    ...     faces = agestimate.predict("photo.jpg", return_embedding=True)
    ...     for face, neighbours in zip(faces, search(faces, k=5)):
    ...         print(face.age, [(n.age, round(n.similarity, 2)) for n in neighbours])
    """

    def __init__(self, store):
        self._owned = not isinstance(store, EmbeddingStore)
        self.store = EmbeddingStore(store) if self._owned else store
        labelled = self.store.faces(labelled=True, primary=True, descriptor="emb")  # a label describes the largest face
        self._rows = {int(face_id): i for i, face_id in enumerate(labelled.face_id)}
        self._labelled = labelled

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, queries, *, k: int = DEFAULT_K) -> list[list[Neighbour]]:
        """The `k` nearest labelled faces of each query, most similar first.

        queries : identity embeddings (n, 512), or a list of `Face` predicted with
            ``return_embedding=True``.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = _embeddings_of(queries)
        if len(vectors) == 0 or not self._rows:
            return [[] for _ in range(len(vectors))]
        similarities, face_ids = self.store.search(vectors, k, among=self._labelled.face_id)
        labelled = self._labelled
        result = []
        for row_similarities, row_ids in zip(similarities, face_ids):
            found = []
            for similarity, face_id in zip(row_similarities, row_ids):
                if face_id < 0:  # fewer labelled faces than k
                    continue
                i = self._rows[int(face_id)]
                found.append(Neighbour(file=str(labelled.path[i]), age=None if np.isnan(labelled.age[i]) else float(labelled.age[i]),
                                       gender=GENDER_NAME_OF_CODE.get(int(labelled.gender[i])), split=str(labelled.split[i]),
                                       similarity=float(similarity), face_id=int(face_id)))
            result.append(found)
        return result

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def __enter__(self) -> StoreNeighbours:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _embeddings_of(queries) -> np.ndarray:
    if isinstance(queries, Sequence) and not isinstance(queries, np.ndarray):
        if any(getattr(face, "embedding", None) is None for face in queries):
            raise ValueError("faces need their embeddings: predict with return_embedding=True")
        queries = [face.embedding for face in queries]
        if not queries:
            return np.empty((0, EMBEDDING_DIM), np.float32)
    vectors = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if vectors.ndim != 2 or vectors.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"queries must be identity embeddings of shape (n, {EMBEDDING_DIM}), got {vectors.shape}")
    return vectors


def nearest_labelled(store, queries, *, k: int = DEFAULT_K) -> list[list[Neighbour]]:
    """The `k` labelled faces of `store` nearest to each query (see `StoreNeighbours`)."""
    with StoreNeighbours(store) as search:
        return search(queries, k=k)
