"""Video: ages and genders frame by frame, from a file or a webcam, with an annotated copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2

from .drawing import draw_faces
from .errors import ImageLoadError
from .estimator import Estimator, ImageResult


def video_name(source) -> str:
    """How results name a video: its path, or "webcam N" for a camera index."""
    return f"webcam {source}" if isinstance(source, int) else str(source)


def predict_video(source, estimator: Estimator, *, every: int = 1, annotate_to: str | Path | None = None,
                  max_frames: int | None = None) -> Iterator[ImageResult]:
    """Faces of each frame of a video file (path) or webcam (int index), lazily: one
    `ImageResult` per frame, with `frame` set and `analysed` False for carried-over faces.

    Parameters
    ----------
    every : analyse every `every`-th frame; the frames between show the last analysed faces
        (boxes are not tracked: with faces that move fast, use 1).
    annotate_to : write an annotated copy of the video here (MJPG .avi).
    max_frames : stop after this many frames (a webcam never ends by itself).
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not capture.isOpened():
        raise ImageLoadError(str(source), "cannot open the video (missing file, unknown format or no such camera)",
                             kind="unreadable")
    name, writer, faces, index = video_name(source), None, [], 0
    try:
        while max_frames is None or index < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            analysed = index % every == 0
            if analysed:
                faces = estimator.predict(rgb)
            if annotate_to is not None:
                if writer is None:
                    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
                    writer = cv2.VideoWriter(str(annotate_to), cv2.VideoWriter_fourcc(*"MJPG"), fps, (bgr.shape[1], bgr.shape[0]))
                writer.write(cv2.cvtColor(draw_faces(rgb, faces), cv2.COLOR_RGB2BGR))
            yield ImageResult(name, faces, frame=index, analysed=analysed)
            index += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
