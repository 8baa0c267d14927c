"""A prediction run: everything the sources a user names hold, images then videos, scored."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from agestimate.apps.video import predict_video, video_name
from agestimate.errors import ImageLoadError
from agestimate.estimator import Estimator, ImageResult
from agestimate.heads.calibration import DEFAULT_LEVEL
from agestimate.io.drawing import save_image
from agestimate.io.sources import Sources, annotated_paths, expand_sources


def predict_sources(sources: Iterable[str | os.PathLike] | Sources, *, estimator=None, recursive: bool = False,
                    webcam: int | None = None, batch_size: int = 32, every: int = 1, max_frames: int | None = None,
                    annotate: str | Path | None = None, show_progress: bool = False, interval: float = DEFAULT_LEVEL,
                    return_embedding: bool = False) -> Iterator:
    """Age and gender in every image and video that `sources` name, lazily: one `ImageResult`
    per image (in batches, see `Estimator.predict_batch`), then one per frame of each video
    and of the camera `webcam` (see `agestimate.apps.video.predict_video`).

    An image or video that cannot be read gives a result with its error; the others go on.

    Parameters
    ----------
    sources : files, folders and glob patterns (see `expand_sources`), or what it returned.
    estimator : the `Estimator` to use (default: the default model).
    recursive : see `expand_sources`.
    every, max_frames : see `predict_video`.
    annotate : write annotated copies of images with faces, and of videos, into this folder
        (see `annotated_paths`).
    interval : level of the age intervals (`Face.age_interval`).
    return_embedding : keep the identity embedding of the faces of images (video faces are
        tracked and smoothed, and carry none).
    """
    found = sources if isinstance(sources, Sources) else expand_sources(sources, recursive=recursive)
    estimator = estimator if estimator is not None else Estimator()
    videos = found.videos + ([webcam] if webcam is not None else [])
    targets = annotated_paths(found.images + videos, annotate) if annotate is not None else {}
    for result in estimator.predict_batch(found.images, batch_size=batch_size, show_progress=show_progress,
                                          return_image=annotate is not None, return_embedding=return_embedding,
                                          interval=interval):
        if annotate is not None and result.faces:
            save_image(targets[result.source], result.plot())
        yield dataclasses.replace(result, image=None) if annotate is not None else result
    for video in videos:
        target = targets.get(video if isinstance(video, int) else str(video))
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield from predict_video(video, estimator, every=every, annotate_to=target, max_frames=max_frames,
                                     interval=interval)
        except ImageLoadError as error:  # one unreadable video does not stop the others
            yield ImageResult(video_name(video), [], error.reason, error.kind)
