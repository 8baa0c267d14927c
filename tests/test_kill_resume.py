"""Real `agestimate embed` processes: killed (SIGKILL) at random moments and resumed, or two
writing one store at once. Nothing is lost or stored twice, labels included."""

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

from agestimate.store.store import EmbeddingStore

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
    labels = folder / "labels.csv"
    labels.write_text("path,age,split\n" + "".join(f"face_{i:03d}.jpg,{i + 1},train\n" for i in range(count)))
    return labels


def stored_images(store):
    try:
        with sqlite3.connect(store / "store.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def embed_command(folder, store, labels):
    return [str(Path(sys.executable).parent / "agestimate"), "embed", str(folder), "--store", str(store),
            "--labels", str(labels), "--batch-size", "1", "--threads", "1"]


def assert_complete(store, count):
    """Every image once, each labelled with its own age, and an index that agrees with the record."""
    with EmbeddingStore(store) as db:
        summary = db.summary()
        ids, vectors = db.embeddings()
        assert np.array_equal(np.asarray(db.index.index.reconstruct_n(0, db.index.ntotal)), vectors)
        assert np.array_equal(faiss_ids(db.index), ids)
        labelled = db.faces(labelled=True, primary=True)
    assert summary["images"] == count and summary["files"] == {"embedded": count}
    assert summary["faces"] == summary["index_faces"] >= count
    assert sorted(labelled.age.tolist()) == list(range(1, count + 1))
    assert all(age == int(path[-7:-4]) + 1 for path, age in zip(labelled.path, labelled.age))
    with sqlite3.connect(store / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(DISTINCT path) FROM files").fetchone()[0] == count
        assert db.execute("SELECT COUNT(*) FROM faces WHERE sha256 NOT IN (SELECT sha256 FROM images)").fetchone()[0] == 0


def test_killed_embed_resumes_without_loss_or_duplicates(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    labels = distinct_faces(folder, 80)
    store = tmp_path / "store"
    command = embed_command(folder, store, labels)
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
    assert_complete(store, 80)


def test_two_embed_processes_writing_one_store(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    labels = distinct_faces(folder, 24)
    store = tmp_path / "store"
    processes = [subprocess.Popen(embed_command(folder, store, labels), cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert_complete(store, 24)


def faiss_ids(index):
    import faiss

    return faiss.vector_to_array(index.id_map)
