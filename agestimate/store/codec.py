"""The byte form of stored faces, in one place: boxes, landmarks and scores of detections and
their embeddings and features, as the store's record keeps them (one row per face) and the Ray
embedder ships them (one row per image, the faces' bytes one after another).

A face is duck-typed (``box``, ``landmarks``, ``score``, ``method``, as
`agestimate.faces.encoder.FaceDetection` has them), so the store never imports the face pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

BOX_SHAPE = (4,)  # x1, y1, x2, y2
LANDMARKS_SHAPE = (5, 2)  # eyes, nose tip, mouth corners


def pack_vectors(vectors: np.ndarray) -> bytes:
    """Rows of float32 vectors as bytes, one after another."""
    return np.ascontiguousarray(vectors, dtype=np.float32).tobytes()


def unpack_vectors(blobs: bytes | Sequence[bytes], dim: int) -> np.ndarray:
    """The (n, dim) float32 vectors of one byte string or of several joined (read-only view for one)."""
    data = blobs if isinstance(blobs, (bytes, bytearray, memoryview)) else b"".join(blobs)
    return np.frombuffer(data, dtype=np.float32).reshape(-1, dim)


@dataclass(frozen=True)
class PackedFaces:
    """n faces of one image as bytes: ``boxes`` (n x 4 float32), ``landmarks`` (n x 5 x 2
    float32), ``scores`` (n float64), ``methods`` (comma-joined), ``embeddings`` and ``features``
    (n rows of float32 each)."""

    boxes: bytes
    landmarks: bytes
    scores: bytes
    methods: str
    embeddings: bytes
    features: bytes

    def as_dict(self) -> dict:
        """The columns by name (the Ray embedder's row)."""
        return dict(vars(self))

    def rows(self) -> Iterator[tuple]:
        """One (box, landmarks, score, method, embedding, features) per face, as the store's
        `faces` table keeps them (bytes, a float, a name, bytes)."""
        n = self.count
        scores = np.frombuffer(self.scores, np.float64)
        methods = self.methods.split(",") if n else []
        parts = [_split(blob, n) for blob in (self.boxes, self.landmarks, self.embeddings, self.features)]
        for i, (box, landmarks, embedding, features) in enumerate(zip(*parts)):
            yield box, landmarks, float(scores[i]), methods[i], embedding, features

    @property
    def count(self) -> int:
        """The number of faces."""
        return len(self.boxes) // (4 * int(np.prod(BOX_SHAPE)))


def _split(blob: bytes, n: int) -> list[bytes]:
    size = len(blob) // n if n else 0
    return [blob[i * size:(i + 1) * size] for i in range(n)]


@dataclass(frozen=True)
class UnpackedFaces:
    """n faces as arrays: box (n, 4), landmarks (n, 5, 2), score (n,), method (list of n names),
    embedding (n, dim), features (n, feature_dim)."""

    box: np.ndarray
    landmarks: np.ndarray
    score: np.ndarray
    method: list
    embedding: np.ndarray
    features: np.ndarray


def pack_faces(faces: Sequence, embeddings: np.ndarray, features: np.ndarray) -> PackedFaces:
    """The bytes of some detections (objects with box, landmarks, score, method) and their vectors."""
    return PackedFaces(
        boxes=np.array([face.box for face in faces], np.float32).reshape(-1, *BOX_SHAPE).tobytes(),
        landmarks=np.array([face.landmarks for face in faces], np.float32).reshape(-1, *LANDMARKS_SHAPE).tobytes(),
        scores=np.array([face.score for face in faces], np.float64).tobytes(),
        methods=",".join(face.method for face in faces),
        embeddings=pack_vectors(embeddings),
        features=pack_vectors(features),
    )


def unpack_faces(boxes, landmarks, embeddings, features, *, dim: int, feature_dim: int, scores=None,
                 methods=None) -> UnpackedFaces:
    """Arrays of faces packed by `pack_faces` (or one blob per face, as the store's rows hold them).

    scores : float64 bytes, or the scores themselves (None: none known, NaN).
    methods : comma-joined names, or the names themselves (None: '').
    """
    box = unpack_vectors(boxes, int(np.prod(BOX_SHAPE))).reshape(-1, *BOX_SHAPE)
    n = len(box)
    if scores is None:
        score = np.full(n, np.nan)
    elif isinstance(scores, (bytes, bytearray, memoryview)):
        score = np.frombuffer(scores, np.float64)
    else:
        score = np.asarray(scores)
    if methods is None:
        method = [""] * n
    elif isinstance(methods, str):
        method = methods.split(",") if methods else []
    else:
        method = list(methods)
    return UnpackedFaces(box=box, landmarks=unpack_vectors(landmarks, 2).reshape(-1, *LANDMARKS_SHAPE), score=score,
                         method=method, embedding=unpack_vectors(embeddings, dim),
                         features=unpack_vectors(features, feature_dim))
