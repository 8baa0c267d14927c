"""Load test of `agestimate serve` on loopback: concurrent clients, good photos and bad uploads.

    python benchmarks/serve_load.py [--clients 8] [--requests 400] [--warm-up 200] [--workers 1] [--queue-size 16]

Starts `agestimate serve` on 127.0.0.1 (a free port) in a subprocess and computes the expected
faces of every photo with the library in this process. Requests are POST /v1/predict from
`clients` threads (httpx, keep-alive), cycling through the test fixtures and insightface's group
photo (22 faces) and five bad uploads (not an image, truncated, empty, over the pixel limit,
over the upload limit), as multipart and raw bodies in turn. Each item is first sent once alone
(the detector compiles once per input size), then `warm_up` requests as under load (glibc's
malloc arenas, one per thread that allocates, fill up and then stay), then `requests` measured.

Checks, exit status 1 when one fails: every photo is answered 200 with the library's faces,
every bad upload with its designed status and kind, no 5xx but the designed 503 (after which
the client waits Retry-After and sends again), and resident memory flat: the server's RSS
(all its processes, from /proc, so Linux only) after the measured requests within
`--rss-slack-mb` of its RSS before them. Prints requests/s, latency percentiles and RSS as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from end_to_end import agestimate_command

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MAX_UPLOAD_MB = 2  # the server's limit here, so the oversized upload stays small


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(*options: str, log_path: Path | None = None, timeout: float = 120.0):
    """`agestimate serve` on 127.0.0.1 in a subprocess; yields (base URL, process). Stops it after."""
    port = free_port()
    log = open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")
    # the installed command, not `python -m agestimate`: from a checkout, -m would import the source folder
    process = subprocess.Popen(agestimate_command("serve", "--host", "127.0.0.1", "--port", port, *options),
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"agestimate serve exited with {process.returncode}:\n{log.read()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"agestimate serve did not answer on {url} within {timeout} s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def resident_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (uvicorn's workers), in MB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total / 1024


# -- what is sent -------------------------------------------------------------------------------
def photos() -> list[Path]:
    """The test fixtures and insightface's group photo (22 faces)."""
    from agestimate.runtime.registry import weights_dir

    return sorted(FIXTURES.glob("*/*")) + [weights_dir() / "players.jpg"]


