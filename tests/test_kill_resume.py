"""A real `agestimate embed` process is killed (SIGKILL) at random moments and resumed."""

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from agestimate.store import EmbeddingStore

from conftest import FIXTURES

pytestmark = pytest.mark.slow


def distinct_faces(folder, count):
    sources = sorted((FIXTURES / "utkface").iterdir())
    for i in range(count):
        image = Image.open(sources[i % len(sources)])
        if (i // len(sources)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(0.8 + 0.1 * (i // (2 * len(sources))))
        image.save(folder / f"face_{i:03d}.jpg", quality=92)


def stored_images(store):
    try:
        with sqlite3.connect(store / "store.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killed_embed_resumes_without_loss_or_duplicates(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    distinct_faces(folder, 80)
    store = tmp_path / "store"
    command = [str(Path(sys.executable).parent / "agestimate"), "embed", str(folder), "--store", str(store),
               "--batch-size", "1", "--threads", "1"]
    # kill as soon as the store holds a random number of images, plus a random delay
    targets = sorted(random.Random(7).sample(range(1, 75), 10))
    for target in targets:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while stored_images(store) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(target).uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert target <= stored_images(store) < 80
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    with EmbeddingStore(store) as db:
        summary = db.summary()
        ids, vectors = db._all_embeddings()
        assert np.array_equal(np.asarray(db.index.index.reconstruct_n(0, db.index.ntotal)), vectors)
        assert np.array_equal(faiss_ids(db.index), ids)
    assert summary["images"] == 80 and summary["files"] == {"embedded": 80}
    assert summary["faces"] == summary["index_faces"] >= 80
    with sqlite3.connect(store / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(DISTINCT path) FROM files").fetchone()[0] == 80
        assert db.execute("SELECT COUNT(*) FROM faces WHERE sha256 NOT IN (SELECT sha256 FROM images)").fetchone()[0] == 0


def faiss_ids(index):
    import faiss

    return faiss.vector_to_array(index.id_map)
