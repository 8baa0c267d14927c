"""The embedding store: a durable SQLite record of images, faces, labels and embeddings,
with a FAISS index over the embeddings that is rebuilt from the record whenever it is
missing, damaged or stale.

Every image is committed in its own transaction, so a store killed at any moment reopens
consistent: an image is either wholly in the record or not at all. Images are keyed by the
SHA-256 of their bytes, so renamed or copied files are embedded once. The record is bound to
the SHA-256 of the embedding model and to the descriptor (see `agestimate.descriptors`) whose
features it keeps beside each embedding: opening it with another model or descriptor is an
error, so two kinds of vectors never mix.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import StoreError
from .descriptors import EMBEDDING_DIM, Descriptor
from .faces import FaceDetection
from .labels import FaceLabel
from .search_index import build_index, check_kind, describe, needs_rebuild

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASE = "store.sqlite"
INDEX = "index.faiss"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, width INTEGER, height INTEGER, n_faces INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    status TEXT NOT NULL CHECK (status IN ('embedded', 'no_face', 'error')),
    kind TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL REFERENCES images(sha256), face_index INTEGER NOT NULL,
    box BLOB NOT NULL, landmarks BLOB NOT NULL, score REAL NOT NULL, method TEXT NOT NULL,
    embedding BLOB NOT NULL, features BLOB NOT NULL, UNIQUE (sha256, face_index));
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files (sha256);
CREATE TABLE IF NOT EXISTS labels (
    sha256 TEXT PRIMARY KEY, age REAL, gender INTEGER, race INTEGER, person TEXT, split TEXT,
    extra TEXT, source TEXT);
"""


@dataclass(frozen=True)
class FaceRecords:
    """Faces of a store as parallel arrays, one row per face (see `EmbeddingStore.faces`).

    Unknown labels are NaN (age) or -1 (gender, race); person and split are '' when unknown.
    """

    face_id: np.ndarray
    sha256: np.ndarray
    path: np.ndarray
    face_index: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    embedding: np.ndarray
    features: np.ndarray
    score: np.ndarray
    method: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    race: np.ndarray
    person: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.face_id)

    def subset(self, mask) -> FaceRecords:
        return FaceRecords(**{name: value[mask] for name, value in vars(self).items()})


