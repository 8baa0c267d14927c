"""Scoring and embedding on Ray (Ray Data batch inference), from a laptop's local Ray to a cluster.

Image paths -> Ray Data blocks -> a pool of actors, each holding one loaded model -> rows back
to the driver, which writes them: prediction rows through `PredictionWriter` (the files of the
local `agestimate predict`), encoded faces into the store through `StoreRecorder` (the record
of the local `agestimate embed`). The actors wrap the same `Estimator` and `FaceEncoder` as the
local path; nothing below them knows it runs on Ray.

Resources: each actor asks Ray for `cpus_per_actor` CPUs (default 1) and runs its models with as
many threads; where the cluster has GPUs, each actor asks for one and runs ONNX Runtime with
CUDA. The number of actors defaults to one per GPU, else to one per CPU. `score_files` and `embed`
hand the actors paths held in memory, so they take every CPU; `score_dataset` and
`embed_dataset` take any dataset, and by default leave one CPU to its read tasks (a pool
holding every CPU starves the reads of a `ray.data.read_*` dataset, and the job hangs).

Paths must be readable where the actors run (a local folder on one machine, shared storage on a
cluster); a custom model folder is read by the driver and shipped to the actors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from agestimate.errors import AgestimateError, ImageLoadError
from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR
from agestimate.heads.calibration import DEFAULT_LEVEL
from agestimate.io.images import describe_source
from agestimate.store.codec import pack_faces, unpack_faces

logger = logging.getLogger(__name__)

MAX_BLOCKS = 10_000  # input paths are cut into at most this many Ray Data blocks (one task each)


# -- Ray itself ----------------------------------------------------------------------------
def _ray():
    try:
        import ray
    except ImportError as error:
        raise AgestimateError(f"the Ray engine needs the ray extra: pip install 'agestimate[ray]' ({error})") from error
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the Ray this process is connected to, or connect: to `address` ("auto", "ray://host:10001",
    ...), else as `ray.init()` does (RAY_ADDRESS, else the Ray that `ray start` started on this
    machine, else a new local Ray). Disconnect at the end only if connected here."""
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise AgestimateError(f"cannot connect to Ray at {address}: {error}") from error
    try:
        yield
    finally:
        ray.shutdown()


