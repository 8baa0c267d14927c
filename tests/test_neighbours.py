"""Nearest labelled faces of a store, answered by the store's own FAISS index."""

import numpy as np
import pytest

from agestimate.faces.encoder import FaceDetection
from agestimate.io.labels import FaceLabel
from agestimate.store.neighbours import StoreNeighbours, nearest_labelled
from agestimate.store.store import EmbeddingStore

from conftest import FIXTURES, random_unit_vectors


@pytest.fixture
def store_path(tmp_path):
    """8 images of one face each; images 0-5 labelled (ages 10, 20, ..., 60), 6 and 7 not;
    image 7's face is a near copy of image 2's."""
    embeddings = random_unit_vectors(8, 512, seed=5)
    embeddings[7] = embeddings[2] + 0.01
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    images = sorted((FIXTURES / "utkface").iterdir())
    path = tmp_path / "store"
    with EmbeddingStore(path, model_sha256="cd" * 32, descriptor="emb", create=True) as store:
        for i in range(8):
            sha = f"{i:064x}"
            face = FaceDetection(np.array([0, 0, 10, 10], np.float32), np.zeros((5, 2), np.float32), 0.9, "detected")
            store.add_image(sha, 100, 100, [face], embeddings[i:i + 1], embeddings[i:i + 1])
            store.add_file(images[i], 1, 1, sha, "embedded")
            if i < 6:
                store.set_label(sha, FaceLabel(age=10.0 * (i + 1), gender=i % 2, split="train"), source="test")
    return path, embeddings


def test_neighbours_are_the_labelled_faces_found_by_the_store_index(store_path, monkeypatch):
    path, embeddings = store_path
    with EmbeddingStore(path) as store:
        search = StoreNeighbours(store)
        index = store.index  # the index the store has read
        searched = []
        original = type(index).search
        monkeypatch.setattr(type(index), "search", lambda self, *a, **kw: searched.append(self.this) or original(self, *a, **kw))
        query = embeddings[2] + 0.05 * random_unit_vectors(1, 512, seed=9)[0]
        [found] = search(query[None, :], k=3)
        assert searched == [index.this] and store.index is index  # one search, of that index
    assert len(search) == 6 and len(found) == 3
    first = found[0]
    assert first.age == 30 and first.gender == "male" and first.split == "train" and first.file.endswith(
        sorted((FIXTURES / "utkface").iterdir())[2].name)
    assert first.similarity > 0.9 > found[1].similarity >= found[2].similarity
    assert all(n.face_id <= 6 for n in found)  # faces 7 and 8 (ids) are unlabelled: never returned


def test_fewer_labelled_faces_than_k_and_faces_without_embeddings(store_path):
    path, embeddings = store_path
    found = nearest_labelled(path, embeddings[:2], k=10)
    assert [len(row) for row in found] == [6, 6] and found[0][0].age == 10 and found[1][0].age == 20
    assert nearest_labelled(path, [], k=2) == []
    with pytest.raises(ValueError, match="return_embedding=True"):
        nearest_labelled(path, [type("Face", (), {"embedding": None})()], k=2)
    with pytest.raises(ValueError, match="shape"):
        nearest_labelled(path, np.zeros((2, 64)), k=2)


def test_restricted_searches_match_faiss_id_selectors(store_path, monkeypatch):
    import agestimate.store.index as search_index

    path, embeddings = store_path
    among = [1, 3, 4, 6]
    with EmbeddingStore(path) as store:
        filtered = store.search(embeddings, 3, among=among)  # searches all, keeps the allowed (4 excluded)
        monkeypatch.setattr(search_index, "MAX_OVERFETCH", 0)
        selected = store.search(embeddings, 3, among=among)  # FAISS's IDSelectorBatch
        assert np.array_equal(filtered[1], selected[1]) and np.allclose(filtered[0], selected[0])
        assert set(filtered[1].ravel()) <= set(among)
        _, padded = store.search(embeddings[:1], 6, among=among)
        assert padded[0, 4:].tolist() == [-1, -1]
        limits, similarities, face_ids = store.range_search(embeddings, -1.0, among=among)
        assert np.diff(limits).tolist() == [4] * 8 and set(face_ids) == set(among)
        limits, _, face_ids = store.range_search(embeddings, 0.95, among=[3])  # face 3 is image 2; image 7 is a near copy
        assert np.diff(limits).tolist() == [0, 0, 1, 0, 0, 0, 0, 1] and face_ids.tolist() == [3, 3]
