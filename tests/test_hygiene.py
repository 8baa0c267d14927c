"""Duplicate, leakage and outlier logic on a small synthetic store with known answers."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from agestimate.cli.main import cli
from agestimate.faces import FaceDetection
from agestimate.hygiene import hygiene_report, label_outliers, leaking_test_faces, near_duplicate_pairs
from agestimate.labels import FaceLabel
from agestimate.store import EmbeddingStore, FaceRecords

from conftest import FIXTURES, random_unit_vectors


def test_near_duplicate_pairs_are_exactly_the_close_ones():
    vectors = random_unit_vectors(50, 64)
    vectors[10] = vectors[3] + 0.01  # near copies of face 3 and 7
    vectors[20] = vectors[7] * 0.99 + 0.02 * vectors[8]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    first, second, similarity = near_duplicate_pairs(vectors, threshold=0.95)
    assert sorted(zip(first.tolist(), second.tolist())) == [(3, 10), (7, 20)]
    assert (similarity >= 0.95).all()


@pytest.fixture
def synthetic_store(tmp_path):
    """12 faces: 9 train, 3 test. Test face 9 copies train face 0; train faces 1 and 2 copy each
    other (not leakage); face 5's age label (80) is far from its look-alikes' (20)."""
    path = tmp_path / "store"
    embeddings = random_unit_vectors(12, 512)
    embeddings[9] = embeddings[0]
    embeddings[2] = embeddings[1]
    features = np.tile(random_unit_vectors(1, 2048, seed=3), (12, 1)) + 0.01 * random_unit_vectors(12, 2048, seed=4)
    ages = [20] * 12
    ages[5] = 80
    images = sorted((FIXTURES / "utkface").iterdir())
    with EmbeddingStore(path, model_sha256="ab" * 32, descriptor="grid509+flip", create=True) as store:
        for i in range(12):
            sha = f"{i:064x}"
            face = FaceDetection(np.array([0, 0, 10, 10], np.float32), np.zeros((5, 2), np.float32), 0.9, "detected")
            store.add_image(sha, 200, 200, [face], embeddings[i:i + 1], features[i:i + 1])
            copy = tmp_path / f"face{i}.jpg"  # each image has a file of its own (a shared path points at one)
            copy.write_bytes(images[i % len(images)].read_bytes())
            store.add_file(copy, 1, 1, sha, "embedded")
            store.set_label(sha, FaceLabel(age=ages[i], gender=i % 2, split="test" if i >= 9 else "train"), source="test")
    return path


def test_leakage_and_outliers_on_the_synthetic_store(synthetic_store, tmp_path):
    database = EmbeddingStore(synthetic_store)
    records = database.faces(labelled=True, primary=True)
    database.close()
    assert np.flatnonzero(leaking_test_faces(records, threshold=0.99)).tolist() == [9]
    outliers, medians = label_outliers(records, neighbours=5, min_gap=15)
    assert outliers.tolist() == [5] and medians.tolist() == [20]
    report = hygiene_report(synthetic_store, tmp_path / "report", threshold=0.99)
    assert report["near_duplicate_pairs"] == 2
    assert report["near_duplicate_pairs_across_train_and_val_test"] == 1
    assert report["test_faces_with_a_train_near_duplicate"] == 1 and report["label_outliers"] == 1
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "report.md", "hygiene.json", "age_histogram.png", "leakage_pairs.png", "label_outliers.png"}


def test_info_report_from_the_cli(synthetic_store, tmp_path):
    result = CliRunner().invoke(cli, ["info", "--store", str(synthetic_store), "--report", str(tmp_path / "r"),
                                      "--threshold", "0.99", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["near_duplicate_pairs_across_train_and_val_test"] == 1


def test_label_outliers_on_a_store_smaller_than_the_neighbourhood():
    """4 faces, 10 neighbours asked for: FAISS pads its answer with -1, which is no face."""
    n = 4
    features = np.tile(random_unit_vectors(1, 64), (n, 1)) + 0.05 * random_unit_vectors(n, 64, seed=1)
    records = FaceRecords(
        face_id=np.arange(n), sha256=np.array([""] * n, object), path=np.array([""] * n, object),
        face_index=np.zeros(n, np.int64), box=np.zeros((n, 4), np.float32), landmarks=np.zeros((n, 5, 2), np.float32),
        embedding=random_unit_vectors(n), features=features.astype(np.float32), score=np.ones(n, np.float32),
        method=np.array(["detected"] * n, object), age=np.array([20, 21, 22, 80], np.float32),
        gender=np.zeros(n, np.int64), race=np.zeros(n, np.int64), person=np.array([""] * n, object),
        split=np.array(["train"] * n, object))
    outliers, medians = label_outliers(records, neighbours=10, min_gap=15)
    assert outliers.tolist() == [3] and medians.tolist() == [21]
    assert label_outliers(records.subset(np.arange(n) < 1), neighbours=10)[0].tolist() == []  # no neighbour at all
