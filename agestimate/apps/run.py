"""A prediction run: everything the sources a user names hold, images then videos, scored
(`predict_sources`, lazily), and written, resumed and counted (`predict`, locally or on Ray)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agestimate.apps.video import predict_video, video_name
from agestimate.errors import ImageLoadError
from agestimate.estimator import Estimator
from agestimate.heads.calibration import DEFAULT_LEVEL
from agestimate.io.drawing import save_image
from agestimate.io.sources import Sources, annotated_paths, expand_sources
from agestimate.results import ImageResult


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


class EngineOptionError(ValueError):
    """An option the chosen engine does not take (the Ray engine scores image files only)."""


@dataclass
class PredictionSummary:
    """What a prediction run (`predict`) did.

    images, videos, frames : sources scored in this run (video frames counted apart).
    faces : faces found. no_face : images and frames without a face.
    errors : {error kind: count} of images and videos that could not be read (the Ray engine,
        whose rows carry no kind, counts them as "error").
    skipped : sources already in the output (resumed), not scored again.
    ignored : folder entries that are neither images nor videos. unmatched : glob patterns that matched nothing.
    video_fps : {video: (frames, seconds)}. seconds : the whole run. engine, runtime : what ran it
        ("openvino bf16"; for Ray, the number of actors in `actors`).
    """

    engine: str = "local"
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    no_face: int = 0
    errors: dict = field(default_factory=dict)
    skipped: int = 0
    ignored: int = 0
    unmatched: list = field(default_factory=list)
    video_fps: dict = field(default_factory=dict)
    seconds: float = 0.0
    runtime: str | None = None
    actors: int | None = None
    every: int = 1

    def count(self, rows: list[dict], kind: str | None = None, *, frame: bool = False, video: bool = False) -> None:
        """Count the rows of one image, frame or video (`ImageResult.summary`), `kind` the error kind if it failed."""
        error = next((row["error"] for row in rows if row.get("error") is not None), None)
        if error is not None and error != "no face":
            self.errors[kind or "error"] = self.errors.get(kind or "error", 0) + 1
        self.no_face += error == "no face"
        self.faces += sum("face" in row for row in rows)
        if frame:
            self.frames += 1
        elif video:
            self.videos += 1
        else:
            self.images += 1

    def lines(self) -> list[str]:
        """The report of the run, as `agestimate predict` prints it: one line per video, then the totals."""
        rate = (self.images + self.frames) / max(self.seconds, 1e-9)
        if self.engine == "ray":
            return [(f"{self.images} images, {self.faces} faces, {self.no_face} without a face, "
                     f"{sum(self.errors.values())} errors; {rate:.1f} images/s (ray, {self.actors} actors)")]
        lines = [(f"{name}: {frames} frames in {took:.1f} s, {frames / max(took, 1e-9):.1f} frames/s "
                  f"(every {self.every}. frame analysed)") for name, (frames, took) in self.video_fps.items()]
        ignored = f", {self.ignored} other files ignored" if self.ignored else ""
        return lines + [(f"{self.images} images, {self.frames} video frames, {self.faces} faces, "
                         f"{self.no_face} images or frames without a face, errors: {self.errors or 'none'}{ignored}; "
                         f"{rate:.1f} images/s, frames included ({self.runtime})")]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict(sources: Iterable[str | os.PathLike] | Sources, out: str | Path | None = None, *, engine: str = "local",
            model=None, estimator: Estimator | None = None, recursive: bool = False, webcam: int | None = None,
            batch_size: int = 32, every: int = 1, max_frames: int | None = None, annotate: str | Path | None = None,
            neighbours: str | Path | None = None, k: int = 5, interval: float = DEFAULT_LEVEL,
            max_faces: int | None = None, crops: bool = False, threads: int | None = None, backend: str | None = None,
            precision: str = "auto", ray_address: str | None = None, actors: int | None = None,
            show_progress: bool = False, report: Callable[[str], None] | None = None) -> PredictionSummary:
    """A prediction run: every image and video `sources` name scored, the rows written to `out`
    (CSV, JSON Lines or Parquet; None: CSV on stdout; see `agestimate.io.predictions`).

    Resumable: the sources already in an existing `out` are skipped. With `neighbours` (a store)
    each face of an image lists its `k` nearest labelled faces (column neighbours); `annotate`
    writes annotated copies (see `predict_sources`). engine "local" runs `predict_sources` here
    (`estimator`, or one of `model` with max_faces, crops, threads, backend, precision); "ray"
    scores image files on a pool of Ray actors (`agestimate.apps.distributed`, `ray_address`,
    `actors`), and refuses videos, `webcam`, `annotate` and `neighbours` (`EngineOptionError`).
    `report` receives each line worth telling the user (unmatched patterns, what was skipped,
    then `PredictionSummary.lines`). Returns the `PredictionSummary`.
    """
    from agestimate.io.predictions import PredictionWriter, check_output

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    check_output(out)
    say = report or (lambda line: None)
    found = sources if isinstance(sources, Sources) else expand_sources(sources, recursive=recursive)
    for pattern in found.unmatched:
        say(f"warning: no file matches {pattern}")
    if engine == "ray" and (webcam is not None or annotate or neighbours or found.videos):
        raise EngineOptionError("--engine ray scores image files; videos, --webcam, --annotate and --neighbours "
                                "run with --engine local")
    summary = PredictionSummary(engine=engine, ignored=len(found.ignored), unmatched=list(found.unmatched), every=every)
    started = time.perf_counter()
    with PredictionWriter(out) as writer:
        if engine == "ray":
            from agestimate.apps.distributed import expand_path_lists

            images = expand_path_lists(found.images)
            todo = [path for path in images if path not in writer.scored]
            summary.skipped = len(images) - len(todo)
            if summary.skipped:
                say(f"{out}: {summary.skipped} images already scored, skipped (delete it to score them again)")
            _score_on_ray(todo, writer, summary, model=model, batch_size=batch_size, ray_address=ray_address,
                          actors=actors, threads=threads, max_faces=max_faces, crops=crops, interval=interval,
                          backend=backend, precision=precision)
        else:
            todo = Sources(images=[path for path in found.images if str(path) not in writer.scored],
                           videos=[path for path in found.videos if video_name(path) not in writer.scored])
            summary.skipped = len(found.images) + len(found.videos) - len(todo.images) - len(todo.videos)
            if writer.scored:
                say(f"{out}: {len(writer.scored)} images and videos already scored, skipped (delete it to score them "
                    "again)")
            estimator = estimator if estimator is not None else Estimator(
                model, max_faces=max_faces, crops=crops, threads=threads, backend=backend, precision=precision)
            summary.runtime = f"{estimator.encoder.runtime.backend} {estimator.encoder.runtime.precision}"
            _score_here(todo, writer, summary, estimator=estimator, neighbours=neighbours, k=k, webcam=webcam,
                        batch_size=batch_size, every=every, max_frames=max_frames, annotate=annotate,
                        interval=interval, show_progress=show_progress)
    summary.seconds = time.perf_counter() - started
    for line in summary.lines():
        say(line)
    return summary


def _score_here(found: Sources, writer, summary: PredictionSummary, *, estimator, neighbours, k, webcam, **options):
    """The local engine: `predict_sources`, each result's rows written and counted, with neighbours and fps."""
    videos = {video_name(video) for video in found.videos + ([webcam] if webcam is not None else [])}
    lookup = None
    if neighbours:
        from agestimate.store.neighbours import StoreNeighbours

        lookup = StoreNeighbours(neighbours)
    try:
        last = time.perf_counter()
        video_times = {}
        for result in predict_sources(found, estimator=estimator, webcam=webcam, return_embedding=lookup is not None,
                                      **options):
            evidence = lookup(result.faces, k=k) if lookup is not None and result.frame is None else None
            rows = result.summary()
            for row in rows:
                if evidence is not None and "face" in row:
                    row["neighbours"] = [neighbour.to_dict() for neighbour in evidence[row["face"]]]
            writer.write(rows)
            summary.count(rows, result.error_kind, frame=result.frame is not None,
                          video=result.frame is None and result.source in videos)
            now = time.perf_counter()
            if result.frame is not None:  # frames of a video, from the end of what came before it
                frames, first, _ = video_times.get(result.source, (0, last, last))
                video_times[result.source] = (frames + 1, first, now)
            last = now
        summary.video_fps = {name: (frames, end - first) for name, (frames, first, end) in video_times.items()}
    finally:
        if lookup is not None:
            lookup.close()


def _score_on_ray(paths: list[str], writer, summary: PredictionSummary, **options) -> None:
    """The Ray engine: the rows of each image as `agestimate.apps.distributed.score_files` returns them, written and counted."""
    from agestimate.apps.distributed import score_files

    summary.actors = 0
    if not paths:
        return
    for actors, rows in score_files(paths, **options):
        summary.actors = actors
        writer.write(rows)
        summary.count(rows)
