"""OpenVINO's compiled models cached on disk, safe for any number of threads and processes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from agestimate.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where compiled models are cached: $AGESTIMATE_CACHE, else the user cache folder."""
    root = os.environ.get("AGESTIMATE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agestimate"
    return Path(root) / "openvino"


def _cache_key(core, model: bytes, config: dict, input_shape) -> str:
    """What a compiled model depends on: the graph, its input shape, the compile options, the
    OpenVINO build and the processor (its name and what it computes natively)."""
    import openvino

    digest = hashlib.sha256(model)
    digest.update(json.dumps([sorted(config.items()), input_shape, openvino.get_version(),
                              core.get_property("CPU", "FULL_DEVICE_NAME"),
                              core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")], default=str).encode())
    return digest.hexdigest()


def _same_ports(compiled, graph) -> bool:
    """Whether a compiled model has the graph's inputs (names and shapes) and outputs (names), in
    order. Output shapes are not compared: compiling refines them ([?,?,1] becomes [?,2..,1])."""
    ports = list(zip(compiled.inputs, graph.inputs)) + list(zip(compiled.outputs, graph.outputs))
    return ((len(compiled.inputs), len(compiled.outputs)) == (len(graph.inputs), len(graph.outputs))
            and all(port.get_any_name() in compiled_port.get_names() for compiled_port, port in ports)
            and all(compiled_port.get_partial_shape() == port.get_partial_shape()
                    for compiled_port, port in zip(compiled.inputs, graph.inputs)))


def compile_cached(core, graph, model: bytes, config: dict, input_shape=None):
    """`graph` (read from the bytes `model`: ONNX, or IR graph and weights; reshaped to `input_shape`) compiled for the CPU
    by the OpenVINO `core`, through the model cache in `cache_dir()`.

    Safe for any number of threads and processes on one cache folder, unlike OpenVINO's own
    CACHE_DIR, which writes each blob in place: a process starting beside another read it
    half-written, deleted it under its writer, or died of SIGBUS in its memory map (issue 26).
    Here an entry is written to a temporary file and renamed into place, so a reader sees a
    whole file or none; one that does not import, or imports with other ports than the graph's,
    is compiled again and replaced. A cache folder that cannot be written only costs the compile.
    """
    path = cache_dir() / f"{_cache_key(core, model, config, input_shape)}.blob"
    try:
        compiled = core.import_model(path.read_bytes(), "CPU", config)
        if _same_ports(compiled, graph):
            return compiled
        logger.warning("%s: the cached model has other inputs or outputs than its graph; compiling again", path)
    except FileNotFoundError:
        pass
    except (OSError, RuntimeError) as error:  # unreadable, truncated, or from another OpenVINO
        logger.warning("%s: cached model unusable, compiling again: %s", path, str(error).strip())
    compiled = core.compile_model(graph, "CPU", config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(compiled.export_model().getvalue())
    except OSError as error:  # a read-only or full disk: compile every time instead
        logger.info("compiled model not cached (%s): %s", path, error)
    return compiled
