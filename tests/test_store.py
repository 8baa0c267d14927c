import numpy as np
import pytest

from agestimate.errors import StoreError
from agestimate.faces import FaceDetection
from agestimate.labels import FaceLabel
from agestimate.store import INDEX, EmbeddingStore

from conftest import random_unit_vectors

MODEL = "ab" * 32
DESCRIPTOR = "emb+gap505"  # 768 features


def detection(i):
    return FaceDetection(box=np.array([i, i, i + 10, i + 10], np.float32), landmarks=np.full((5, 2), i, np.float32),
                         score=0.9, method="detected")


def fill(path, n_images=6, faces_per_image=2):
    vectors = random_unit_vectors(n_images * faces_per_image)
    features = random_unit_vectors(n_images * faces_per_image, 768, seed=1)
    with EmbeddingStore(path, model_sha256=MODEL, descriptor=DESCRIPTOR, create=True) as store:
        for i in range(n_images):
            sha = f"{i:064x}"
            rows = slice(i * faces_per_image, (i + 1) * faces_per_image)
            store.add_image(sha, 100, 80, [detection(j) for j in range(faces_per_image)], vectors[rows], features[rows])
            store.add_file(f"/data/img{i}.jpg", 10, 20, sha, "embedded")
            store.set_label(sha, FaceLabel(age=20 + i, gender=i % 2, split=["train", "val", "test"][i % 3]), source="test")
    return vectors


def test_records_round_trip_with_labels_and_search(tmp_path):
    vectors = fill(tmp_path / "s")
    store = EmbeddingStore(tmp_path / "s", model_sha256=MODEL)
    faces = store.faces()
    assert len(faces) == 12 and np.array_equal(faces.embedding, vectors)
    assert np.array_equal(faces.features, random_unit_vectors(12, 768, seed=1))
    assert faces.landmarks.shape == (12, 5, 2) and faces.box[3].tolist() == [1, 1, 11, 11]
    assert np.array_equal(store.faces(descriptor="gap505").features, faces.features[:, 512:])
    assert np.array_equal(store.faces(descriptor="emb").features, vectors)
    with pytest.raises(StoreError, match=r"'gap509' is not part of 'emb\+gap505'"):
        store.faces(descriptor="gap509")
    primary_train = store.faces(split="train", primary=True)
    assert primary_train.age.tolist() == [20, 23] and primary_train.face_index.tolist() == [0, 0]
    assert primary_train.path.tolist() == ["/data/img0.jpg", "/data/img3.jpg"]
    similarities, ids = store.search(vectors[5], k=3)
    assert ids[0, 0] == faces.face_id[5] and similarities[0, 0] == pytest.approx(1.0, abs=1e-5)
    summary = store.summary()
    assert summary["faces"] == summary["index_faces"] == 12
    assert summary["labelled_faces_by_split"] == {"train": 2, "val": 2, "test": 2}


def test_another_model_or_descriptor_is_refused(tmp_path):
    fill(tmp_path / "s")
    with pytest.raises(StoreError, match="made with the embedding model abab.*not cdcd"):
        EmbeddingStore(tmp_path / "s", model_sha256="cd" * 32)
    with pytest.raises(StoreError, match=r"features of the descriptor 'emb\+gap505', not 'grid509'"):
        EmbeddingStore(tmp_path / "s", descriptor="grid509")
    with pytest.raises(StoreError, match="no embedding store here"):
        EmbeddingStore(tmp_path / "nothing")


@pytest.mark.parametrize("damage", ["delete", "truncate", "stale"])
def test_a_damaged_or_stale_index_is_rebuilt_from_the_record(tmp_path, caplog, damage):
    vectors = fill(tmp_path / "s")
    index_file = tmp_path / "s" / INDEX
    if damage == "delete":
        index_file.unlink()
    elif damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[:100])
    else:  # an index saved before the last images were recorded (a killed run)
        store = EmbeddingStore(tmp_path / "s")
        store.add_image("f" * 64, 1, 1, [detection(0)], random_unit_vectors(1, seed=9), random_unit_vectors(1, 768))
        store._db.close()
    store = EmbeddingStore(tmp_path / "s")
    assert "rebuilding" not in caplog.text  # opening is cheap: the index is read on first use
    store.index
    assert "rebuilding it from the record" in caplog.text
    ids, stored = store._all_embeddings()
    assert np.array_equal(np.asarray(store.index.index.reconstruct_n(0, store.index.ntotal)), stored)
    assert len(ids) == (13 if damage == "stale" else 12)
    assert np.array_equal(stored[:12], vectors)


def test_a_corrupt_database_is_reported(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="not a readable store database"):
        EmbeddingStore(tmp_path / "s")
