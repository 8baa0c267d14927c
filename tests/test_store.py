import sqlite3

import faiss
import numpy as np
import pytest

from agestimate.errors import StoreError
from agestimate.faces.encoder import FaceDetection
from agestimate.io.labels import FaceLabel
from agestimate.store.store import INDEX, EmbeddingStore

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
def test_a_damaged_or_stale_index_is_brought_up_to_date_with_the_record(tmp_path, caplog, damage):
    vectors = fill(tmp_path / "s")
    index_file = tmp_path / "s" / INDEX
    if damage == "delete":
        index_file.unlink()
    elif damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[:100])
    else:  # an index saved before the last images were recorded (a killed run)
        store = EmbeddingStore(tmp_path / "s")
        store.add_image("f" * 64, 1, 1, [detection(0)], random_unit_vectors(1, seed=9), random_unit_vectors(1, 768))
        del store  # killed: never closed, the index not saved
    store = EmbeddingStore(tmp_path / "s")
    assert "rebuilding" not in caplog.text  # opening is cheap: the index is read on first use
    assert store.index.ntotal == (13 if damage == "stale" else 12)
    if damage == "stale":  # the face recorded after the save joins the saved index: no rebuild
        assert "rebuilding" not in caplog.text and not store.index_saved
    else:
        assert "rebuilding it from the record" in caplog.text
    ids, stored = store.embeddings()
    assert np.array_equal(np.asarray(store.index.index.reconstruct_n(0, store.index.ntotal)), stored)
    assert len(ids) == (13 if damage == "stale" else 12)
    assert np.array_equal(stored[:12], vectors)


def test_a_corrupt_database_is_reported(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="not a readable store database"):
        EmbeddingStore(tmp_path / "s")


def add(store, sha, vector_seed, path, label=None):
    """An image of one face, stored under `path` (with `label`)."""
    store.add_image(sha, 100, 80, [detection(0)], random_unit_vectors(1, seed=vector_seed),
                    random_unit_vectors(1, 768, seed=vector_seed))
    return store.add_file(path, 10, 20, sha, "embedded", label=label, label_source="test")


def test_a_changed_file_points_at_its_new_content_and_prune_forgets_the_old(tmp_path):
    files = [tmp_path / f"img{i}.jpg" for i in range(3)]
    for path in files:
        path.write_bytes(b"x")
    with EmbeddingStore(tmp_path / "s", model_sha256=MODEL, descriptor=DESCRIPTOR, create=True) as store:
        for i, path in enumerate(files):
            add(store, f"{i:064x}", i, path, FaceLabel(age=20 + i, split="train"))
        add(store, "e" * 64, 7, files[0])  # img0.jpg changed: no label given, it keeps its own
        summary = store.summary()
        assert summary["images"] == 3 and summary["faces"] == 3 and summary["stale_images"] == 1
        faces = store.faces(labelled=True)
        assert sorted(faces.sha256.tolist()) == sorted(["e" * 64, f"{1:064x}", f"{2:064x}"])  # not the old content
        assert faces.age[faces.sha256 == "e" * 64].tolist() == [20]
        assert store.index.ntotal == 4  # the old face stays searchable until pruned
    files[2].unlink()
    with EmbeddingStore(tmp_path / "s") as store:
        assert store.prune() == {"missing_files": 1, "images": 2, "faces": 2, "labels": 2}
        assert store.summary()["images"] == 2 and store.summary()["stale_images"] == 0
        assert store.index.ntotal == 2
    with EmbeddingStore(tmp_path / "s") as store:  # the saved index agrees with the record
        ids, vectors = store.embeddings()
        assert np.array_equal(store.index.index.reconstruct_n(0, store.index.ntotal), vectors)


def test_prune_refuses_when_no_recorded_file_exists(tmp_path):
    fill(tmp_path / "s")  # paths under /data that are not there
    with EmbeddingStore(tmp_path / "s") as store, pytest.raises(StoreError, match="none of the 6 recorded files exists"):
        store.prune()
    assert EmbeddingStore(tmp_path / "s").summary()["images"] == 6


