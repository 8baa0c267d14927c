"""The store's hot paths, the code of another checkout (the old) against this one (the new), in one run.

    python benchmarks/store_paths.py --old /work/wt-index-old --store /work/stores/utk \\
        --images ../shared/data/utkface/images --count 300 --out benchmarks/results/store_paths.json

Each side runs in a subprocess of this interpreter with its checkout first on PYTHONPATH (the
same installed packages, FAISS and models), on copies of the store made under ``--work``:
- neighbours: what `agestimate predict IMG --neighbours STORE` does per image: one
  `StoreNeighbours` over the store's labelled faces, called once per image with that image's
  face (stored faces as the queries), ms per call;
- range: range searches (cosine >= ``--threshold``) of 100 stored faces each on an IVF copy of
  the store, ms per call: the first call apart (both sides tune nprobe there) from the next ones;
- embed: `agestimate embed` of the first ``--count`` images of a folder into a new store (s).
FAISS searches with ``--faiss-threads`` threads (1). The sides alternate (``--repeats`` rounds) and the best of each is kept; ratios are old / new.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("neighbours", "range", "embed")


def worker(part: str, args) -> dict:
    """One part timed with whatever `agestimate` is first on the path."""
    import numpy as np

    import agestimate
    from agestimate.store.store import EmbeddingStore

    result = {"agestimate": str(Path(agestimate.__file__).parent)}
    if part != "embed" and args.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)  # on a busy machine, OpenMP threads that wait for a core swamp the rest
    if part == "neighbours":
        from agestimate.store.neighbours import StoreNeighbours

        with EmbeddingStore(args.store) as store, StoreNeighbours(store) as search:
            queries = store.faces(primary=True, descriptor="emb").embedding[:: max(1, len(search) // args.queries)][:args.queries]
            search(queries[:1], k=5)  # the index read and checked: what every later image finds ready
            started = time.perf_counter()
            for query in queries:
                found = search(query[None], k=5)
            result.update(calls=len(queries), ms_per_call=1000 * (time.perf_counter() - started) / len(queries),
                          labelled=len(search), last=[n.face_id for n in found[0]])
    elif part == "range":
        with EmbeddingStore(args.store) as store:
            vectors = store.faces(descriptor="emb").embedding
            store.index  # noqa: B018 (read before timing)
            times, hits = [], []
            for call in range(args.range_calls):
                queries = vectors[call * 100:(call + 1) * 100]
                started = time.perf_counter()
                limits, _, _ = store.range_search(queries, args.threshold)
                times.append(time.perf_counter() - started)
                hits.append(int(limits[-1]))
            result.update(first_call_ms=1000 * times[0], later_ms_per_call=1000 * float(np.mean(times[1:])),
                          calls=len(times), hits=hits)
    elif part == "embed":
        from agestimate.store.embedding import embed

        folder = Path(args.work) / "embed_images"
        target = Path(tempfile.mkdtemp(dir=args.work)) / "store"
        started = time.perf_counter()
        summary = embed([folder], store=target, threads=args.threads)
        result.update(seconds=time.perf_counter() - started, images=summary.embedded + summary.no_face,
                      faces=summary.faces)
        shutil.rmtree(target.parent)
    return result


def run_side(checkout: Path, part: str, args, store: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--worker", part, "--store", str(store), "--work", str(args.work),
               "--queries", str(args.queries), "--threshold", str(args.threshold), "--range-calls", str(args.range_calls),
               "--threads", str(args.threads), "--faiss-threads", str(args.faiss_threads)]
    finished = subprocess.run(command, env=environment, cwd=args.work, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def prepare(args) -> dict[str, Path]:
    """Copies of the store (flat as it is, and IVF), and the folder of images to embed."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    flat, ivf = work / "store_flat", work / "store_ivf"
    if not flat.exists():
        shutil.copytree(args.store, flat)
    if not ivf.exists():
        shutil.copytree(args.store, ivf)
        code = ("import sys; from agestimate.store.store import EmbeddingStore\n"
                "with EmbeddingStore(sys.argv[1], index='ivf') as s: s.index")
        subprocess.run([sys.executable, "-c", code, str(ivf)], check=True)  # rebuilt as IVF and saved
    images = work / "embed_images"
    if args.images is not None and not images.exists():
        images.mkdir()
        for path in sorted(Path(args.images).iterdir())[:args.count]:
            (images / path.name).symlink_to(path.resolve())
    return {"neighbours": flat, "range": ivf, "embed": flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help="the checkout to compare with (e.g. a git worktree of the old commit)")
    parser.add_argument("--store", type=Path, required=True, help="a labelled store (copied, never written)")
    parser.add_argument("--images", type=Path, help="a folder of images for the embed part")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--queries", type=int, default=200, help="neighbours: images (calls)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--range-calls", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--faiss-threads", type=int, default=1, help="FAISS's OpenMP threads in the search parts (0: its default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "agestimate-store-paths")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    args.work = args.work.resolve()
    stores = prepare(args)
    new = Path(__file__).resolve().parents[1]
    key = {"neighbours": "ms_per_call", "range": "later_ms_per_call", "embed": "seconds"}
    results = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
               "command": " ".join(sys.argv), "parts": {}}
    for part in args.parts.split(","):
        if part == "embed" and args.images is None:
            continue
        sides: dict[str, list] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for side, checkout in (("old", args.old.resolve()), ("new", new)):
                sides[side].append(run_side(checkout, part, args, stores[part]))
        best = {side: min(runs, key=lambda run: run[key[part]]) for side, runs in sides.items()}
        entry = {"old": best["old"], "new": best["new"], "ratio_old_over_new": best["old"][key[part]] / best["new"][key[part]]}
        if part == "range":
            entry["first_call_ratio"] = best["old"]["first_call_ms"] / best["new"]["first_call_ms"]
            entry["same_hits"] = best["old"]["hits"] == best["new"]["hits"]
        if part == "neighbours":
            entry["same_neighbours"] = best["old"]["last"] == best["new"]["last"]
        results["parts"][part] = entry
        print(part, json.dumps(entry), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
