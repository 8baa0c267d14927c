"""The floor under the pipeline, and where the rest of the time goes.

`model_floor`: after a warm-up run, `Estimator.predict_batch` is timed (the pipeline on the default
backend, median of `repeats` runs); one more run records every input the detector and the
recogniser sessions receive (pre-decoded, pre-aligned, the same sizes and batches), and the inputs
are replayed through the same sessions, serially, nothing else running. Their summed time (median
of `repeats`) is what the runtime alone needs for these images.

`profile`: py-spy samples a `predict_batch` run over the same images (all threads, idle waits
included) and the samples are sorted into the pipeline's stages by the functions on the stack.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class _RecordingSession:
    """A session (see `agestimate.runtime.sessions`) that keeps every input it runs on."""

    def __init__(self, session, calls: list):
        self.session, self.calls = session, calls

    def run(self, output_names, feeds, *args):
        self.calls.append((self.session, output_names, feeds))
        return self.session.run(output_names, feeds, *args)

    def __getattr__(self, name):
        return getattr(self.session, name)


def model_floor(paths: list[Path], repeats: int = 3) -> dict:
    from agestimate.estimator import Estimator

    estimator = Estimator()
    list(estimator.predict_batch(paths))  # warm-up: SCRFD makes a session per input size on first use
    pipeline_seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        list(estimator.predict_batch(paths))
        pipeline_seconds.append(time.perf_counter() - began)
    detector, describer = estimator.encoder.detector, estimator.encoder.describer
    detector_calls, recogniser_calls = [], []
    pool_session = detector._session_for_input_size
    detector._session_for_input_size = lambda size: _RecordingSession(pool_session(size), detector_calls)
    describer.session = _RecordingSession(describer.session, recogniser_calls)
    list(estimator.predict_batch(paths))

    def replay(calls):
        began = time.perf_counter()
        for session, output_names, feeds in calls:
            session.run(output_names, feeds)
        return time.perf_counter() - began

    replay(detector_calls[:10]), replay(recogniser_calls[:2])  # warm-up
    detector_seconds = float(np.median([replay(detector_calls) for _ in range(repeats)]))
    recogniser_seconds = float(np.median([replay(recogniser_calls) for _ in range(repeats)]))
    crops = sum(len(feeds[describer.input_name]) for _, _, feeds in recogniser_calls)
    return {"images": len(paths), "detector_runs": len(detector_calls), "recogniser_runs": len(recogniser_calls),
            "recogniser_crops": crops, "detector_seconds": detector_seconds,
            "recogniser_seconds": recogniser_seconds,
            "runtime": estimator.encoder.runtime.as_dict(),
            "floor_images_per_s": len(paths) / (detector_seconds + recogniser_seconds),
            "pipeline_images_per_s": len(paths) / float(np.median(pipeline_seconds))}


# Stages by the functions on a sampled stack, the first that matches wins.
STAGES = [
    ("recogniser: runtime", ("__call__ (agestimate/faces/descriptors.py", "run (agestimate/runtime/sessions.py")),
    ("recogniser: blob, flip, pooling", ("__call__ (agestimate/faces/descriptors.py",)),
    ("detector: runtime", ("forward (agestimate/runtime/scrfd.py", "run (agestimate/runtime/sessions.py")),
    ("detector: letterbox, decoding, NMS", ("detect (insightface/model_zoo/scrfd.py",)),
    ("alignment (norm_crop)", ("norm_crop",)),
    ("decoding the image", ("load_image",)),
    ("heads", ("predict (agestimate/heads/model.py",)),
    ("waiting for the worker thread", ("prefetched (agestimate/faces/prefetch.py",)),
]

PROFILED = """
import sys
from pathlib import Path
from agestimate.estimator import Estimator
paths = [Path(line.strip()) for line in open(sys.argv[1]) if line.strip()]
estimator = Estimator()
list(estimator.predict_batch(paths[:10]))
def timed():
    list(estimator.predict_batch(paths))
timed()
"""


def stage_of(stack: str) -> str:
    for name, needles in STAGES:
        if all(needle in stack for needle in needles):
            return name
    if stack.endswith("_worker (concurrent/futures/thread.py:81)"):
        return "idle, waiting for work"
    return "other Python"


def profile(paths: list[Path], rate: int = 100) -> dict:
    """Share of py-spy samples per stage, for the main thread and the worker thread."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as scratch:
        listing, out = Path(scratch) / "paths.txt", Path(scratch) / "profile.txt"
        listing.write_text("\n".join(str(p) for p in paths))
        subprocess.run([py_spy, "record", "--format", "raw", "--threads", "--idle", "--rate", str(rate), "--output",
                        str(out), "--", sys.executable, "-c", PROFILED, str(listing)], check=True, capture_output=True)
        lines = out.read_text().splitlines()
    samples = collections.defaultdict(collections.Counter)
    for line in lines:  # "thread (TID): NAME;frame;frame COUNT", frames outermost first
        stack, _, count = line.rpartition(" ")
        name = stack.partition(": ")[2].partition(";")[0]
        if name == "MainThread" and "timed (<string>" in stack:
            samples["main thread"][stage_of(stack)] += int(count)
        elif name.startswith("agestimate-prepare"):
            samples["worker thread"][stage_of(stack)] += int(count)
    return {thread: {stage: count / sum(counts.values()) for stage, count in counts.most_common()}
            for thread, counts in samples.items()}
