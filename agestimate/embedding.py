"""`embed`: turn folders of face photos into an embedding store, resumably."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import LabelError
from .descriptors import DEFAULT_DESCRIPTOR
from .faces import FaceEncoder
from .labels import label_reader
from .models import REGISTRY
from .store import EmbeddingStore

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


@dataclass
class EmbedSummary:
    """What one `embed` run did. `errors` and `label_problems` list (path, reason)."""

    files: int = 0
    embedded: int = 0
    already_stored: int = 0
    already_failed: int = 0
    no_face: int = 0
    faces: int = 0
    faces_by_method: Counter = field(default_factory=Counter)
    errors_by_kind: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    label_problems: list = field(default_factory=list)
    label_conflicts: int = 0
    ignored: list = field(default_factory=list)
    seconds: float = 0.0
    runtime: dict | None = None  # what ran the models (None: nothing new, no model loaded)

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return (self.embedded + self.no_face) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "embedded": self.embedded,
            "no_face": self.no_face,
            "already_stored": self.already_stored,
            "already_failed": self.already_failed,
            "errors": len(self.errors),
            "errors_by_kind": dict(self.errors_by_kind),
            "faces": self.faces,
            "faces_by_method": dict(self.faces_by_method),
            "label_problems": len(self.label_problems),
            "label_conflicts": self.label_conflicts,
            "ignored_not_images": len(self.ignored),
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.images_per_second, 2),
            "faces_per_second": round(self.faces_per_second, 2),
            "runtime": self.runtime,
        }


def find_images(sources: Iterable[str | Path], ignored: list | None = None) -> Iterator[Path]:
    """Image files named by `sources`: files as given, folders walked recursively in sorted order.

    Folder entries without an image suffix are not yielded but appended to `ignored`.
    Symbolic links to folders are not followed (no loops).
    """
    for source in sources:
        source = Path(source)
        if not source.is_dir():
            yield source
            continue
        for root, folders, names in os.walk(source):
            folders.sort()
            for name in sorted(names):
                path = Path(root) / name
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield path
                elif ignored is not None:
                    ignored.append(path)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


class StoreRecorder:
    """Records what became of each file of an `embed` run: the store's file record, its label,
    the summary's counts and the progress bar. Shared by the local and the Ray engine."""

    def __init__(self, db: EmbeddingStore, summary: EmbedSummary, *, read_label=None, labels=None, total: int,
                 show_progress: bool = False):
        self.db, self.summary, self.read_label, self.labels = db, summary, read_label, labels
        self.progress = tqdm(total=total, disable=not show_progress, unit="img", desc="embed", dynamic_ncols=True)

    def new_file(self, path: Path) -> os.stat_result | None:
        """The file's stat if it still needs work; None if it was processed before (same path, size
        and modification time) or cannot be read (recorded as an error)."""
        try:
            stat = path.stat()
        except OSError as error:
            self.fail(path, None, None, "unreadable", f"cannot read file ({error.strerror or error})")
            return None
        status = self.db.file_status(path, stat.st_size, stat.st_mtime_ns)
        if status is None:
            return stat
        self.summary.already_failed += status == "error"
        self.summary.already_stored += status != "error"
        self.progress.update()
        return None

    def settle(self, path: Path, stat, sha256: str, status: str) -> None:
        self.db.add_file(path, stat.st_size, stat.st_mtime_ns, sha256, status)
        if self.read_label is not None:
            try:
                if not self.db.set_label(sha256, self.read_label(path), source=str(self.labels)):
                    self.summary.label_conflicts += 1
            except LabelError as error:
                self.summary.label_problems.append((str(path), str(error)))
        self.progress.update()

    def fail(self, path: Path, stat, sha256: str | None, kind: str, reason: str) -> None:
        self.db.add_file(path, stat and stat.st_size, stat and stat.st_mtime_ns, sha256, "error", kind=kind, reason=reason)
        self.summary.errors_by_kind[kind] += 1
        self.summary.errors.append((str(path), reason))
        self.progress.update()

    def image(self, encoded, sha256: str, files: list[tuple[Path, os.stat_result]]) -> None:
        """Store one encoded image (unless its content is stored already) and settle the files that hold it."""
        if encoded.error is not None:
            for path, stat in files:
                self.fail(path, stat, sha256, encoded.error.kind, encoded.error.reason)
            return
        stored_faces = self.db.image_faces(sha256)
        if stored_faces is None:
            self.db.add_image(sha256, encoded.width, encoded.height, encoded.faces, encoded.embeddings, encoded.features)
            self.summary.faces += len(encoded.faces)
            self.summary.faces_by_method.update(face.method for face in encoded.faces)
            self.summary.embedded += bool(encoded.faces)
            self.summary.no_face += not encoded.faces
            stored_faces, files_before = len(encoded.faces), 1
        else:  # a copy encoded in the same run (the Ray engine hashes on the workers)
            files_before = 0
        self.summary.already_stored += len(files) - files_before
        for path, stat in files:
            self.settle(path, stat, sha256, "embedded" if stored_faces else "no_face")

    def close(self) -> None:
        self.progress.close()

    def __enter__(self) -> StoreRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def embed(
    sources: Iterable[str | Path],
    *,
    store: str | Path,
    labels: str | Path | None = None,
    batch_size: int = 64,
    crops: bool = False,
    max_faces: int | None = None,
    det_size: int = 640,
    det_thresh: float = 0.5,
    descriptor: str = DEFAULT_DESCRIPTOR,
    backend: str | None = None,
    precision: str = "auto",
    providers=None,
    threads: int | None = None,
    show_progress: bool = False,
    index: str | None = None,
) -> EmbedSummary:
    """Detect, align and embed every face in `sources` into the store at `store`.

    Resumable: files already processed (same path, size and modification time) and images
    already stored (same content) are not embedded again. Files that cannot be read are
    recorded with their reason and the run goes on.

    Parameters
    ----------
    sources : image files and folders (walked recursively).
    store : store folder, created if needed.
    labels : "utkface" or "fgnet" (labels from file names), or a CSV with a `path` column.
    crops : inputs are tight face crops (see `FaceEncoder`).
    descriptor : features stored beside each embedding (see `agestimate.descriptors`).
    backend, precision, providers, threads : what runs the models (see `FaceEncoder`); the
        summary's `runtime` says what did.
    index : the store's search index: "auto", "flat" or "ivf" (see `agestimate.search_index`;
        None: keep the store's choice, "auto" for a new store).
    """
    started = time.perf_counter()
    summary = EmbedSummary()
    read_label = label_reader(labels) if labels is not None else None
    paths = list(find_images(sources, summary.ignored))
    summary.files = len(paths)
    with EmbeddingStore(store, model_sha256=REGISTRY["recognizer"].sha256, descriptor=descriptor, create=True,
                        index=index) as db, StoreRecorder(db, summary, read_label=read_label, labels=labels, total=len(paths),
                                                          show_progress=show_progress) as record:
        in_flight: dict[str, tuple[str, os.stat_result]] = {}  # path -> (sha256, stat) at the encoder
        copies: dict[str, list] = {}  # sha256 at the encoder -> [(path, stat)] of other files with that content

        def to_encode() -> Iterator[Path]:
            """Paths whose content is new; the others are settled here, in order."""
            for path in paths:
                stat = record.new_file(path)
                if stat is None:
                    continue
                try:
                    sha256 = _file_sha256(path)
                except OSError as error:
                    record.fail(path, None, None, "unreadable", f"cannot read file ({error.strerror or error})")
                    continue
                stored_faces = db.image_faces(sha256)
                if stored_faces is not None:
                    summary.already_stored += 1
                    record.settle(path, stat, sha256, "embedded" if stored_faces else "no_face")
                elif sha256 in copies:
                    copies[sha256].append((path, stat))
                else:
                    copies[sha256] = []
                    in_flight[str(path)] = (sha256, stat)
                    yield path

        new_paths = to_encode()
        first = next(new_paths, None)  # with nothing new, the models are not even loaded
        encoder = None if first is None else FaceEncoder(
            det_size=det_size, det_thresh=det_thresh, max_faces=max_faces, crops=crops, backend=backend,
            precision=precision, providers=providers, threads=threads, descriptor=descriptor,
        )
        summary.runtime = encoder.runtime.as_dict() if encoder else None
        encoded_images = [] if encoder is None else encoder.encode_batch(itertools.chain([first], new_paths), batch_size=batch_size)
        for encoded in encoded_images:
            sha256, stat = in_flight.pop(encoded.source)
            record.image(encoded, sha256, [(Path(encoded.source), stat)] + copies.pop(sha256))
    summary.seconds = time.perf_counter() - started
    return summary
