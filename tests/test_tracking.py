"""Tracks across frames: identity beats box overlap, smoothing pools frames, optical flow moves boxes."""

import numpy as np
import pytest

from agestimate.apps.tracking import FaceTracker, box_iou
from agestimate.results import Face
from agestimate.heads.calibration import AgeCalibration

from conftest import random_unit_vectors


def face(box, embedding, age, spread=3.0, female=0.2):
    """A face as `Estimator.predict` gives it; female=None: from a model without a gender head."""
    gender = None if female is None else "female" if female > 0.5 else "male"
    return Face(box=tuple(map(float, box)), landmarks=((0.0, 0.0),) * 5, detection_score=0.9, detection_method="detected",
                age=age, age_spread=spread, age_interval=(np.nan, np.nan), age_group="", gender=gender,
                gender_probability=None if female is None else max(female, 1 - female), confidence=0.5, embedding=embedding)


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert np.allclose(iou, [[1, 1 / 3, 0]])


def test_crossing_faces_keep_their_tracks_by_identity():
    child, adult = random_unit_vectors(2, 512, seed=1)
    tracker = FaceTracker()
    tracks = []
    for step in range(11):  # the child moves right, the adult left; they cross at step 5
        x = 10 * step
        frame = [face((x, 0, x + 40, 40), child, 8), face((100 - x, 5, 140 - x, 45), adult, 60)]
        if step == 5:
            frame = frame[1:]  # the adult hides the child
        tracks.append({round(f.age): f.track for f in tracker.update(frame)})
    assert all(t.get(8, 1) == 1 and t[60] == 2 for t in tracks)
    stranger = random_unit_vectors(1, 512, seed=7)[0]
    assert tracker.update([face((0, 0, 40, 40), stranger, 30)])[0].track == 3  # same place, another person


def test_smoothing_pools_frames_weighted_by_the_model_certainty():
    identity = random_unit_vectors(1, 512, seed=2)[0]
    calibration = AgeCalibration.fit([30.0] * 200, [2.0] * 200, 30 + np.linspace(-4, 4, 200), group_edges=())
    tracker = FaceTracker(calibration, interval=0.8)
    ages = [30, 34, 30, 34, 30, 34]
    smoothed = [tracker.update([face((0, 0, 40, 40), identity, age, female=p)])[0]
                for age, p in zip(ages, [0.9, 0.8, 0.9, 0.8, 0.9, 0.8])]
    assert [f.age for f in smoothed] == pytest.approx([30, 32, 31.333, 32, 31.6, 32], abs=1e-3)
    assert np.std([f.age for f in smoothed]) < np.std(ages) / 2
    assert smoothed[-1].gender == "female" and smoothed[-1].embedding is None
    assert smoothed[-1].age_interval[0] < 32 < smoothed[-1].age_interval[1]
    sure = tracker.update([face((0, 0, 40, 40), identity, 50, spread=0.5)])[0]  # a frame 36 times as precise
    assert sure.age > 45


def test_follow_moves_boxes_with_the_image():
    rng = np.random.default_rng(3)
    texture = (rng.random((240, 320)) * 255).astype(np.uint8)
    texture = np.ascontiguousarray(np.kron(texture[:60, :80], np.ones((4, 4), np.uint8)))  # blobs that flow can follow
    shifted = np.roll(np.roll(texture, 3, axis=0), 5, axis=1)
    tracker = FaceTracker()
    identity = random_unit_vectors(1, 512, seed=4)[0]
    [before] = tracker.update([face((100, 80, 180, 160), identity, 40)])
    [after] = tracker.follow(texture, shifted)
    assert np.allclose(np.array(after.box) - np.array(before.box), [5, 3, 5, 3], atol=0.5)
    assert after.age == before.age and after.track == before.track


def test_faces_without_gender_stay_without_gender():
    identity = random_unit_vectors(1, 512, seed=6)[0]
    tracker = FaceTracker()
    for age in (20, 24):
        [smoothed] = tracker.update([face((0, 0, 40, 40), identity, age, female=None)])
    assert smoothed.gender is None and smoothed.gender_probability is None and smoothed.age == pytest.approx(22)
