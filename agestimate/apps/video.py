"""Video: ages and genders frame by frame, from a file or a webcam, faces tracked and smoothed
along their tracks (see `agestimate.apps.tracking`), with an annotated copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2

from agestimate.apps.tracking import FaceTracker
from agestimate.errors import ImageLoadError
from agestimate.estimator import Estimator
from agestimate.heads.calibration import DEFAULT_LEVEL
from agestimate.io.drawing import draw_faces
from agestimate.results import ImageResult


def video_name(source) -> str:
    """How results name a video: its path, or "webcam N" for a camera index."""
    return f"webcam {source}" if isinstance(source, int) else str(source)


def predict_video(source, estimator: Estimator, *, every: int = 1, annotate_to: str | Path | None = None,
                  max_frames: int | None = None, track: bool = True, interval: float = DEFAULT_LEVEL) -> Iterator[ImageResult]:
    """Faces of each frame of a video file (path) or webcam (int index), lazily: one
    `ImageResult` per frame, with `frame` set and `analysed` False for carried-over faces.

    Parameters
    ----------
    every : analyse every `every`-th frame; the frames between show the last analysed faces,
        their boxes moved by optical flow when tracking.
    annotate_to : write an annotated copy of the video here (MJPG .avi).
    max_frames : stop after this many frames (a webcam never ends by itself).
    track : follow faces across frames (`Face.track`) and smooth their age and gender along
        each track (`agestimate.apps.tracking.FaceTracker`); False gives each frame's own estimates.
    interval : level of the age intervals.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not capture.isOpened():
        raise ImageLoadError(str(source), "cannot open the video (missing file, unknown format or no such camera)",
                             kind="unreadable")
    calibration = estimator.heads.calibration
    tracker = FaceTracker(calibration and calibration.age, interval=interval) if track else None
    name, writer, faces, index, gray = video_name(source), None, [], 0, None
    try:
        while max_frames is None or index < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            # grey frames feed the optical flow of frames between analysed ones (every > 1)
            previous_gray, gray = gray, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if tracker and every > 1 else None
            analysed = index % every == 0
            if analysed and tracker:
                faces = tracker.update(estimator.predict(rgb, return_embedding=True, return_image=False, interval=interval).faces)
            elif analysed:
                faces = estimator.predict(rgb, interval=interval, return_image=False).faces
            elif tracker:
                faces = tracker.follow(previous_gray, gray)
            if annotate_to is not None:
                if writer is None:
                    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
                    writer = cv2.VideoWriter(str(annotate_to), cv2.VideoWriter_fourcc(*"MJPG"), fps, (bgr.shape[1], bgr.shape[0]))
                writer.write(cv2.cvtColor(draw_faces(rgb, faces), cv2.COLOR_RGB2BGR))
            yield ImageResult(name, faces, frame=index, analysed=analysed, width=bgr.shape[1], height=bgr.shape[0],
                              model=estimator.model, runtime=estimator.encoder.runtime.as_dict())
            index += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
