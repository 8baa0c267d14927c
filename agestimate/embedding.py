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
    """
    started = time.perf_counter()
    summary = EmbedSummary()
    read_label = label_reader(labels) if labels is not None else None
    paths = list(find_images(sources, summary.ignored))
    summary.files = len(paths)
    with EmbeddingStore(store, model_sha256=REGISTRY["recognizer"].sha256, descriptor=descriptor, create=True) as db, tqdm(
        total=len(paths), disable=not show_progress, unit="img", desc="embed", dynamic_ncols=True
    ) as progress:
        in_flight: dict[str, tuple[str, os.stat_result]] = {}  # path -> (sha256, stat) at the encoder
        copies: dict[str, list] = {}  # sha256 at the encoder -> [(path, stat)] of other files with that content

        def settle(path: Path, stat, sha256: str, status: str) -> None:
            db.add_file(path, stat.st_size, stat.st_mtime_ns, sha256, status)
            if read_label is not None:
                try:
                    if not db.set_label(sha256, read_label(path), source=str(labels)):
                        summary.label_conflicts += 1
                except LabelError as error:
                    summary.label_problems.append((str(path), str(error)))
            progress.update()

        def fail(path: Path, stat, sha256: str | None, kind: str, reason: str) -> None:
            db.add_file(path, stat and stat.st_size, stat and stat.st_mtime_ns, sha256, "error", kind=kind, reason=reason)
            summary.errors_by_kind[kind] += 1
            summary.errors.append((str(path), reason))
            progress.update()

        def to_encode() -> Iterator[Path]:
            """Paths whose content is new; the others are settled here, in order."""
            for path in paths:
                try:
                    stat = path.stat()
                    status = db.file_status(path, stat.st_size, stat.st_mtime_ns)
                    if status is not None:
                        summary.already_failed += status == "error"
                        summary.already_stored += status != "error"
                        progress.update()
                        continue
                    sha256 = _file_sha256(path)
                except OSError as error:
                    fail(path, None, None, "unreadable", f"cannot read file ({error.strerror or error})")
                    continue
                stored_faces = db.image_faces(sha256)
                if stored_faces is not None:
                    summary.already_stored += 1
                    settle(path, stat, sha256, "embedded" if stored_faces else "no_face")
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
            done = [(Path(encoded.source), stat)] + copies.pop(sha256)
            if encoded.error is not None:
                for path, path_stat in done:
                    fail(path, path_stat, sha256, encoded.error.kind, encoded.error.reason)
                continue
            db.add_image(sha256, encoded.width, encoded.height, encoded.faces, encoded.embeddings, encoded.features)
            summary.faces += len(encoded.faces)
            summary.faces_by_method.update(face.method for face in encoded.faces)
            if encoded.faces:
                summary.embedded += 1
            else:
                summary.no_face += 1
            summary.already_stored += len(done) - 1
            for path, path_stat in done:
                settle(path, path_stat, sha256, "embedded" if encoded.faces else "no_face")
    summary.seconds = time.perf_counter() - started
    return summary