def actor_resources(actors: int | None = None, cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None, *,
                    spare_cpus: float = 0) -> dict:
    """How many actors, and what each asks Ray for, on the cluster this process is connected to.

    gpus_per_actor None: one GPU per actor where the cluster has GPUs, else none. actors None:
    one per GPU (`gpus_per_actor` each), else as many as the CPUs hold once `spare_cpus` are set
    aside, at least one.
    """
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    resources = _ray().cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1 if gpus else 0
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else int((resources.get("CPU", 1) - spare_cpus) // cpus_per_actor)
    return {"actors": max(1, actors), "num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}


def paths_dataset(paths: Iterable[str | Path], *, batch_size: int = 32):
    """A Ray Data dataset with one column, `path`, cut into blocks of at least `batch_size` rows."""
    import pyarrow as pa

    paths = [str(path) for path in paths]
    rows = max(batch_size, math.ceil(len(paths) / MAX_BLOCKS))
    blocks = [pa.table({"path": pa.array(paths[i:i + rows], pa.string())}) for i in range(0, len(paths), rows)]
    return _ray().data.from_arrow(blocks or [pa.table({"path": pa.array([], pa.string())})])


def read_path_list(source: str | Path) -> list[str]:
    """The `path` column of a Parquet file or folder: a list of image paths (on shared storage,
    for a cluster). Any location pyarrow reads works (local, s3://, gs://, hdfs://)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(source, columns=["path"]).column("path").to_pylist()
    except (OSError, KeyError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise AgestimateError(f"{source}: not a readable Parquet list of image paths with a 'path' column ({error})") from error


def _map_options(resources: dict, batch_size: int) -> dict:
    ray = _ray()
    return dict(batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=resources["actors"]),
                num_cpus=resources["num_cpus"], num_gpus=resources["num_gpus"] or None)


def _threads(threads: int | None, cpus_per_actor: float) -> int:
    return threads or max(1, round(cpus_per_actor))


def _sources(batch: dict) -> tuple[list, list[str]]:
    """The image sources of a batch (the `bytes` column, else the `path` column) and their names."""
    if "bytes" in batch:
        sources = list(batch["bytes"])
        names = [str(p) for p in batch["path"]] if "path" in batch else [describe_source(s) for s in sources]
    elif "path" in batch:
        names = [str(p) for p in batch["path"]]
        sources = names
    else:
        raise TypeError(f"expected a dataset with a 'path' or a 'bytes' column, got the columns {sorted(batch)}")
    return sources, names


# -- scoring -------------------------------------------------------------------------------
class ImageScorer:
    """A Ray Data callable: an `Estimator` loaded once per actor; a batch of images -> prediction rows.

    Parameters
    ----------
    model : a shipped model's name (see `estimator.SHIPPED_MODELS`) or None for the default.
    model_files : {file name: bytes} of a model folder, written to a temporary folder and loaded
        (how a model trained on the driver's machine reaches the actors).
    batch_size : faces per recogniser call.
    interval : level of the age intervals (columns age_low, age_high).
    options : the other `Estimator` options (backend, precision, threads, max_faces, crops, ...).
    """

    def __init__(self, model: str | None = None, model_files: dict[str, bytes] | None = None, *, batch_size: int = 32,
                 interval: float = DEFAULT_LEVEL, **options):
        from agestimate.estimator import Estimator

        self.batch_size, self.interval = batch_size, interval
        if model_files:
            with tempfile.TemporaryDirectory(prefix="agestimate-model-") as folder:
                for name, data in model_files.items():
                    (Path(folder) / name).write_bytes(data)
                self.estimator = Estimator(folder, **options)
        else:
            self.estimator = Estimator(model, **options)

    def __call__(self, batch: dict):
        from agestimate.io.predictions import rows_to_table

        sources, names = _sources(batch)
        rows = []
        results = self.estimator.predict_batch(sources, batch_size=self.batch_size, interval=self.interval)
        for name, result in zip(names, results):
            rows += dataclasses.replace(result, source=name).summary()
        return rows_to_table(rows)


def _model_arguments(model) -> dict:
    """`ImageScorer` arguments for `model`: a shipped name, or the files of a folder (checked here, on the driver)."""
    from agestimate.estimator import SHIPPED_MODELS, model_folder
    from agestimate.heads.model import AgeGenderHeads

    if model is None or str(model) in SHIPPED_MODELS:
        return {"model": None if model is None else str(model)}
    folder = model_folder(model)
    heads = AgeGenderHeads.load(folder)  # a missing or broken model fails here, before any actor starts
    names = ["model.json", heads.card.get("onnx_file", "heads.onnx")]
    return {"model_files": {name: (folder / name).read_bytes() for name in names}}


def score_dataset(dataset, *, model=None, batch_size: int = 32, actors: int | None = None, cpus_per_actor: float = 1.0,
                  gpus_per_actor: float | None = None, threads: int | None = None, max_faces: int | None = None,
                  crops: bool = False, interval: float = DEFAULT_LEVEL, backend: str | None = None,
                  precision: str = "auto"):
    """Prediction rows of every image of a Ray Data dataset, as a lazy Ray Data dataset.

    Parameters
    ----------
    dataset : `ray.data.Dataset` with a `path` column (image files readable by every actor) or a
        `bytes` column (encoded images, e.g. ``ray.data.read_binary_files(..., include_paths=True)``;
        a `path` column then names them).
    model : model folder or shipped model name (default: "default").
    batch_size : images per actor call, and faces per recogniser call.
    actors, cpus_per_actor, gpus_per_actor : the actor pool (see `actor_resources`; by default one
        actor per GPU, else per CPU but one, which is left to the dataset's read tasks).
    threads : inference threads per actor (default: `cpus_per_actor`, rounded).
    max_faces, crops, backend, precision : as for `Estimator`.
    interval : level of the age intervals (columns age_low, age_high).

    Returns
    -------
    A dataset with the columns of `predictions.PREDICTION_COLUMNS`: one row per face, one row with
    the reason for each image without a face or with an error; rows of one image are contiguous,
    images in no particular order.
    """
    resources = actor_resources(actors, cpus_per_actor, gpus_per_actor, spare_cpus=1)
    constructor = dict(_model_arguments(model), batch_size=batch_size, interval=interval, max_faces=max_faces,
                       crops=crops, backend=backend, precision=precision, threads=_threads(threads, cpus_per_actor))
    return dataset.map_batches(ImageScorer, fn_constructor_kwargs=constructor, **_map_options(resources, batch_size))


def expand_path_lists(sources: Iterable[str | Path]) -> list[str]:
    """Image paths, once each, in order: a source with the suffix .parquet is a list of image
    paths (see `read_path_list`), any other an image path."""
    return list(dict.fromkeys(path for source in sources for path in
                              (read_path_list(source) if str(source).endswith(".parquet") else [str(source)])))


def score_files(paths: list[str], *, model=None, batch_size: int = 32, ray_address: str | None = None,
                actors: int | None = None, cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None,
                threads: int | None = None, max_faces: int | None = None, crops: bool = False,
                interval: float = DEFAULT_LEVEL, backend: str | None = None,
                precision: str = "auto") -> Iterator[tuple[int, list[dict]]]:
    """Score image files on Ray: (actors, the prediction rows of one image) per image, in no
    particular order, each image once even when Ray retries the work of a failed actor. What is
    written, resumed and counted is `agestimate.apps.run.predict`'s (``engine="ray"``)."""
    from agestimate.io.predictions import table_rows

    dropped = 0
    with ray_session(ray_address):
        resources = actor_resources(actors, cpus_per_actor, gpus_per_actor)
        rows = score_dataset(paths_dataset(paths, batch_size=batch_size), model=model, batch_size=batch_size,
                             actors=resources["actors"], cpus_per_actor=cpus_per_actor,
                             gpus_per_actor=resources["num_gpus"], threads=threads, max_faces=max_faces, crops=crops,
                             interval=interval, backend=backend, precision=precision)
        done: set[str] = set()
        for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
            images: dict[str, list[dict]] = {}  # the rows of one image are contiguous
            for row in table_rows(table):
                images.setdefault(row["file"], []).append(row)
            for name, image_rows in images.items():
                if name in done:
                    dropped += len(image_rows)
                    continue
                done.add(name)
                yield resources["actors"], image_rows
    if dropped:
        logger.warning("%d rows of images scored twice (work retried after a failure) were dropped", dropped)


# -- embedding -----------------------------------------------------------------------------
_EMBEDDING_COLUMNS = ["path", "sha256", "width", "height", "error_kind", "error_reason", "boxes", "landmarks", "scores",
                      "methods", "embeddings", "features", "runtime"]


class ImageEmbedder:
    """A Ray Data callable: a `FaceEncoder` loaded once per actor; a batch of image paths -> one
    row per image with its content hash, faces, embeddings and descriptor features (as bytes)."""

    def __init__(self, *, batch_size: int = 64, **options):
        from agestimate.faces.encoder import FaceEncoder

        self.batch_size = batch_size
        self.encoder = FaceEncoder(**options)
        self.runtime = json.dumps(self.encoder.runtime.as_dict())

    def __call__(self, batch: dict):
        import pyarrow as pa

        rows, readable = [], []
        for path in (str(p) for p in batch["path"]):
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                failure = ImageLoadError.unreadable(path, error)
                rows.append({"path": path, "error_kind": failure.kind, "error_reason": failure.reason})
                continue
            readable.append((path, data))
        encoded_images = self.encoder.encode_batch([data for _, data in readable], batch_size=self.batch_size)
        for (path, data), encoded in zip(readable, encoded_images):
            row = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "runtime": self.runtime}
            if encoded.error is not None:
                row.update(error_kind=encoded.error.kind, error_reason=encoded.error.reason)
            else:
                row.update(width=encoded.width, height=encoded.height,
                           **pack_faces(encoded.faces, encoded.embeddings, encoded.features).as_dict())
            rows.append(row)
        return pa.Table.from_pylist([{name: row.get(name) for name in _EMBEDDING_COLUMNS} for row in rows],
                                    schema=_embedding_schema())


def _embedding_schema():
    import pyarrow as pa

    kinds = {"width": pa.int64(), "height": pa.int64(), **{name: pa.binary() for name in
             ("boxes", "landmarks", "scores", "embeddings", "features")}}
    return pa.schema([(name, kinds.get(name, pa.string())) for name in _EMBEDDING_COLUMNS])


def _encoded_image(row: dict, dim: int, feature_dim: int):
    """The `EncodedImage` an `ImageEmbedder` row describes."""
    from agestimate.faces.encoder import EncodedImage, FaceDetection

    if row["error_kind"] is not None:
        return EncodedImage(source=row["path"], error=ImageLoadError(row["path"], row["error_reason"], kind=row["error_kind"]))
    stored = unpack_faces(row["boxes"], row["landmarks"], row["embeddings"], row["features"], dim=dim,
                          feature_dim=feature_dim, scores=row["scores"], methods=row["methods"])
    faces = [FaceDetection(box=stored.box[i], landmarks=stored.landmarks[i], score=float(stored.score[i]),
                           method=stored.method[i]) for i in range(len(stored.method))]
    return EncodedImage(source=row["path"], faces=faces, width=row["width"], height=row["height"],
                        embeddings=stored.embedding, features=stored.features)


def embed_dataset(dataset, *, batch_size: int = 64, actors: int | None = None, cpus_per_actor: float = 1.0,
                  gpus_per_actor: float | None = None, threads: int | None = None, **encoder_options):
    """Faces, embeddings and features of every image of a dataset with a `path` column, one row
    per image (see `ImageEmbedder`), as a lazy Ray Data dataset. `encoder_options` go to `FaceEncoder`."""
    resources = actor_resources(actors, cpus_per_actor, gpus_per_actor, spare_cpus=1)
    constructor = dict(encoder_options, batch_size=batch_size, threads=_threads(threads, cpus_per_actor))
    return dataset.map_batches(ImageEmbedder, fn_constructor_kwargs=constructor, **_map_options(resources, batch_size))


def embed(sources: Iterable[str | Path], *, store: str | Path, labels: str | Path | None = None, batch_size: int = 64,
          crops: bool = False, max_faces: int | None = None, det_size: int = 640, det_thresh: float = 0.5,
          descriptor: str = DEFAULT_DESCRIPTOR, backend: str | None = None, precision: str = "auto",
          threads: int | None = None, show_progress: bool = False, index: str | None = None,
          ray_address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1.0,
          gpus_per_actor: float | None = None):
    """`agestimate.store.embedding.embed` with the faces computed by a pool of Ray actors.

    The driver keeps the store and records each image as its row arrives, through the same
    `StoreRecorder` as the local engine: keyed by content (the actors hash the bytes they read),
    resumable after a crash (files recorded with the same path, size and modification time are
    not sent again; an image stored before its file was recorded is not stored twice), labels
    applied. Copies of one image within a run are encoded on the workers and stored once.
    """
    from agestimate.store.embedding import recording

    started = time.perf_counter()
    with recording(sources, store, labels=labels, descriptor=descriptor, index=index,
                   show_progress=show_progress) as (paths, summary, db, record):
        pending = {}  # path -> (Path, stat) of files sent to the actors
        for path in paths:
            stat = record.new_file(path)
            if stat is not None:
                pending[str(path)] = (path, stat)
        if pending:
            with ray_session(ray_address):
                resources = actor_resources(actors, cpus_per_actor, gpus_per_actor)
                rows = embed_dataset(paths_dataset(list(pending), batch_size=batch_size), batch_size=batch_size,
                                     actors=resources["actors"], cpus_per_actor=cpus_per_actor,
                                     gpus_per_actor=resources["num_gpus"], threads=threads, det_size=det_size,
                                     det_thresh=det_thresh, max_faces=max_faces, crops=crops, backend=backend,
                                     precision=precision, descriptor=descriptor)
                for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for row in table.to_pylist():
                        if row["path"] not in pending:  # rows of work Ray retried after a failure
                            continue
                        path, stat = pending.pop(row["path"])
                        if summary.runtime is None and row["runtime"]:
                            summary.runtime = {**json.loads(row["runtime"]), "engine": "ray", "actors": resources["actors"]}
                        record.image(_encoded_image(row, db.dim, db.feature_dim), row["sha256"], [(path, stat)])
    summary.seconds = time.perf_counter() - started
    return summary
