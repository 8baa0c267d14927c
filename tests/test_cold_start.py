"""A fresh machine: several processes opening the models at once on an empty compiled-model cache,
then on a cache whose files were cut short (issue 26)."""

import os
import subprocess
import sys

import pytest

from agestimate.runtime.cache import cache_dir

PREDICT = """
import numpy as np, agestimate
from agestimate.runtime.registry import weights_dir
faces = agestimate.predict(weights_dir() / "players.jpg")
blank = agestimate.predict(np.full((96, 128, 3), 120, np.uint8))
print(len(faces), len(blank), [round(face.age, 2) for face in faces])
"""


def run_at_once(count: int, cache) -> list[str]:
    """The output of `count` processes started together, each predicting two images."""
    env = {**os.environ, "AGESTIMATE_CACHE": str(cache)}
    processes = [subprocess.Popen([sys.executable, "-c", PREDICT], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(count)]
    results = [process.communicate(timeout=900) for process in processes]
    for process, (_, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
    return [stdout for stdout, _ in results]


@pytest.mark.slow
def test_processes_starting_at_once_on_an_empty_cache_all_predict(tmp_path, monkeypatch):
    outputs = run_at_once(4, tmp_path)
    faces, blank, _ = outputs[0].split(" ", 2)
    assert int(faces) > 10 and blank == "0"
    assert outputs == [outputs[0]] * 4  # and all alike: no process ran a model other than the others'

    monkeypatch.setenv("AGESTIMATE_CACHE", str(tmp_path))
    blobs = sorted(cache_dir().glob("*.blob"))
    assert blobs and not list(cache_dir().glob(".*.tmp"))
    for blob in blobs:  # a disk that filled up, a machine that lost power while writing
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 3])
    assert run_at_once(2, tmp_path) == outputs[:2]