def test_labels_replace_different_ones_and_say_so(tmp_path):
    with EmbeddingStore(tmp_path / "s", model_sha256=MODEL, descriptor=DESCRIPTOR, create=True) as store:
        assert add(store, "a" * 64, 0, "/x/a.jpg", FaceLabel(age=30, gender=1)) is None
        assert store.set_label("a" * 64, FaceLabel(age=30, gender=1), source="again") is None  # the same: no conflict
        replaced = store.add_file("/x/copy.jpg", 1, 1, "a" * 64, "embedded", label=FaceLabel(age=31, gender=1))
        assert replaced == FaceLabel(age=30, gender=1) and store.label("a" * 64).age == 31


def test_opening_reads_no_embeddings_when_the_index_is_current(tmp_path, monkeypatch):
    fill(tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "store.sqlite") as db:  # as a store written before index versions
        db.execute("DELETE FROM meta WHERE key = 'index_version'")
    assert EmbeddingStore(tmp_path / "s").index.ntotal == 12  # checked against the record once, then trusted
    monkeypatch.setattr(EmbeddingStore, "embeddings", lambda self: pytest.fail("read every embedding"))
    with EmbeddingStore(tmp_path / "s") as store:
        assert store.summary()["index_faces"] == 12 and len(store.faces(labelled=True)) == 12
        assert store.search(random_unit_vectors(1), k=2)[1].shape == (1, 2)


def test_two_writers_store_each_image_once_and_leave_a_consistent_index(tmp_path):
    fill(tmp_path / "s", n_images=2)
    first, second = EmbeddingStore(tmp_path / "s"), EmbeddingStore(tmp_path / "s")
    assert first.index.ntotal == second.index.ntotal == 4  # both loaded before either writes
    assert add(first, "b" * 64, 10, "/x/b.jpg") is None
    assert not second.add_image("b" * 64, 1, 1, [detection(0)], random_unit_vectors(1, seed=11),
                                random_unit_vectors(1, 768, seed=11))  # already there: nothing recorded
    add(second, "c" * 64, 12, "/x/c.jpg")
    assert second.search(random_unit_vectors(1, seed=10), k=1)[0][0, 0] == pytest.approx(1.0, abs=1e-5)
    second.close()
    first.close()
    with EmbeddingStore(tmp_path / "s") as store:
        ids, vectors = store.embeddings()
        assert len(ids) == 6 and store.summary()["images"] == 4
        assert np.array_equal(faiss.vector_to_array(store.index.id_map), ids)
        assert np.array_equal(store.index.index.reconstruct_n(0, len(ids)), vectors)


def test_one_codec_packs_faces_for_the_store_and_the_ray_rows():
    from agestimate.store.codec import pack_faces, unpack_faces

    faces = [detection(i) for i in range(3)]
    embeddings, features = random_unit_vectors(3, seed=1), random_unit_vectors(3, 768, seed=2)
    packed = pack_faces(faces, embeddings, features)
    rows = list(packed.rows())  # the store's rows, one per face
    assert len(rows) == 3 and rows[1][2:4] == (faces[1].score, faces[1].method)
    for unpacked in (unpack_faces(**{k: packed.as_dict()[k] for k in ("boxes", "landmarks", "embeddings", "features")},
                                  dim=512, feature_dim=768, scores=packed.scores, methods=packed.methods),
                     unpack_faces([r[0] for r in rows], [r[1] for r in rows], [r[4] for r in rows], [r[5] for r in rows],
                                  dim=512, feature_dim=768, scores=[r[2] for r in rows], methods=[r[3] for r in rows])):
        assert np.array_equal(unpacked.box, np.array([f.box for f in faces], np.float32))
        assert np.array_equal(unpacked.landmarks, np.array([f.landmarks for f in faces], np.float32))
        assert np.array_equal(unpacked.embedding, embeddings) and np.array_equal(unpacked.features, features)
        assert unpacked.method == [f.method for f in faces] and np.allclose(unpacked.score, [f.score for f in faces])
    empty = pack_faces([], np.zeros((0, 512)), np.zeros((0, 768)))
    assert list(empty.rows()) == [] and unpack_faces(empty.boxes, empty.landmarks, empty.embeddings, empty.features,
                                                      dim=512, feature_dim=768, methods=empty.methods).method == []
