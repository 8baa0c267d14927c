"""Duplicate, leakage and outlier logic on a small synthetic store with known answers."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agestimate.cli.main import cli
from agestimate.evaluation.hygiene import hygiene_report, label_outliers, leaking_test_faces, near_duplicate_pairs
from agestimate.faces.encoder import FaceDetection
from agestimate.io.labels import FaceLabel
from agestimate.store.store import EmbeddingStore

from conftest import FIXTURES, random_unit_vectors


def make_store(path, embeddings, ages, splits):
    """A store of one labelled face per image with these identity embeddings (n, 512)."""
    images = sorted((FIXTURES / "utkface").iterdir())
    features = np.tile(random_unit_vectors(1, 2048, seed=3), (len(ages), 1)) + 0.01 * random_unit_vectors(len(ages), 2048, seed=4)
    with EmbeddingStore(path, model_sha256="ab" * 32, descriptor="grid509+flip", create=True) as store:
        for i, (age, split) in enumerate(zip(ages, splits)):
            sha = f"{i:064x}"
            face = FaceDetection(np.array([0, 0, 10, 10], np.float32), np.zeros((5, 2), np.float32), 0.9, "detected")
            store.add_image(sha, 200, 200, [face], embeddings[i:i + 1], features[i:i + 1])
            copy = Path(path).parent / f"face{i}.jpg"  # each image has a file of its own (a shared path points at one)
            copy.write_bytes(images[i % len(images)].read_bytes())
            store.add_file(copy, 1, 1, sha, "embedded")
            store.set_label(sha, FaceLabel(age=age, gender=i % 2, split=split), source="test")
    return path


def test_near_duplicate_pairs_are_exactly_the_close_ones(tmp_path):
    vectors = random_unit_vectors(50, 512)
    vectors[10] = vectors[3] + 0.001  # near copies of face 3 and 7
    vectors[20] = vectors[7] * 0.99 + 0.02 * vectors[8]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with EmbeddingStore(make_store(tmp_path / "store", vectors, [20] * 50, ["train"] * 50)) as store:
        records = store.faces(labelled=True, primary=True)
        first, second, similarity = near_duplicate_pairs(store, records, threshold=0.95)
        assert sorted(zip(first.tolist(), second.tolist())) == [(3, 10), (7, 20)]
        assert (similarity >= 0.95).all()
        # only the faces asked about are searched: without face 10, face 3 has no near-duplicate
        first, second, _ = near_duplicate_pairs(store, records.subset(np.arange(50) != 10), threshold=0.95)
        assert len(first) == 1


@pytest.fixture
def synthetic_store(tmp_path):
    """12 faces: 9 train, 3 test. Test face 9 copies train face 0; train faces 1 and 2 copy each
    other (not leakage); face 5's age label (80) is far from its look-alikes' (20)."""
    embeddings = random_unit_vectors(12, 512)
    embeddings[9] = embeddings[0]
    embeddings[2] = embeddings[1]
    ages = [20] * 12
    ages[5] = 80
    return make_store(tmp_path / "store", embeddings, ages, ["test" if i >= 9 else "train" for i in range(12)])


def test_leakage_and_outliers_on_the_synthetic_store(synthetic_store, tmp_path):
    with EmbeddingStore(synthetic_store) as database:
        records = database.faces(labelled=True, primary=True)
        assert np.flatnonzero(leaking_test_faces(database, records, threshold=0.99)).tolist() == [9]
        outliers, medians = label_outliers(database, records, neighbours=5, min_gap=15)
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


def test_label_outliers_on_a_store_smaller_than_the_neighbourhood(tmp_path):
    """4 faces, 10 neighbours asked for: the search pads its answer with -1, which is no face."""
    path = make_store(tmp_path / "store", random_unit_vectors(4, 512), [20, 21, 22, 80], ["train"] * 4)
    with EmbeddingStore(path) as store:
        records = store.faces(labelled=True, primary=True)
        outliers, medians = label_outliers(store, records, neighbours=10, min_gap=15)
        assert outliers.tolist() == [3] and medians.tolist() == [21]
        assert label_outliers(store, records.subset(np.arange(4) < 1), neighbours=10)[0].tolist() == []  # no neighbour at all
