"""Exact and approximate (IVF) FAISS indexes, chosen by name or by size, in the store and the hygiene queries."""

import faiss
import numpy as np
import pytest
from test_store import DESCRIPTOR, MODEL, detection

from agestimate.evaluation.hygiene import near_duplicate_pairs
from agestimate.store import index as search_index
from agestimate.store.index import build_index, choose_kind, describe, index_kind, needs_rebuild, recall_at_k
from agestimate.store.store import INDEX, EmbeddingStore


def clustered_unit_vectors(n, dim=64, clusters=60, seed=0):
    """Vectors around a few centres, as face embeddings of few people are: what IVF cells exploit."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.7 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_kind_by_name_or_by_size():
    assert choose_kind(10) == "flat" and choose_kind(search_index.IVF_MIN_VECTORS) == "ivf"
    assert choose_kind(500_000, "flat") == "flat" and choose_kind(5_000, "ivf") == "ivf"
    assert choose_kind(search_index.IVF_MIN_TRAIN - 1, "ivf") == "flat"  # too few vectors to train cells
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        choose_kind(10, "hnsw")


def test_ivf_finds_the_exact_neighbours_and_survives_a_round_trip(tmp_path):
    vectors, queries = np.split(clustered_unit_vectors(6300), [6000])  # queries: not in the index
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + 3
    flat, ivf = build_index(vectors, ids, "flat"), build_index(vectors, ids, "ivf")
    assert index_kind(flat) == "flat" and index_kind(ivf) == "ivf" and describe(ivf).startswith("ivf (nlist 153, nprobe ")  # 6000 // 39 cells
    _, exact = flat.search(queries, 10)
    _, found = ivf.search(queries, 10)
    assert recall_at_k(exact, found) >= 0.93
    nprobe = faiss.downcast_index(ivf.index).nprobe
    assert 1 <= nprobe < faiss.downcast_index(ivf.index).nlist  # calibrated, not a full scan
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    again = faiss.read_index(str(tmp_path / "ivf.faiss"))
    assert describe(again) == describe(ivf)
    assert np.array_equal(again.index.reconstruct_n(0, len(vectors)), vectors)  # what the store checks
    assert np.array_equal(again.search(queries, 10)[1], found)
    assert not needs_rebuild(again, "ivf") and needs_rebuild(again, "flat") and not needs_rebuild(flat, "auto")


def test_recall_at_k():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [3, 4]])) == 0.75


def clustered_store(path, vectors, *, index):
    """A store of one face per image (and one file per image) with these identity embeddings."""
    features = np.zeros((1, 768), np.float32)
    with EmbeddingStore(path, model_sha256=MODEL, descriptor=DESCRIPTOR, create=True, index=index) as store:
        for i, vector in enumerate(vectors):
            store.add_image(f"{i:064x}", 100, 80, [detection(0)], vector[None], features)
            store.add_file(f"/data/{i}.jpg", 1, 1, f"{i:064x}", "embedded")
    return path


def test_near_duplicates_and_neighbours_through_an_ivf_store_index(tmp_path):
    vectors = clustered_unit_vectors(1500, dim=512)
    vectors[750:760] = vectors[:10] + 0.01  # ten near-copies
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = clustered_store(tmp_path / "s", vectors, index="flat")
    with EmbeddingStore(path) as store:
        records = store.faces(descriptor="emb")
        exact_pairs = near_duplicate_pairs(store, records, threshold=0.95)
        exact_neighbours = store.search(vectors[:50], k=10)[1]
        restricted = store.search(vectors[:5], k=3, among=records.face_id[::2])[1]  # FAISS selector path
    with EmbeddingStore(path, index="ivf") as store:
        assert index_kind(store.index) == "ivf"
        nprobe = faiss.downcast_index(store.index.index).nprobe
        pairs = near_duplicate_pairs(store, records, threshold=0.95)
        assert faiss.downcast_index(store.index.index).nprobe == nprobe  # the range search's own nprobe was put back
        assert sorted(zip(*pairs[:2])) == sorted(zip(*exact_pairs[:2]))
        assert {(i, i + 750) for i in range(10)} <= set(zip(*(x.tolist() for x in pairs[:2])))
        assert recall_at_k(exact_neighbours, store.search(vectors[:50], k=10)[1]) >= 0.9
        assert np.isin(store.search(vectors[:5], k=3, among=records.face_id[::2])[1], records.face_id[::2]).all()
        assert recall_at_k(restricted, store.search(vectors[:5], k=3, among=records.face_id[::2])[1]) >= 0.9


def test_the_store_keeps_its_index_choice(tmp_path):
    vectors = clustered_unit_vectors(1200, dim=512)
    path = clustered_store(tmp_path / "s", vectors, index="ivf")
    store = EmbeddingStore(path)
    assert store.index_kind == "ivf" and index_kind(store.index) == "ivf" and store.index_saved  # saved at close
    assert store.summary()["index"].startswith("ivf (nlist ")
    similarities, ids = store.search(vectors[7], k=3)
    assert ids[0, 0] == 8 and similarities[0, 0] == pytest.approx(1.0, abs=1e-5)  # face ids start at 1
    store.close()
    with EmbeddingStore(path, index="flat"):  # an explicit choice replaces the old one, even with nothing new
        pass
    assert index_kind(faiss.read_index(str(path / INDEX))) == "flat"
    assert EmbeddingStore(path).index_kind == "flat"


def test_faces_added_later_join_the_saved_ivf_index_without_retraining(tmp_path):
    vectors = clustered_unit_vectors(1300, dim=512)
    path = clustered_store(tmp_path / "s", vectors[:1200], index="ivf")

    def cells():
        saved = faiss.read_index(str(path / INDEX))  # owns the inner index: keep it alive while reading
        inner = faiss.downcast_index(saved.index)
        return inner.quantizer.reconstruct_n(0, inner.nlist)

    trained = cells()
    with EmbeddingStore(path) as store:
        for i in range(1200, 1300):
            store.add_image(f"{i:064x}", 100, 80, [detection(0)], vectors[i][None], np.zeros((1, 768), np.float32))
            store.add_file(f"/data/{i}.jpg", 1, 1, f"{i:064x}", "embedded")
    assert faiss.read_index(str(path / INDEX)).ntotal == 1300 and np.array_equal(cells(), trained)  # not retrained
    with EmbeddingStore(path) as store:
        assert store.search(vectors[1250], k=1)[1][0, 0] == 1251  # face ids start at 1
        assert store.index_saved  # the saved file matched the record


def test_an_embedding_index_prepares_a_restriction_once_per_version_and_answers_as_without_it(monkeypatch):
    vectors = clustered_unit_vectors(600)
    index = search_index.EmbeddingIndex.from_vectors(vectors[:500], np.arange(1, 501), kind="flat")
    among = np.arange(1, 501, 3)
    made = []
    original = search_index.Restriction.__init__
    monkeypatch.setattr(search_index.Restriction, "__init__", lambda self, *a: made.append(1) or original(self, *a))
    first = index.search(vectors[:20], 5, among=among)
    again = index.search(vectors[:20], 5, among=among.copy())  # the same ids, another array
    assert len(made) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again))
    limits, _, ids = index.range_search(vectors[:20], 0.3, among=among)
    assert len(made) == 1 and np.isin(ids, among).all()
    full = index.range_search(vectors[:20], 0.3)
    assert limits[-1] == np.isin(full[2], among).sum()
    exact = faiss.knn(vectors[:20], vectors[:500][among - 1], 5, metric=faiss.METRIC_INNER_PRODUCT)[1]
    assert np.array_equal(first[1], among[exact])  # what an index of those faces alone finds
    index.add(np.arange(501, 601), vectors[500:])  # a new version: prepared again, the new faces in it
    assert index.generation == 2 and np.isin(index.search(vectors[550], 1, among=[551, 552])[1], [551]).all()
    assert len(made) == 2


def test_one_gpu_copy_per_index_version(monkeypatch):
    copies = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda resources, device, index: copies.append(index) or index,
                        raising=False)
    vectors = clustered_unit_vectors(300)
    index = search_index.EmbeddingIndex.from_vectors(vectors[:200], kind="flat")
    for _ in range(3):
        assert index.search(vectors[:2], 1)[1][:, 0].tolist() == [0, 1]
    assert len(copies) == 1
    index.add(np.arange(200, 300), vectors[200:])
    assert index.search(vectors[250], 1)[1][0, 0] == 250 and len(copies) == 2  # the new version copied once


def test_an_ivf_range_search_tunes_nprobe_once_per_threshold(monkeypatch):
    vectors = clustered_unit_vectors(1500, dim=512)
    vectors[750:760] = vectors[:10] + 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = search_index.EmbeddingIndex.from_vectors(vectors, kind="ivf")
    tunings = []
    original = search_index.tune_for_range
    monkeypatch.setattr(search_index, "tune_for_range", lambda *a, **kw: tunings.append(a[2]) or original(*a, **kw))
    nprobe = faiss.downcast_index(index.faiss.index).nprobe
    results = [index.range_search(vectors[:20], 0.95) for _ in range(3)]
    assert tunings == [0.95] and faiss.downcast_index(index.faiss.index).nprobe == nprobe  # put back each time
    assert all(np.array_equal(r[2], results[0][2]) for r in results) and {750, 751} <= set(results[0][2].tolist())