def bad_uploads(max_pixels: int = 40_000_000) -> dict[str, tuple[bytes, int, str]]:
    """name -> (body, expected status, expected kind)."""
    good = (FIXTURES / "fgnet" / "001A02.JPG").read_bytes()
    huge = io.BytesIO()
    side = int(max_pixels**0.5) + 100
    Image.new("L", (side, side)).save(huge, format="PNG")  # a small file, too many pixels
    return {
        "text.jpg": (b"this is not an image\n" * 20, 415, "not an image"),
        "truncated.jpg": (good[: len(good) // 3], 422, "corrupt"),
        "empty.jpg": (b"", 422, "empty"),
        "pixels.png": (huge.getvalue(), 413, "too large"),
        "oversized.jpg": (good + os.urandom(MAX_UPLOAD_MB * 1024 * 1024), 413, "upload too large"),
    }


def expected_faces(paths: list[Path]) -> dict[str, list[dict]]:
    from agestimate import Estimator

    estimator = Estimator()
    return {path.name: [face.to_dict() for face in estimator.predict(path)] for path in paths}


def same_faces(got: list[dict], expected: list[dict], *, age_tolerance=0.05, box_tolerance=0.5) -> bool:
    if len(got) != len(expected):
        return False
    return all(abs(a["age"] - b["age"]) <= age_tolerance and a["gender"] == b["gender"]
               and np.allclose(a["box"], b["box"], atol=box_tolerance) for a, b in zip(got, expected))


# -- the load -----------------------------------------------------------------------------------
def send(client: httpx.Client, url: str, name: str, body: bytes, multipart: bool) -> httpx.Response:
    if multipart:
        return client.post(url + "/v1/predict", files={"file": (name, body)})
    return client.post(url + "/v1/predict", content=body, headers={"content-type": "application/octet-stream"})


def load(url: str, pid: int, *, clients: int = 8, requests: int = 400, warm_up: int = 200,
         rss_slack_mb: float = 64.0) -> dict:
    """Run the load against the server at `url` (process `pid`): `warm_up` requests first (after
    each item once alone), then `requests` measured. The summary, with the list of failures."""
    goods = photos()
    expected = expected_faces(goods)
    bads = bad_uploads()
    items = [(path.name, path.read_bytes(), None) for path in goods] + [(name, body, (status, kind))
                                                                          for name, (body, status, kind) in bads.items()]
    failures: list[str] = []

    def check(index: int, name: str, response: httpx.Response, designed) -> None:
        if designed is None:
            if response.status_code != 200 or not same_faces(response.json()["faces"], expected[name]):
                failures.append(f"request {index} {name}: {response.status_code} {response.text[:200]}")
        elif (response.status_code, response.json().get("kind")) != designed:
            failures.append(f"request {index} {name}: expected {designed}, got {response.status_code} {response.text[:200]}")

    def drive(count: int) -> tuple[Counter, dict, float]:
        """`count` requests from `clients` threads; their statuses, latencies and seconds."""
        statuses, latencies = Counter(), {"good": [], "bad": [], "503": []}
        next_index, lock = iter(range(count)), threading.Lock()

        def client_loop() -> None:
            with httpx.Client(timeout=120) as client:
                while True:
                    with lock:
                        index = next(next_index, None)
                    if index is None:
                        return
                    name, body, designed = items[index % len(items)]
                    while True:
                        began = time.perf_counter()
                        response = send(client, url, name, body, index % 2 == 0)
                        seconds = time.perf_counter() - began
                        with lock:
                            statuses[response.status_code] += 1
                        if response.status_code != 503:
                            break
                        latencies["503"].append(seconds)
                        time.sleep(float(response.headers.get("retry-after", 1)))
                    latencies["good" if designed is None else "bad"].append(seconds)
                    check(index, name, response, designed)

        began = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses, latencies, time.perf_counter() - began

    with httpx.Client(timeout=120) as client:  # each item once alone: the detector compiles per input size
        for index, (name, body, designed) in enumerate(items):
            check(-1, name, send(client, url, name, body, index % 2 == 0), designed)
    rss_start = resident_mb(pid)
    drive(warm_up)  # glibc's malloc arenas fill up under concurrency, then stay
    rss_after_warm_up = resident_mb(pid)

    rss_samples, stop_sampling = [], threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.1):
            rss_samples.append(resident_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses, latencies, seconds = drive(requests)
    stop_sampling.set()
    sampler.join()
    rss_end = resident_mb(pid)

    unexpected_5xx = {status: n for status, n in statuses.items() if status >= 500 and status != 503}
    if unexpected_5xx:
        failures.append(f"5xx other than 503: {unexpected_5xx}")
    if rss_end - rss_after_warm_up > rss_slack_mb:
        failures.append(f"resident memory grew by {rss_end - rss_after_warm_up:.0f} MB (> {rss_slack_mb} MB)")

    def percentiles(values):
        if not values:
            return None
        p50, p90, p99 = np.percentile(np.array(values) * 1000, [50, 90, 99])
        return {"n": len(values), "p50_ms": round(p50, 1), "p90_ms": round(p90, 1), "p99_ms": round(p99, 1),
                "max_ms": round(max(values) * 1000, 1)}

    good_items = [items[i % len(items)] for i in range(requests) if items[i % len(items)][2] is None]
    return {
        "clients": clients, "requests": requests, "warm_up": warm_up, "seconds": round(seconds, 2),
        "requests_per_second": round(requests / seconds, 1),
        "faces_per_good_request": round(float(np.mean([len(expected[name]) for name, _, _ in good_items])), 2),
        "statuses": dict(sorted(statuses.items())),  # 503s counted, and the requests sent again after them
        "latency_good": percentiles(latencies["good"]), "latency_bad": percentiles(latencies["bad"]),
        "latency_503": percentiles(latencies["503"]),
        "rss_mb": {"start": round(rss_start), "after_warm_up": round(rss_after_warm_up), "end": round(rss_end),
                   "max": round(max(rss_samples, default=rss_end)), "growth": round(rss_end - rss_after_warm_up, 1)},
        "failures": failures,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm-up", type=int, default=200, help="Requests sent before the measured ones.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--rounds", type=int, default=1,
                        help="Repeat the measured requests on the same server; RSS after each round is reported.")
    parser.add_argument("--rss-slack-mb", type=float, default=64.0)
    parser.add_argument("--json", default=None, help="Also write the summary here.")
    arguments = parser.parse_args(argv)
    options = ["--workers", str(arguments.workers), "--queue-size", str(arguments.queue_size),
               "--max-upload-mb", str(MAX_UPLOAD_MB)] + (["--backend", arguments.backend] if arguments.backend else [])
    with running_server(*options) as (url, process):
        rounds = [load(url, process.pid, clients=arguments.clients, requests=arguments.requests,
                       warm_up=arguments.warm_up if index == 0 else 0, rss_slack_mb=arguments.rss_slack_mb)
                  for index in range(arguments.rounds)]
    summary = rounds[-1]
    if len(rounds) > 1:
        summary["failures"] = [failure for result in rounds for failure in result["failures"]]
        summary["rounds"] = [{"requests_per_second": result["requests_per_second"], "rss_mb": result["rss_mb"]}
                             for result in rounds]
    summary.update({"workers": arguments.workers, "queue_size": arguments.queue_size,
                    "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
                    "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()})
    text = json.dumps(summary, indent=2)
    print(text)
    if arguments.json:
        Path(arguments.json).write_text(text + "\n")
    for failure in summary["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
