"""Faces followed across the frames of a video, their age and gender smoothed along each track.

Matching: a face of a new frame joins the track whose identity embedding is most similar
(cosine of ArcFace embeddings, which change little from frame to frame and differ between
people), with box overlap (IoU) added as a tie-breaker; pairs are taken greedily, best first,
and a pair below `min_similarity` never matches, so two people who cross keep their tracks
even when their boxes overlap. A face that matches no track starts one; a track unmatched for
`max_missed` analysed frames ends.

Smoothing: each frame's age distribution is summarised by its mean and spread, and the last
`window` frames of a track are pooled as a logarithmic opinion pool of these Gaussians: the
precision-weighted mean age (frames where the model is sure count more) with the mean
precision as the pooled spread. The pooled spread is that of a typical frame, not shrunk by
the number of frames (frames of one video are far from independent), so the conformal
interval of the pooled age stays as wide as a single frame's. Gender pools the logits of the
calibrated P(female) the same way.

Between analysed frames (``every`` > 1), `FaceTracker.follow` moves each track's box and
landmarks with pyramidal Lucas-Kanade optical flow, so boxes follow the faces.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from agestimate.heads.calibration import DEFAULT_LEVEL, MIN_SPREAD, AgeCalibration, check_level, logit, sigmoid
from agestimate.results import predicted_face

MIN_SIMILARITY = 0.35  # cosine; same person in consecutive frames is typically 0.7+, different people below 0.2
WINDOW = 30  # analysed frames pooled per track
MAX_MISSED = 60  # analysed frames a track survives unseen (hidden, turned away): 2.4 s at 25 frames/s


@dataclass
class Track:
    """A face followed over frames: its latest `face`, a running identity embedding and the
    per-frame observations (age, spread, gender logit, confidence) of the last `WINDOW` frames."""

    number: int
    face: object  # the latest (smoothed) Face
    embedding: np.ndarray
    observations: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    missed: int = 0


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `first` (n, 4) with every box of `second` (m, 4): (n, m)."""
    first, second = np.asarray(first, np.float64).reshape(-1, 4), np.asarray(second, np.float64).reshape(-1, 4)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(first)[:, None] + area(second)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


