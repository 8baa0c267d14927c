"""`embed`: turn folders of face photos into an embedding store, resumably."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from agestimate.errors import ImageLoadError, LabelError
from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR
from agestimate.faces.encoder import FaceEncoder
from agestimate.io.images import FileBytes
from agestimate.io.labels import FaceLabel, label_reader
from agestimate.io.sources import expand_sources
from agestimate.runtime.registry import REGISTRY
from agestimate.store.store import EmbeddingStore

logger = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    """What one `embed` run did. `errors`, `label_problems` and `label_conflicts` list (path,
    reason); `labelled` counts the files whose label was read and applied to their content,
    stored before or now; `ignored` lists folder entries that are not images (videos too),
    `unmatched` the glob patterns that matched nothing."""

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
    label_conflicts: list = field(default_factory=list)
    labelled: int = 0
    ignored: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)
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
            "labelled": self.labelled,
            "label_problems": len(self.label_problems),
            "label_conflicts": len(self.label_conflicts),
            "ignored_not_images": len(self.ignored),
            "unmatched_patterns": len(self.unmatched),
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.images_per_second, 2),
            "faces_per_second": round(self.faces_per_second, 2),
            "runtime": self.runtime,
        }


def _describe(label: FaceLabel) -> str:
    values = {"age": label.age, "gender": label.gender, "race": label.race, "person": label.person, "split": label.split}
    return ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in values.items() if value is not None) or "no values"


class StoreRecorder:
    """What became of each file of an `embed` run, recorded in the store (file row, label), in
    the summary and on the progress bar. Shared by the local engine and the Ray engine
    (`agestimate.apps.distributed.embed`), so both keep the same record."""

    def __init__(self, db: EmbeddingStore, summary: EmbedSummary, *, labels=None, total: int, show_progress: bool = False):
        self.db, self.summary, self.labels = db, summary, labels
        self.read_label = label_reader(labels) if labels is not None else None
        self.progress = tqdm(total=total, disable=not show_progress, unit="img", desc="embed", dynamic_ncols=True)

    def label_of(self, path: Path) -> FaceLabel | None:
        if self.read_label is None:
            return None
        try:
            label = self.read_label(path)
        except LabelError as error:
            self.summary.label_problems.append((str(path), str(error)))
            return None
        self.summary.labelled += 1
        return label

    def conflict(self, path: Path, label: FaceLabel, replaced: FaceLabel | None) -> None:
        if replaced is not None:
            self.summary.label_conflicts.append(
                (str(path), f"{path}: label ({_describe(label)}) replaces ({_describe(replaced)}) of the same content"))

    def new_file(self, path: Path) -> os.stat_result | None:
        """The file's stat if it needs work; None if it was processed before with the same size and
        modification time (its label applied to what was stored), or cannot be read (recorded)."""
        try:
            stat = path.stat()
        except OSError as error:
            self.unreadable(path, error)
            return None
        seen = self.db.file_status(path, stat.st_size, stat.st_mtime_ns)
        if seen is None:
            return stat
        status, sha256 = seen
        self.summary.already_failed += status == "error"
        self.summary.already_stored += status != "error"
        label = self.label_of(path) if status != "error" else None
        if label is not None:  # labels given now apply to what was stored before
            self.conflict(path, label, self.db.set_label(sha256, label, source=str(self.labels)))
        self.progress.update()
        return None

    def settle(self, path: Path, stat, sha256: str, status: str) -> None:
        label = self.label_of(path)
        self.conflict(path, label, self.db.add_file(path, stat.st_size, stat.st_mtime_ns, sha256, status, label=label,
                                                    label_source=str(self.labels)))
        self.progress.update()

    def unreadable(self, path: Path, error: OSError) -> None:
        failure = ImageLoadError.unreadable(str(path), error)
        self.fail(path, None, None, failure.kind, failure.reason)

    def fail(self, path: Path, stat, sha256: str | None, kind: str, reason: str) -> None:
        self.db.add_file(path, stat and stat.st_size, stat and stat.st_mtime_ns, sha256, "error", kind=kind, reason=reason)
        self.summary.errors_by_kind[kind] += 1
        self.summary.errors.append((str(path), reason))
        self.progress.update()

    def image(self, encoded, sha256: str, files: list[tuple[Path, os.stat_result]]) -> None:
        """Store one encoded image and settle the files that hold its content; an image stored
        already (by another process, or a copy encoded earlier in this run) is not stored twice."""
        summary = self.summary
        if encoded.error is not None:
            for path, stat in files:
                self.fail(path, stat, sha256, encoded.error.kind, encoded.error.reason)
            return
        if not self.db.add_image(sha256, encoded.width, encoded.height, encoded.faces, encoded.embeddings, encoded.features):
            summary.already_stored += len(files)
        else:
            summary.faces += len(encoded.faces)
            summary.faces_by_method.update(face.method for face in encoded.faces)
            if encoded.faces:
                summary.embedded += 1
            else:
                summary.no_face += 1
            summary.already_stored += len(files) - 1
        for path, stat in files:
            self.settle(path, stat, sha256, "embedded" if encoded.faces else "no_face")

    def close(self) -> None:
        self.progress.close()

    def __enter__(self) -> StoreRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()



@contextlib.contextmanager
def recording(sources, store, *, labels, descriptor, index, show_progress):
    """What every `embed` engine starts with: the image files of `sources`, a summary, the store
    (created if needed) and the `StoreRecorder` writing into it; yields (paths, summary, db, record)."""
    summary = EmbedSummary()
    found = expand_sources(sources, recursive=True)
    paths, summary.ignored, summary.unmatched = found.images, found.ignored + found.videos, found.unmatched
    summary.files = len(paths)
    with EmbeddingStore(store, model_sha256=REGISTRY["recognizer"].sha256, descriptor=descriptor, create=True,
                        index=index) as db, StoreRecorder(db, summary, labels=labels, total=len(paths),
                                                          show_progress=show_progress) as record:
        yield paths, summary, db, record


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
    recorded with their reason and the run goes on. Labels are applied to every file read,
    whether its content is new or was stored before; a label that differs from the one its
    content had replaces it and is listed in `label_conflicts`. A file whose content changed
    points at its new content from now on (see `agestimate.store.store`).

    Parameters
    ----------
    sources : image files, folders (walked recursively) and glob patterns (see
        `agestimate.io.sources.expand_sources`); videos in folders are not embedded.
    store : store folder, created if needed.
    labels : "utkface" or "fgnet" (labels from file names), or a CSV with a `path` column.
    crops : inputs are tight face crops (see `FaceEncoder`).
    descriptor : features stored beside each embedding (see `agestimate.faces.descriptors`).
    backend, precision, providers, threads : what runs the models (see `FaceEncoder`); the
        summary's `runtime` says what did.
    index : the store's search index: "auto", "flat" or "ivf" (see `agestimate.store.index`;
        None: keep the store's choice, "auto" for a new store).
    """
    started = time.perf_counter()
    with recording(sources, store, labels=labels, descriptor=descriptor, index=index,
                   show_progress=show_progress) as (paths, summary, db, record):
        candidates = [(path, stat) for path in paths if (stat := record.new_file(path)) is not None]
        known = db.stored_images() if candidates else {}  # sha256 -> faces of the images stored before this run
        deferred: queue.SimpleQueue = queue.SimpleQueue()  # files settled without encoding, recorded in this thread
        in_flight: dict[str, tuple[str, os.stat_result]] = {}  # path -> (sha256, stat) at the encoder
        seen: set[str] = set()  # contents sent to the encoder

        def contents():
            """Each file with new content, read once: hashed here and decoded from the same bytes by
            the encoder. Runs in the encoder's feeder thread; files with content stored before, copies
            of content sent already and unreadable files go to `deferred` (the store is this thread's)."""
            for path, stat in candidates:
                try:
                    data = path.read_bytes()
                except OSError as error:
                    deferred.put(("unreadable", path, stat, error))
                    continue
                sha256 = hashlib.sha256(data).hexdigest()
                if sha256 in known:
                    deferred.put(("stored", path, stat, sha256))
                elif sha256 in seen:
                    deferred.put(("copy", path, stat, sha256))
                else:
                    seen.add(sha256)
                    in_flight[str(path)] = (sha256, stat)
                    yield FileBytes(str(path), data)

        copies: dict[str, list] = {}  # sha256 at the encoder -> [(path, stat)] of other files with that content
        recorded: dict[str, object] = {}  # sha256 -> the error or the number of faces of images recorded in this run

        def settle_deferred() -> None:
            while True:
                try:
                    what, path, stat, value = deferred.get_nowait()
                except queue.Empty:
                    return
                if what == "unreadable":
                    record.unreadable(path, value)
                elif what == "stored":
                    summary.already_stored += 1
                    record.settle(path, stat, value, "embedded" if known[value] else "no_face")
                elif value not in recorded:  # a copy of content still at the encoder
                    copies.setdefault(value, []).append((path, stat))
                elif isinstance(recorded[value], int):  # a copy of content recorded already
                    summary.already_stored += 1
                    record.settle(path, stat, value, "embedded" if recorded[value] else "no_face")
                else:  # a copy of content that failed
                    record.fail(path, stat, value, recorded[value].kind, recorded[value].reason)

        sources = contents()
        first = next(sources, None)  # in this thread: with nothing new, the models are not even loaded
        settle_deferred()
        encoder = None if first is None else FaceEncoder(
            det_size=det_size, det_thresh=det_thresh, max_faces=max_faces, crops=crops, backend=backend,
            precision=precision, providers=providers, threads=threads, descriptor=descriptor,
        )
        summary.runtime = encoder.runtime.as_dict() if encoder else None
        encoded_images = [] if encoder is None else encoder.encode_batch(itertools.chain([first], sources),
                                                                         batch_size=batch_size)
        for encoded in encoded_images:
            settle_deferred()
            sha256, stat = in_flight.pop(encoded.source)
            record.image(encoded, sha256, [(Path(encoded.source), stat)] + copies.pop(sha256, []))
            recorded[sha256] = encoded.error if encoded.error is not None else len(encoded.faces)
        settle_deferred()
    summary.seconds = time.perf_counter() - started
    return summary