class EmbeddingStore:
    """A folder holding `store.sqlite` (the record) and `index.faiss` (the search index).

    Parameters
    ----------
    path : the store folder.
    model_sha256 : SHA-256 of the embedding model; required to create, checked when opening.
    descriptor : name of the descriptor of the stored features; required to create, checked when opening.
    create : create the store if it does not exist.
    index : the search index, "auto", "flat" or "ivf" (see `agestimate.search_index`); kept in the
        store and applied when the index is next written. None: the store's choice ("auto" if new).
    """

    def __init__(self, path: str | Path, *, model_sha256: str | None = None, descriptor: str | None = None,
                 create: bool = False, index: str | None = None):
        self.path = Path(path)
        database = self.path / DATABASE
        if not database.is_file():
            if not create:
                raise StoreError(f"{self.path}: no embedding store here (no {DATABASE}); create one with `agestimate embed`")
            if model_sha256 is None or descriptor is None:
                raise ValueError("model_sha256 and descriptor are needed to create a store")
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(database, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{database}: not a readable store database ({error})") from error
        if not meta:
            meta = {"schema_version": str(SCHEMA_VERSION), "model_sha256": model_sha256, "dim": str(EMBEDDING_DIM),
                    "descriptor": descriptor, "feature_dim": str(Descriptor.parse(descriptor).dim)}
            with self._db:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: store schema version {meta.get('schema_version')}, this agestimate reads {SCHEMA_VERSION}")
        if model_sha256 is not None and meta["model_sha256"] != model_sha256:
            raise StoreError(
                f"{self.path}: store was made with the embedding model {meta['model_sha256']}, "
                f"not {model_sha256}; use a new store folder for this model"
            )
        if descriptor is not None and meta["descriptor"] != descriptor:
            raise StoreError(
                f"{self.path}: store holds features of the descriptor {meta['descriptor']!r}, not {descriptor!r}; "
                f"use a new store folder, or embed with --descriptor {meta['descriptor']}"
            )
        self.model_sha256 = meta["model_sha256"]
        self.descriptor = meta["descriptor"]
        self.dim = int(meta["dim"])
        self.feature_dim = int(meta["feature_dim"])
        self.index_kind = check_kind(index or meta.get("index", "auto"))
        if self.index_kind != meta.get("index", "auto"):
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (self.index_kind,))
        self.index = self._load_index()

    # -- the FAISS index -------------------------------------------------------------------
    def _new_index(self, ids: np.ndarray, vectors: np.ndarray) -> faiss.IndexIDMap2:
        return build_index(vectors, ids, self.index_kind, dim=self.dim)

    def _load_index(self) -> faiss.IndexIDMap2:
        """Read `index.faiss` if it agrees with the record (same ids, same vectors), else rebuild it."""
        self._index_changed = False
        ids, vectors = self._all_embeddings()
        index_file = self.path / INDEX
        problem = None
        if not index_file.exists():
            problem = "missing" if len(ids) else None
        else:
            try:
                index = faiss.read_index(str(index_file))
                stored_ids = faiss.vector_to_array(index.id_map)
                if not np.array_equal(stored_ids, ids):
                    problem = f"holds {len(stored_ids)} faces, the record {len(ids)}"
                elif len(ids) and not np.array_equal(index.index.reconstruct_n(0, len(ids)), vectors):
                    problem = "vectors differ from the record"
                elif needs_rebuild(index, self.index_kind):
                    logger.info("%s: index is %s, the store asks for %s at %d faces; rebuilding it", index_file,
                                describe(index), self.index_kind, len(ids))
                    self._index_changed = True
                else:
                    return index
            except RuntimeError as error:
                problem = f"unreadable ({str(error).splitlines()[0]})"
        if problem:
            logger.warning("%s: index %s; rebuilding it from the record (%d faces)", index_file, problem, len(ids))
            self._index_changed = True
        return self._new_index(ids, vectors)

    def save_index(self) -> None:
        """Write the index atomically: a crash leaves the old file or the new one, never half.
        An index that has outgrown its kind (see `search_index.needs_rebuild`) is rebuilt first."""
        if needs_rebuild(self.index, self.index_kind):
            self.index = self._new_index(*self._all_embeddings())
        temporary = self.path / (INDEX + ".tmp")
        faiss.write_index(self.index, str(temporary))
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, self.path / INDEX)

    def _all_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute("SELECT id, embedding FROM faces ORDER BY id").fetchall()
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(-1, self.dim)
        return ids, vectors

    # -- writing -----------------------------------------------------------------------------
    def file_status(self, path: Path, size: int, mtime_ns: int) -> str | None:
        """Status of this path if it was processed with this size and modification time, else None."""
        row = self._db.execute("SELECT size, mtime_ns, status FROM files WHERE path = ?", (str(path),)).fetchone()
        return row[2] if row is not None and tuple(row[:2]) == (size, mtime_ns) else None

    def image_faces(self, sha256: str) -> int | None:
        """Number of faces stored for the image with this content, or None if it is not stored."""
        row = self._db.execute("SELECT n_faces FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else row[0]

    def add_image(self, sha256: str, width: int, height: int, faces: list[FaceDetection], embeddings: np.ndarray,
                  features: np.ndarray) -> None:
        """Record an image, its faces, their embeddings and features in one transaction; index them."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        features = np.ascontiguousarray(features, dtype=np.float32)
        if embeddings.shape != (len(faces), self.dim) or features.shape != (len(faces), self.feature_dim):
            raise ValueError(
                f"expected embeddings {(len(faces), self.dim)} and features {(len(faces), self.feature_dim)}, "
                f"got {embeddings.shape} and {features.shape}"
            )
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO images VALUES (?, ?, ?, ?)", (sha256, width, height, len(faces)))
            ids = []
            for face_index, (face, vector, feature) in enumerate(zip(faces, embeddings, features)):
                cursor = self._db.execute(
                    "INSERT INTO faces (sha256, face_index, box, landmarks, score, method, embedding, features) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sha256, face_index, np.asarray(face.box, np.float32).tobytes(), np.asarray(face.landmarks, np.float32).tobytes(),
                     face.score, face.method, vector.tobytes(), feature.tobytes()),
                )
                ids.append(cursor.lastrowid)
        if ids:
            self.index.add_with_ids(embeddings, np.array(ids, dtype=np.int64))
            self._index_changed = True

    def add_file(self, path: Path, size: int | None, mtime_ns: int | None, sha256: str | None,
                 status: str, *, kind: str | None = None, reason: str | None = None) -> None:
        """Record where a file was seen and what became of it ('embedded', 'no_face' or 'error')."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(path), size, mtime_ns, sha256, status, kind, reason),
            )

    def set_label(self, sha256: str, label: FaceLabel, *, source: str) -> bool:
        """Attach a label to an image; returns False if it replaced a different label."""
        values = (label.age, label.gender, label.race, label.person, label.split, json.dumps(label.extra, sort_keys=True))
        with self._db:
            old = self._db.execute(
                "SELECT age, gender, race, person, split, extra FROM labels WHERE sha256 = ?", (sha256,)
            ).fetchone()
            self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sha256, *values, source))
        return old is None or tuple(old) == values

    def close(self) -> None:
        """Save the index if it changed, and close the record."""
        if self._index_changed:
            self.save_index()
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def faces(self, *, split: str | None = None, labelled: bool = False, primary: bool = False,
              descriptor: str | None = None) -> FaceRecords:
        """Faces with their labels, ordered by face id.

        Parameters
        ----------
        descriptor : return the features of this descriptor, which must be part of the store's
            (same flip setting, a subset of its blocks), or "emb", the identity embedding, which
            every store holds; default: the store's own.
        split : only faces of images with this split label.
        labelled : only faces of images with an age label.
        primary : only the largest face of each image (face_index 0), the one a label describes.
        """
        query = """
            SELECT f.id, f.sha256, (SELECT MIN(path) FROM files WHERE files.sha256 = f.sha256), f.face_index,
                   f.embedding, f.features, f.score, f.method, l.age, l.gender, l.race, l.person, l.split,
                   f.box, f.landmarks
            FROM faces f LEFT JOIN labels l ON l.sha256 = f.sha256 WHERE 1 = 1"""
        parameters: list = []
        if split is not None:
            query += " AND l.split = ?"
            parameters.append(split)
        if labelled:
            query += " AND l.age IS NOT NULL"
        if primary:
            query += " AND f.face_index = 0"
        columns_of_part = None
        if descriptor is not None and descriptor not in (self.descriptor, "emb"):
            try:
                columns_of_part = Descriptor.parse(self.descriptor).columns_of(Descriptor.parse(descriptor))
            except ValueError as error:
                raise StoreError(f"{self.path}: {error}; embed into a store with that descriptor") from error
        rows = self._db.execute(query + " ORDER BY f.id", parameters).fetchall()
        columns = list(zip(*rows)) if rows else [()] * 15

        def column(i, dtype, missing):
            return np.array([missing if v is None else v for v in columns[i]], dtype=dtype)

        features = np.frombuffer(b"".join(columns[5]), dtype=np.float32).reshape(-1, self.feature_dim)
        embedding = np.frombuffer(b"".join(columns[4]), dtype=np.float32).reshape(-1, self.dim)
        return FaceRecords(
            face_id=column(0, np.int64, -1),
            sha256=column(1, object, ""),
            path=column(2, object, ""),
            face_index=column(3, np.int64, -1),
            box=np.frombuffer(b"".join(columns[13]), dtype=np.float32).reshape(-1, 4).copy(),
            landmarks=np.frombuffer(b"".join(columns[14]), dtype=np.float32).reshape(-1, 5, 2).copy(),
            embedding=embedding.copy(),
            features=(embedding.copy() if descriptor == "emb" and self.descriptor != "emb"
                      else features.copy() if columns_of_part is None else features[:, columns_of_part]),
            score=column(6, np.float32, np.nan),
            method=column(7, object, ""),
            age=column(8, np.float32, np.nan),
            gender=column(9, np.int64, -1),
            race=column(10, np.int64, -1),
            person=column(11, object, ""),
            split=column(12, object, ""),
        )

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar stored faces (cosine) to each query: (similarities, face ids), each (n, k)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        index = self.index
        if hasattr(faiss, "index_cpu_to_gpu") and faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
        return index.search(queries, k)

    def summary(self) -> dict:
        """Counts of what the store holds: images, faces, labels per split, files by status and reason."""
        one = lambda query: self._db.execute(query).fetchone()[0]  # noqa: E731
        return {
            "path": str(self.path),
            "model_sha256": self.model_sha256,
            "descriptor": self.descriptor,
            "images": one("SELECT COUNT(*) FROM images"),
            "images_with_faces": one("SELECT COUNT(*) FROM images WHERE n_faces > 0"),
            "faces": one("SELECT COUNT(*) FROM faces"),
            "index_faces": int(self.index.ntotal),
            "index": f"{describe(self.index)}, setting {self.index_kind}",
            "files": dict(self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status")),
            "errors_by_kind": dict(self._db.execute("SELECT kind, COUNT(*) FROM files WHERE status = 'error' GROUP BY kind")),
            "faces_by_method": dict(self._db.execute("SELECT method, COUNT(*) FROM faces GROUP BY method")),
            "labelled_images_by_split": {
                (split or "none"): count
                for split, count in self._db.execute(
                    "SELECT split, COUNT(*) FROM labels WHERE sha256 IN (SELECT sha256 FROM images) GROUP BY split")
            },
            "labelled_faces_by_split": {
                (split or "none"): count
                for split, count in self._db.execute(
                    "SELECT l.split, COUNT(*) FROM faces f JOIN labels l ON l.sha256 = f.sha256 "
                    "WHERE f.face_index = 0 AND l.age IS NOT NULL GROUP BY l.split")
            },
        }

    def errors(self) -> list[tuple[str, str, str]]:
        """(path, kind, reason) of every file that could not be embedded."""
        return self._db.execute("SELECT path, kind, reason FROM files WHERE status = 'error' ORDER BY path").fetchall()