class FaceTracker:
    """Assigns the faces of successive frames to tracks and smooths them (see the module docstring).

    Parameters
    ----------
    calibration : the model's age calibration (``estimator.heads.calibration.age``), for the
        intervals of smoothed ages; None gives NaN intervals.
    interval : level of those intervals.
    window : frames pooled per track (1: no smoothing, tracks only).
    min_similarity : identity cosine below which a face never joins a track.
    max_missed : analysed frames a track survives without a matching face.
    """

    def __init__(self, calibration: AgeCalibration | None = None, *, interval: float = DEFAULT_LEVEL,
                 window: int = WINDOW, min_similarity: float = MIN_SIMILARITY, max_missed: int = MAX_MISSED):
        if window < 1 or max_missed < 0:
            raise ValueError(f"window must be at least 1 and max_missed at least 0, got {window} and {max_missed}")
        self.calibration = calibration
        self.interval = check_level(interval)
        self.window = window
        self.min_similarity = min_similarity
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._next_number = 1
        self._shown: list[Track] = []  # the tracks of the faces of the last analysed frame, in their order

    def update(self, faces: list) -> list:
        """Faces of an analysed frame (each with its embedding: predict with ``return_embedding=True``)
        as smoothed faces with their track numbers, in the same order, without embeddings."""
        if any(face.embedding is None for face in faces):
            raise ValueError("tracking needs the faces' embeddings: predict with return_embedding=True")
        embeddings = [_unit(face.embedding) for face in faces]
        assigned = self._match(faces, embeddings)
        for track in self.tracks:
            track.missed += 1
        shown = []
        for i, face in enumerate(faces):
            track = assigned.get(i)
            if track is None:
                track = Track(self._next_number, face, embeddings[i], deque(maxlen=self.window))
                self._next_number += 1
                self.tracks.append(track)
            else:
                track.embedding = _unit(0.8 * track.embedding + 0.2 * embeddings[i])
            track.missed = 0
            female = face.prob_female  # None for a model without a gender head
            gender_logit = float("nan") if female is None else float(logit(female))
            track.observations.append((face.age, max(face.age_spread, MIN_SPREAD), gender_logit, face.confidence))
            track.face = self._smoothed(face, track)
            shown.append(track)
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        self._shown = shown
        return [track.face for track in shown]

    def _match(self, faces: list, embeddings: list) -> dict:
        """Face index -> track, greedily by identity similarity (of the faces' unit `embeddings`)
        plus IoU, best pair first."""
        if not faces or not self.tracks:
            return {}
        similarity = np.stack([track.embedding for track in self.tracks]) @ np.stack(embeddings).T  # (tracks, faces)
        overlap = box_iou([track.face.box for track in self.tracks], [face.box for face in faces])
        score = np.where(similarity >= self.min_similarity, similarity + overlap, -np.inf)
        assigned = {}
        while np.isfinite(score).any():
            t, f = np.unravel_index(np.argmax(score), score.shape)
            assigned[int(f)] = self.tracks[t]
            score[t, :] = -np.inf
            score[:, f] = -np.inf
        return assigned

    def _smoothed(self, face, track: Track):
        ages, spreads, logits, confidences = (np.array(column) for column in zip(*track.observations))
        precision = 1.0 / np.square(spreads)
        age = float(np.sum(precision * ages) / np.sum(precision))
        spread = float(np.sqrt(1.0 / precision.mean()))
        if self.calibration is None:
            low = high = float("nan")
        else:
            low, high = (float(end[0]) for end in self.calibration.interval([age], [spread], self.interval))
        female = None if np.isnan(logits).all() else float(sigmoid(np.nanmean(logits)))
        return predicted_face(box=face.box, landmarks=face.landmarks, detection_score=face.detection_score,
                              detection_method=face.detection_method, age=age, age_spread=spread, age_interval=(low, high),
                              prob_female=female, confidence=float(confidences.mean()), track=track.number)

    def follow(self, previous_gray: np.ndarray, gray: np.ndarray) -> list:
        """The faces of the last analysed frame, their boxes and landmarks moved from the grey
        frame `previous_gray` to `gray` by optical flow (tracks keep the moved boxes)."""
        for track in self._shown:
            track.face = _moved(track.face, previous_gray, gray)
        return [track.face for track in self._shown]


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _moved(face, previous_gray: np.ndarray, gray: np.ndarray):
    """`face` with box and landmarks shifted and scaled as the points inside its box moved."""
    x1, y1, x2, y2 = face.box
    grid = np.stack(np.meshgrid(np.linspace(x1, x2, 7)[1:-1], np.linspace(y1, y2, 7)[1:-1]), axis=-1).reshape(-1, 2)
    landmarks = np.asarray(face.landmarks, np.float32)
    points = np.concatenate([landmarks, grid]).astype(np.float32)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous_gray, gray, points[:, None, :], None, winSize=(21, 21), maxLevel=3)
    good = status.ravel() == 1
    if good.sum() < 3:
        return face
    before, after = points[good], moved[good, 0]
    shift = np.median(after - before, axis=0)
    scale = float(np.clip(np.std(after, axis=0).mean() / max(np.std(before, axis=0).mean(), 1e-6), 0.8, 1.25))
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + shift
    half = np.array([(x2 - x1) / 2, (y2 - y1) / 2]) * scale
    new_landmarks = centre + (landmarks - (centre - shift)) * scale
    return dataclasses.replace(face, box=tuple(float(v) for v in (*(centre - half), *(centre + half))),
                               landmarks=tuple((float(x), float(y)) for x, y in new_landmarks))
