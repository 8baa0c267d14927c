"""Several labelled sets as one: groups, the val part of unsplit stores, label-quality exclusions."""

import numpy as np
import pytest

from agestimate.store.store import FaceRecords

pytest.importorskip("torch")

from agestimate.training.sources import (  # noqa: E402
    LabelledSources,
    assign_splits,
    held_out_groups,
    label_quality_exclusions,
    repeat_index,
)


def records(age, person, split, features=None, embedding=None):
    n = len(age)
    rng = np.random.default_rng(0)
    return FaceRecords(
        face_id=np.arange(n), sha256=np.array([f"h{i}" for i in range(n)], object), path=np.array([""] * n, object),
        face_index=np.zeros(n, np.int64), box=np.zeros((n, 4), np.float32), landmarks=np.zeros((n, 5, 2), np.float32),
        embedding=rng.normal(size=(n, 8)).astype(np.float32) if embedding is None else embedding,
        features=rng.normal(size=(n, 8)).astype(np.float32) if features is None else features,
        score=np.ones(n, np.float32), method=np.array(["detected"] * n, object), age=np.asarray(age, np.float32),
        gender=np.full(n, -1), race=np.full(n, -1), person=np.array(person, object), split=np.array(split, object))


def two_sources():
    """Store a: 6 faces with a fixed split, no people; store b: 3 people x 4 photos, no split."""
    a = records([20] * 6, [""] * 6, ["train", "train", "train", "val", "val", "test"])
    b = records([30] * 12, [f"p{i // 4}" for i in range(12)], [""] * 12)
    source = np.array(["a"] * 6 + ["b"] * 12, object)
    return LabelledSources(FaceRecords.concatenate([a, b]), source, ["a", "b"], "grid509", "sha")


def test_fixed_splits_stay_and_unsplit_people_are_held_out_whole():
    sources = two_sources()
    split = assign_splits(sources, val_fraction=0.34, seed=0)
    assert split[:6].tolist() == ["train", "train", "train", "val", "val", "test"]
    held = split[6:] == "val"
    assert held.sum() == 4  # one of three people, all four photos
    people = sources.records.person[6:]
    assert len(set(people[held])) == 1 and not set(people[held]) & set(people[~held])
    assert (split[6:][~held] == "train").all()
    assert sources.counts(split) == {"a": {"train": 3, "val": 2, "test": 1}, "b": {"train": 8, "val": 4}}
    assert (assign_splits(sources, val_fraction=0.0)[6:] == "train").all()


def test_the_same_person_name_in_two_stores_is_two_people():
    a = records([20] * 2, ["p0", "p0"], ["", ""])
    sources = LabelledSources(FaceRecords.concatenate([a, a]), np.array(["a", "a", "b", "b"], object), ["a", "b"], "d", "s")
    assert len(set(sources.groups.tolist())) == 2
    faces_without_person = records([20] * 2, ["", ""], ["", ""])
    sources = LabelledSources(faces_without_person, np.array(["a", "a"], object), ["a"], "d", "s")
    assert len(set(sources.groups.tolist())) == 2  # each image its own group


def test_held_out_groups_take_at_least_one_of_two_or_more():
    groups = np.array(["x", "x", "y", "z"], object)
    rng = np.random.default_rng(0)
    assert held_out_groups(groups, np.ones(4, bool), fraction=0.01, rng=rng).sum() in (1, 2)
    assert not held_out_groups(groups, np.array([True, True, False, False]), fraction=0.5, rng=rng).any()  # one group


def test_label_quality_exclusions_touch_training_faces_only():
    base = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    noise = np.random.default_rng(2).normal(scale=0.01, size=(13, 16)).astype(np.float32)
    features = base + noise
    embedding = np.eye(13, 16, dtype=np.float32)
    embedding[12] = embedding[0]  # test face 12 duplicates train face 0
    age = [30] * 11 + [80, 30]  # face 11: 50 years from its neighbours
    faces = records(age, [""] * 13, ["train"] * 12 + ["test"], features=features, embedding=embedding)
    sources = LabelledSources(faces, np.array(["a"] * 13, object), ["a"], "d", "s")
    excluded = label_quality_exclusions(sources, faces.split, label_outliers=True, near_duplicates=0.99)
    assert np.flatnonzero(excluded["label_outliers"]).tolist() == [11]
    assert np.flatnonzero(excluded["near_duplicates_of_val_test"]).tolist() == [0]
    assert label_quality_exclusions(sources, faces.split) == {}


def test_repeat_index_repeats_the_training_faces_of_a_store():
    sources = two_sources()
    split = assign_splits(sources, val_fraction=0.34, seed=0)
    train = split == "train"
    index = repeat_index(sources, train, [1, 3])
    assert (split[index] == "train").all()
    assert (sources.source[index] == "a").sum() == 3 and (sources.source[index] == "b").sum() == 3 * 8
    assert repeat_index(sources, train).tolist() == np.flatnonzero(train).tolist()
    with pytest.raises(ValueError, match="one repeat count"):
        repeat_index(sources, train, [1])
