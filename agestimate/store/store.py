"""The embedding store: a durable SQLite record of images, faces, labels and embeddings,
with a FAISS index over the embeddings that is rebuilt from the record whenever it is
missing, damaged or stale.

Every image is committed in its own transaction, so a store killed at any moment reopens
consistent: an image is either wholly in the record or not at all. Images are keyed by the
SHA-256 of their bytes, so renamed or copied files are embedded once. The record is bound to
the SHA-256 of the embedding model and to the descriptor (see `agestimate.faces.descriptors`) whose
features it keeps beside each embedding: opening it with another model or descriptor is an
error, so two kinds of vectors never mix.

Files and content: a file row points at the current content of its path. When a file
changes, the row moves to the new content; an image that no file points at any more is
left out of `faces` (so of training and evaluation) and of the counts, and `prune` deletes
it with its faces and label. Labels belong to content; a file whose content changed keeps
its label unless a new one is given.

The index is read lazily and trusted without reading the embeddings when the record says it
was written at the record's current version (a counter bumped by every change to the
faces) and it holds as many faces as the record; otherwise it is checked against the record
and rebuilt if they differ. Several processes may write one store at once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from agestimate.errors import StoreError
from agestimate.faces.descriptors import EMBEDDING_DIM, Descriptor
from agestimate.io.labels import FaceLabel
from agestimate.store.codec import pack_faces, unpack_faces, unpack_vectors
from agestimate.store.index import EmbeddingIndex, check_kind, describe

if TYPE_CHECKING:  # for annotations only: the store reads faces, it never detects them
    from agestimate.faces.encoder import FaceDetection

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
# An image is current while a file points at it; the others are stale (left out; see `prune`).
CURRENT = "sha256 IN (SELECT sha256 FROM files WHERE sha256 IS NOT NULL)"
LABEL_COLUMNS = "age, gender, race, person, split, extra"
WRITE_LOCK_SECONDS = 60  # how long a writer waits for another process's transaction


def _label_values(label: FaceLabel) -> tuple:
    return (label.age, label.gender, label.race, label.person, label.split, json.dumps(label.extra, sort_keys=True))


def _label_of(row) -> FaceLabel:
    age, gender, race, person, split, extra = row
    return FaceLabel(age=age, gender=gender, race=race, person=person, split=split, extra=json.loads(extra or "{}"))


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

    def replace(self, **columns) -> FaceRecords:
        """The same faces with some columns replaced (e.g. ``split``)."""
        return FaceRecords(**{**vars(self), **columns})

    @staticmethod
    def concatenate(parts: list[FaceRecords]) -> FaceRecords:
        """The faces of several record sets, one after another."""
        return FaceRecords(**{name: np.concatenate([vars(part)[name] for part in parts]) for name in vars(parts[0])})


def _open_database(database: Path) -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place. Switching a new database to WAL takes
    a lock that SQLite does not wait for, so a second process creating the same store at the
    same moment retries (up to WRITE_LOCK_SECONDS) instead of failing with "database is locked"."""
    deadline = time.monotonic() + WRITE_LOCK_SECONDS
    while True:
        db = sqlite3.connect(database, isolation_level=None, timeout=WRITE_LOCK_SECONDS)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            return db
        except sqlite3.OperationalError as error:
            db.close()
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class EmbeddingStore:
    """A folder holding `store.sqlite` (the record) and `index.faiss` (the search index).

    Parameters
    ----------
    path : the store folder.
    model_sha256 : SHA-256 of the embedding model; required to create, checked when opening.
    descriptor : name of the descriptor of the stored features; required to create, checked when opening.
    create : create the store if it does not exist.
    index : the search index, "auto", "flat" or "ivf" (see `agestimate.store.index`); kept in the
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
            self._db = _open_database(database)
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{database}: not a readable store database ({error})") from error
        if not meta:  # a new store; another process may be creating it at the same moment
            created = {"schema_version": str(SCHEMA_VERSION), "model_sha256": model_sha256, "dim": str(EMBEDDING_DIM),
                       "descriptor": descriptor, "feature_dim": str(Descriptor.parse(descriptor).dim)}
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", created.items())
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
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
        self._faces_changed = False  # this process added or deleted faces
        self.index_kind = check_kind(index or self._meta("index") or "auto")
        self._index = EmbeddingIndex(self.path / INDEX, kind=self.index_kind, dim=self.dim)
        if self.index_kind != (self._meta("index") or "auto"):  # a new choice: kept, and applied at close
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (self.index_kind,))
            self._index.unsaved = True

    # -- the FAISS index -------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _record_version(self) -> int:
        """A counter bumped by every transaction that adds or deletes faces (0 before the first)."""
        return int(self._meta("record_version") or 0)

    def _bump_record_version(self) -> None:
        """Inside a write transaction: one more change to the faces."""
        self._db.execute("INSERT INTO meta VALUES ('record_version', '1') "
                         "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    @property
    def search_index(self) -> EmbeddingIndex:
        """The `EmbeddingIndex` over the embeddings (keyed by face id), brought up to the record on use."""
        version = self._record_version()
        if self._index.faiss is None or self._index.version != version:
            count = self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            checked = self._index.load(version, count=count, saved_version=self._meta("index_version"),
                                       read_record=self.embeddings, quiet=self._faces_changed)
            if checked and self._record_version() == version:  # checked once: trusted from now on
                self._mark_index_saved(version)
        return self._index

    @property
    def index(self) -> faiss.IndexIDMap2:
        """The FAISS index over the embeddings (inner product, keyed by face id), read on first use."""
        return self.search_index.faiss

    @property
    def index_saved(self) -> bool:
        """Whether `index.faiss` holds what this process's index holds (False after a rebuild or
        additions not yet saved, or a new index choice not yet applied)."""
        return not self._index.unsaved

    def _mark_index_saved(self, version: int) -> None:
        """Record that index.faiss shows the record at `version` (inside a transaction, or alone)."""
        statement = "INSERT OR REPLACE INTO meta VALUES ('index_version', ?)"
        if self._db.in_transaction:
            self._db.execute(statement, (str(version),))
            return
        try:
            with self._db:
                self._db.execute(statement, (str(version),))
        except sqlite3.OperationalError as error:  # a read-only store: checked again next time
            logger.debug("%s: cannot record the index check (%s)", self.path, error)

    def save_index(self) -> None:
        """Bring `index.faiss` up to date with the record, writing it atomically (a crash leaves
        the old file or the new one, never half) unless it already is. Other writers wait meanwhile."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # no other process changes the faces until the file is written
            version = self._record_version()
            index = self.search_index
            if index.unsaved or self._meta("index_version") != str(version) or not (self.path / INDEX).exists():
                index.save()
                self._mark_index_saved(version)
        self._index.unsaved = False

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, identity embeddings (n, dim)) of every face in the record, stale images' too, by face id."""
        rows = self._db.execute("SELECT id, embedding FROM faces ORDER BY id").fetchall()
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        return ids, unpack_vectors([row[1] for row in rows], self.dim)

    # -- writing -----------------------------------------------------------------------------
    def file_status(self, path: Path, size: int, mtime_ns: int) -> tuple[str, str | None] | None:
        """(status, content SHA-256) of this path if it was processed with this size and
        modification time, else None."""
        row = self._db.execute("SELECT size, mtime_ns, status, sha256 FROM files WHERE path = ?", (str(path),)).fetchone()
        return (row[2], row[3]) if row is not None and tuple(row[:2]) == (size, mtime_ns) else None

    def image_faces(self, sha256: str) -> int | None:
        """Number of faces stored for the image with this content, or None if it is not stored."""
        row = self._db.execute("SELECT n_faces FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else row[0]

    def stored_images(self) -> dict[str, int]:
        """{content SHA-256: number of faces} of every image in the record (see `image_faces`)."""
        return dict(self._db.execute("SELECT sha256, n_faces FROM images"))

    def add_image(self, sha256: str, width: int, height: int, faces: list[FaceDetection], embeddings: np.ndarray,
                  features: np.ndarray) -> bool:
        """Record an image, its faces, their embeddings and features in one transaction.

        Returns False, recording nothing, when the image is already stored (by another
        process writing the same store, say). The index catches up when it is next used.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        features = np.ascontiguousarray(features, dtype=np.float32)
        if embeddings.shape != (len(faces), self.dim) or features.shape != (len(faces), self.feature_dim):
            raise ValueError(
                f"expected embeddings {(len(faces), self.dim)} and features {(len(faces), self.feature_dim)}, "
                f"got {embeddings.shape} and {features.shape}"
            )
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            inserted = self._db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)",
                                        (sha256, width, height, len(faces))).rowcount
            if not inserted:
                return False
            for face_index, row in enumerate(pack_faces(faces, embeddings, features).rows()):
                self._db.execute(
                    "INSERT INTO faces (sha256, face_index, box, landmarks, score, method, embedding, features) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sha256, face_index, *row))
            if faces:
                self._bump_record_version()
                self._faces_changed = True
        return True

    def add_file(self, path: Path, size: int | None, mtime_ns: int | None, sha256: str | None,
                 status: str, *, kind: str | None = None, reason: str | None = None,
                 label: FaceLabel | None = None, label_source: str = "") -> FaceLabel | None:
        """Record where a file was seen and what became of it ('embedded', 'no_face' or 'error').

        In the same transaction, `label` is attached to the file's content (see `set_label`);
        without one, a file whose content changed carries its earlier content's label over
        to the new content, if that has none. Returns the label `label` replaced, where different.
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            old = self._db.execute("SELECT sha256 FROM files WHERE path = ?", (str(path),)).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(path), size, mtime_ns, sha256, status, kind, reason),
            )
            if sha256 is None or status == "error":
                return None
            if label is not None:
                return self._set_label(sha256, label, label_source)
            if old is not None and old[0] not in (None, sha256):
                self._db.execute(
                    f"INSERT OR IGNORE INTO labels SELECT ?, {LABEL_COLUMNS}, source FROM labels WHERE sha256 = ?",
                    (sha256, old[0]))
        return None

    def set_label(self, sha256: str, label: FaceLabel, *, source: str) -> FaceLabel | None:
        """Attach a label to an image, replacing its label if any; returns the replaced label where it differed."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._set_label(sha256, label, source)

    def _set_label(self, sha256: str, label: FaceLabel, source: str) -> FaceLabel | None:
        values = _label_values(label)
        old = self._db.execute(f"SELECT {LABEL_COLUMNS} FROM labels WHERE sha256 = ?", (sha256,)).fetchone()
        if old is not None and tuple(old) == values:
            return None
        self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sha256, *values, source))
        return None if old is None else _label_of(old)

    def label(self, sha256: str) -> FaceLabel | None:
        """The label of the image with this content, or None."""
        row = self._db.execute(f"SELECT {LABEL_COLUMNS} FROM labels WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else _label_of(row)

    def prune(self, *, missing_files: bool = True) -> dict:
        """Forget what no longer counts: files no longer on disk (with ``missing_files``), then
        images no file points at, with their faces and labels. Returns the counts removed.

        Paths are checked as `embed` recorded them (relative ones from the current folder).
        When none of the recorded files exists (a moved or unmounted folder, or another current
        folder), nothing is removed and `StoreError` says so.
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            gone = []
            if missing_files:
                paths = [row[0] for row in self._db.execute("SELECT path FROM files")]
                gone = [path for path in paths if not os.path.exists(path)]
                if paths and len(gone) == len(paths):
                    raise StoreError(f"{self.path}: none of the {len(paths)} recorded files exists from {os.getcwd()} "
                                     f"(e.g. {paths[0]}); moved, unmounted, or relative to another folder? Nothing pruned")
                self._db.executemany("DELETE FROM files WHERE path = ?", [(path,) for path in gone])
            stale = f"(SELECT sha256 FROM images WHERE NOT {CURRENT})"
            faces = self._db.execute(f"DELETE FROM faces WHERE sha256 IN {stale}").rowcount
            images = self._db.execute(f"DELETE FROM images WHERE sha256 IN {stale}").rowcount
            labels = self._db.execute("DELETE FROM labels WHERE sha256 NOT IN (SELECT sha256 FROM images)").rowcount
            if faces:
                self._bump_record_version()
                self._faces_changed = True
        return {"missing_files": len(gone), "images": images, "faces": faces, "labels": labels}

    def close(self) -> None:
        """Bring the index file up to date if the record changed, and close the record."""
        if self._faces_changed or self._index.unsaved:
            try:
                self.save_index()
            except sqlite3.OperationalError as error:  # a read-only store: the next reader rebuilds it
                logger.warning("%s: index not saved (%s)", self.path, error)
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def faces(self, *, split: str | None = None, labelled: bool = False, primary: bool = False,
              descriptor: str | None = None) -> FaceRecords:
        """Faces of the current images (those a file points at) with their labels, ordered by face id.

        Parameters
        ----------
        descriptor : return the features of this descriptor, which must be part of the store's
            (same flip setting, a subset of its blocks), or "emb", the identity embedding, which
            every store holds; default: the store's own.
        split : only faces of images with this split label.
        labelled : only faces of images with an age or a gender label (either may be missing:
            FG-NET has no genders, LFW no ages).
        primary : only the largest face of each image (face_index 0), the one a label describes.
        """
        query = """
            SELECT f.id, f.sha256, (SELECT MIN(path) FROM files WHERE files.sha256 = f.sha256) AS path, f.face_index,
                   f.embedding, f.features, f.score, f.method, l.age, l.gender, l.race, l.person, l.split,
                   f.box, f.landmarks
            FROM faces f LEFT JOIN labels l ON l.sha256 = f.sha256 WHERE path IS NOT NULL"""
        parameters: list = []
        if split is not None:
            query += " AND l.split = ?"
            parameters.append(split)
        if labelled:
            query += " AND (l.age IS NOT NULL OR l.gender IS NOT NULL)"
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

        stored = unpack_faces(columns[13], columns[14], columns[4], columns[5], dim=self.dim, feature_dim=self.feature_dim)
        features, embedding = stored.features, stored.embedding
        return FaceRecords(
            face_id=column(0, np.int64, -1),
            sha256=column(1, object, ""),
            path=column(2, object, ""),
            face_index=column(3, np.int64, -1),
            box=stored.box.copy(),
            landmarks=stored.landmarks.copy(),
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

    def search(self, queries: np.ndarray, k: int = 10, *, among=None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar stored faces (cosine) to each query: (similarities, face ids), each (n, k).

        among : only these face ids (e.g. the labelled faces); missing neighbours have id -1.
        """
        return self.search_index.search(queries, k, among=among)

    def range_search(self, queries: np.ndarray, threshold: float, *, among=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored face with cosine >= `threshold` to each query, as FAISS gives them:
        (limits (n + 1,), similarities, face ids); the hits of query i are ``limits[i]:limits[i + 1]``.

        among : only these face ids.
        """
        return self.search_index.range_search(queries, threshold, among=among)

    def summary(self) -> dict:
        """Counts of what the store holds: current images (those a file points at), their faces
        and labels per split, files by status and reason, and the images no file points at any
        more (``stale_images``, left out of everything else; see `prune`). ``index_faces``
        counts every face in the index, those of stale images too."""
        one = lambda query: self._db.execute(query).fetchone()[0]  # noqa: E731
        # the stale images, listed once (a temporary table of this connection): every count leaves them out
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS stale (sha256 TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.stale")
        self._db.execute(f"INSERT INTO temp.stale SELECT sha256 FROM images WHERE NOT {CURRENT}")
        current = "sha256 NOT IN temp.stale"
        index = self.index
        return {
            "path": str(self.path),
            "model_sha256": self.model_sha256,
            "descriptor": self.descriptor,
            "images": one(f"SELECT COUNT(*) FROM images WHERE {current}"),
            "images_with_faces": one(f"SELECT COUNT(*) FROM images WHERE n_faces > 0 AND {current}"),
            "faces": one(f"SELECT COUNT(*) FROM faces WHERE {current}"),
            "stale_images": one("SELECT COUNT(*) FROM temp.stale"),
            "index_faces": int(index.ntotal),
            "index": f"{describe(index)}, setting {self.index_kind}",
            "files": dict(self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status")),
            "errors_by_kind": dict(self._db.execute("SELECT kind, COUNT(*) FROM files WHERE status = 'error' GROUP BY kind")),
            "faces_by_method": dict(self._db.execute(f"SELECT method, COUNT(*) FROM faces WHERE {current} GROUP BY method")),
            "labelled_images_by_split": {
                (split or "none"): count
                for split, count in self._db.execute(
                    f"SELECT split, COUNT(*) FROM labels WHERE sha256 IN (SELECT sha256 FROM images) AND {current} "
                    "GROUP BY split")
            },
            **{f"{name}_by_split": {
                (split or "none"): count
                for split, count in self._db.execute(
                    "SELECT l.split, COUNT(*) FROM faces f JOIN labels l ON l.sha256 = f.sha256 "
                    f"WHERE f.face_index = 0 AND {known} AND f.{current} GROUP BY l.split")
            } for name, known in (("labelled_faces", "(l.age IS NOT NULL OR l.gender IS NOT NULL)"),
                                  ("faces_with_age", "l.age IS NOT NULL"), ("faces_with_gender", "l.gender IS NOT NULL"))},
        }

    def images_by_face_count(self) -> dict[int, int]:
        """Current images (those a file points at) per number of faces found in them: {faces: images}."""
        return dict(self._db.execute(
            f"SELECT n_faces, COUNT(*) FROM images WHERE {CURRENT} GROUP BY n_faces ORDER BY n_faces").fetchall())

    def duplicate_files(self) -> tuple[int, int]:
        """Exact copies among the recorded files: (contents held by two or more files, files holding them)."""
        return tuple(self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM files WHERE sha256 IS NOT NULL "
            "GROUP BY sha256 HAVING n > 1)").fetchone())

    def files(self) -> list[tuple[str, str, str | None]]:
        """(path, status, error kind or None) of every recorded file, by path."""
        return self._db.execute("SELECT path, status, kind FROM files ORDER BY path").fetchall()

    def errors(self) -> list[tuple[str, str, str]]:
        """(path, kind, reason) of every file that could not be embedded."""
        return self._db.execute("SELECT path, kind, reason FROM files WHERE status = 'error' ORDER BY path").fetchall()
