"""The Ray engine against the local one, what the driver can absorb, and the IVF index of a store.

    python benchmarks/distributed.py --data ../shared/data --store utk.store --count 2000 \\
        --out benchmarks/results/distributed.json

Parts (``--parts scoring,embed,driver,index``; all by default):
- scoring: `agestimate predict FOLDER --out F.csv` against the same command with `--engine ray`
  (a local Ray on this machine, started by the command) over the first `count` images of the
  UTKFace test split, each layout of actors x threads, interleaved; then the job alone on a Ray
  that is already up (as on a cluster), with its startup (actors importing and loading the
  model) apart from its steady throughput per actor;
- embed: `agestimate embed` local against `--engine ray` into fresh stores, `embed_count` images;
- driver: rows/s the driver writes to Parquet, and images/s it records into a store (the
  ceilings of one driver, whatever the number of workers);
- index: on the store, the exact index against IVF: build time, recall@10 and queries/s, for
  stored faces as queries (each left out of its own results) and for test-split faces against
  an index of the train and val splits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from end_to_end import agestimate_command, data_sets, linked_folder

TEN_MILLION = 10_000_000


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


@contextlib.contextmanager
def running_ray(cpus: int):
    """A Ray head on this machine (`ray start --head --block`), as a cluster would have; stopped
    afterwards by signalling its own process group (never `ray stop`, which stops every Ray)."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", f"--num-cpus={cpus}", "--port=6391", "--include-dashboard=false",
                             "--block"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        join = [sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='ERROR'); ray.shutdown()"]
        while subprocess.run(join, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not start")
            time.sleep(1)
        yield
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            # `ray start` left the address of this head behind; later `ray.init()` calls would try to join it
            address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
            if address_file.exists() and address_file.read_text().strip().endswith(":6391"):
                address_file.unlink()


def part_scoring(paths: list[Path], layouts: list[tuple[int, int]], repeats: int) -> dict:
    """Whole commands; the Ray ones start their own local Ray, except the last, which joins a running one."""
    cpus = os.cpu_count()
    runs = {"local": []} | {f"ray {a}x{t}": [] for a, t in layouts} | {f"ray {cpus}x1, Ray running": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = linked_folder(paths, scratch)
        for _ in range(repeats):
            for name in runs:
                out = Path(scratch) / f"{name.replace(' ', '_').replace(',', '')}.csv"
                out.unlink(missing_ok=True)
                arguments = ["predict", folder, "--out", out]
                if name != "local":
                    actors, threads = name.split()[1].rstrip(",").split("x")
                    arguments += ["--engine", "ray", "--actors", actors, "--threads", threads]
                if name.endswith("Ray running"):
                    with running_ray(cpus):
                        runs[name].append(timed(agestimate_command(*arguments, "--ray-address", "auto")))
                else:
                    runs[name].append(timed(agestimate_command(*arguments)))
                rows = out.read_text().count("\n") - 1
        cli = {name: {"seconds": min(s), "images_per_second": len(paths) / min(s)} for name, s in runs.items()}
        for name, run in cli.items():
            run["of_local"] = cli["local"]["seconds"] / run["seconds"]
        job = _job_alone(paths, layouts, cpus)
    return {"images": len(paths), "rows": rows, "repeats": repeats, "cli": cli, "job_on_running_ray": job}


def _job_alone(paths: list[Path], layouts: list[tuple[int, int]], cpus: int) -> dict:
    """The local loop and each Ray layout in this process, Ray started beforehand; the startup of a
    pool (timed on one image per actor) and the rate after it."""
    import ray

    from agestimate.apps.distributed import paths_dataset, score_dataset
    from agestimate.estimator import Estimator

    began = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    result = {"ray_init_seconds": time.perf_counter() - began}
    began = time.perf_counter()
    estimator = Estimator()
    rows = sum(len(result.summary()) for result in estimator.predict_batch(paths, batch_size=32))
    result["local"] = {"seconds": time.perf_counter() - began, "rows": rows}
    for actors, threads in layouts:
        began = time.perf_counter()  # a pool of the same actors scoring one image each: their startup
        list(score_dataset(paths_dataset(paths[:actors], batch_size=1), actors=actors, threads=threads, batch_size=1)
             .iter_batches(batch_size=None))
        startup = time.perf_counter() - began
        began = time.perf_counter()
        rows = sum(t.num_rows for t in score_dataset(paths_dataset(paths), actors=actors, threads=threads)
                   .iter_batches(batch_size=None, batch_format="pyarrow"))
        total = time.perf_counter() - began
        steady = len(paths) / (total - startup)
        result[f"ray {actors}x{threads}"] = {
            "seconds": total, "rows": rows, "of_local": result["local"]["seconds"] / total, "startup_seconds": startup,
            "images_per_second_after_startup": steady, "images_per_second_per_actor": steady / actors}
    ray.shutdown()
    return result


def part_embed(paths: list[Path]) -> dict:
    result = {"images": len(paths)}
    with tempfile.TemporaryDirectory() as scratch:
        folder = linked_folder(paths, scratch)
        for name, extra in (("local", []), ("ray", ["--engine", "ray"])):
            store = Path(scratch) / f"{name}.store"
            result[name] = {"seconds": timed(agestimate_command("embed", folder, "--store", store, *extra))}
            result[name]["rerun_seconds"] = timed(agestimate_command("embed", folder, "--store", store, *extra))
    result["ray"]["of_local"] = result["local"]["seconds"] / result["ray"]["seconds"]
    return result


def part_driver(rows: int = 200_000, images: int = 5_000) -> dict:
    from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR, Descriptor
    from agestimate.faces.encoder import EncodedImage, FaceDetection
    from agestimate.io.predictions import PredictionWriter
    from agestimate.store.embedding import EmbedSummary, StoreRecorder
    from agestimate.store.store import EmbeddingStore

    row = {"file": "/archive/2024/06/IMG_123456.jpg", "face": 0, "x1": 10.5, "y1": 20.5, "x2": 110.5, "y2": 140.5,
           "age": 31.2345, "age_spread": 6.1234, "age_group": "25-32", "gender": "female", "gender_probability": 0.9876,
           "confidence": 0.6543, "detection_score": 0.8765, "detection_method": "detected"}
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        with PredictionWriter(Path(scratch) / "rows.parquet") as writer:
            for i in range(0, rows, 256):
                writer.write([{**row, "file": f"/archive/{j}.jpg"} for j in range(i, i + 256)])
        result["parquet_rows_per_second"] = rows / (time.perf_counter() - began)
        feature_dim = Descriptor.parse(DEFAULT_DESCRIPTOR).dim
        rng = np.random.default_rng(0)
        face = FaceDetection(box=np.array([1, 2, 3, 4], np.float32), landmarks=np.ones((5, 2), np.float32), score=0.9,
                             method="detected")
        stat = os.stat(scratch)
        with EmbeddingStore(Path(scratch) / "store", model_sha256="ab" * 32, descriptor=DEFAULT_DESCRIPTOR,
                            create=True) as db, StoreRecorder(db, EmbedSummary(), total=images) as record:
            encoded = [EncodedImage(source=str(i), faces=[face], embeddings=rng.normal(size=(1, 512)).astype(np.float32),
                                    features=rng.normal(size=(1, feature_dim)).astype(np.float32), width=200, height=200)
                       for i in range(images)]
            began = time.perf_counter()
            for i, image in enumerate(encoded):
                record.image(image, f"{i:064x}", [(Path(f"/archive/{i}.jpg"), stat)])
            result["store_images_per_second"] = images / (time.perf_counter() - began)
        result["descriptor"] = DEFAULT_DESCRIPTOR
    return result


def part_index(store: Path, queries: int = 1000, k: int = 10) -> dict:
    import faiss

    from agestimate.store.index import build_index, describe, recall_at_k
    from agestimate.store.store import EmbeddingStore

    with EmbeddingStore(store) as db:  # read only: the index is rebuilt in memory, never saved here
        faces = db.faces()
    rng = np.random.default_rng(0)
    result = {"faces": len(faces.face_id)}

    def compare(vectors, query_vectors, leave_self_out):
        began = time.perf_counter()
        flat = build_index(vectors, kind="flat")
        flat_seconds = time.perf_counter() - began
        began = time.perf_counter()
        ivf = build_index(vectors, kind="ivf")
        ivf_seconds = time.perf_counter() - began
        extra = int(leave_self_out)
        row = {"vectors": len(vectors), "queries": len(query_vectors), "ivf": describe(ivf),
               "build_seconds": {"flat": flat_seconds, "ivf": ivf_seconds}}
        found = {}
        faiss.omp_set_num_threads(1)  # one thread: the 2 cores are shared, and batched flat search is BLAS
        for name, index in (("flat", flat), ("ivf", ivf)):
            began = time.perf_counter()
            _, found[name] = index.search(query_vectors, k + extra)
            row[f"queries_per_second_{name}"] = len(query_vectors) / (time.perf_counter() - began)
        if leave_self_out:
            own = query_rows
            found = {name: np.array([[i for i in row if i != me][:k] for row, me in zip(ids.tolist(), own.tolist())])
                     for name, ids in found.items()}
        row["recall_at_10"] = recall_at_k(found["flat"], found["ivf"])
        row["ivf_speed_of_flat"] = row["queries_per_second_ivf"] / row["queries_per_second_flat"]
        return row

    vectors = faces.embedding
    query_rows = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    result["stored_faces_as_queries"] = compare(vectors, vectors[query_rows], True)
    indexed = np.isin(faces.split, ["train", "val"])
    result["test_split_against_train_and_val"] = compare(vectors[indexed], vectors[faces.split == "test"], False)
    result["near_duplicates"] = near_duplicates(vectors)
    return result


def near_duplicates(vectors: np.ndarray, threshold: float = 0.9) -> dict:
    """All pairs with cosine >= threshold (the hygiene report's query), exact against IVF at the
    nprobe calibrated for nearest neighbours, at the one `tune_for_range` picks, and at a few
    small ones: pairs found and seconds, one thread."""
    import faiss

    from agestimate.store.index import build_index, tune_for_range

    faiss.omp_set_num_threads(1)

    def pairs(index):
        began = time.perf_counter()
        limits, _, neighbours = index.range_search(vectors, threshold)
        rows = np.repeat(np.arange(len(vectors)), np.diff(limits.astype(np.int64)))
        keep = neighbours > rows
        return set(zip(rows[keep].tolist(), neighbours[keep].tolist())), time.perf_counter() - began

    exact, exact_seconds = pairs(build_index(vectors, kind="flat"))
    ivf = build_index(vectors, kind="ivf")
    inner = faiss.downcast_index(ivf.index)
    result = {"threshold": threshold, "pairs": len(exact), "flat_seconds": exact_seconds, "knn_nprobe": inner.nprobe}
    began = time.perf_counter()
    tune_for_range(ivf, vectors, threshold)  # what the hygiene report does
    tuned, tuning_seconds = inner.nprobe, time.perf_counter() - began
    for nprobe in sorted({1, 2, 4, 8, tuned, result["knn_nprobe"]}):
        inner.nprobe = nprobe
        found, seconds = pairs(ivf)
        result[f"ivf_nprobe_{nprobe}"] = {"recall": len(found & exact) / max(1, len(exact)), "seconds": seconds}
    result["range_nprobe"], result["range_tuning_seconds"] = tuned, tuning_seconds
    return result


def projection(scoring: dict, driver: dict) -> dict:
    """Hours for 10 million images on N one-CPU workers, from the measured steady rate per actor;
    one driver's Parquet rate bounds it whatever N is."""
    job = scoring["job_on_running_ray"]
    one_cpu = next(run for name, run in job.items() if name.startswith("ray ") and name.endswith("x1"))
    per_actor, startup = one_cpu["images_per_second_per_actor"], one_cpu["startup_seconds"]
    rows_per_image = scoring["rows"] / scoring["images"]
    ceiling = driver["parquet_rows_per_second"] / rows_per_image
    table = {}
    for workers in (2, 16, 100, 1000):
        rate = min(workers * per_actor, ceiling)
        table[workers] = {"images_per_second": rate, "hours": (TEN_MILLION / rate + startup) / 3600}
    return {"per_actor_images_per_second": per_actor, "startup_seconds": startup,
            "driver_ceiling_images_per_second": ceiling, "workers": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--store", type=Path, help="A store of UTKFace (the index part); read, never written.")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--embed-count", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--parts", default="scoring,embed,driver,index")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    parts = args.parts.split(",")
    cpus = os.cpu_count()
    layouts = sorted({(cpus, 1), (1, cpus)})
    stamp = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {cpus} cores",
             "command": "python benchmarks/distributed.py " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")}
    previous = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    result = dict(previous)  # parts not rerun keep their last results, each with its own date and command
    if "scoring" in parts:
        paths, _ = data_sets(args.data, args.count)["utkface_test"]
        result["scoring"] = {**stamp, **part_scoring(paths, layouts, args.repeats)}
    if "embed" in parts:
        result["embed"] = {**stamp, **part_embed(data_sets(args.data, args.embed_count)["utkface_test"][0])}
    if "driver" in parts:
        result["driver"] = {**stamp, **part_driver()}
    if "scoring" in result and "driver" in result:
        result["projection"] = projection(result["scoring"], result["driver"])
    if "index" in parts and args.store:
        result["index"] = {**stamp, **part_index(args.store)}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
