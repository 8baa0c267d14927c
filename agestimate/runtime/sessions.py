"""Runtimes: the engines that run the pinned face models, behind one seam.

Code above this module calls ``session.run(output_names, feeds)``, the shape of an ONNX
Runtime session that insightface's SCRFD already uses, and never asks which engine answers.
The engine, its precision and its threads are chosen once, here, when a model is opened:

- ``"openvino"``: the default on CPUs. bf16 where the CPU computes it natively
  (``OPTIMIZATION_CAPABILITIES`` lists BF16), int8 models elsewhere (quantized by
  `agestimate.training.quantize`, f32 where a model has no int8 version); f32 by choice.
  Compiled models are kept in a cache under the user cache folder (`agestimate.runtime.cache`),
  so later processes start faster.
- ``"onnxruntime"``: fp32, with CUDA when onnxruntime offers it (the ``gpu`` extra); the
  default when it does.

Every session describes itself (`RuntimeInfo`) so results can say what computed them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import onnxruntime

from agestimate.runtime.cache import compile_cached

logger = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("auto", "bf16", "f32", "int8")


@dataclass(frozen=True)
class RuntimeInfo:
    """What runs a model: backend, device (or ONNX Runtime providers), precision and threads."""

    backend: str
    device: str
    precision: str
    threads: int | None

    def as_dict(self) -> dict:
        return asdict(self)


class TensorInfo(NamedTuple):
    """A graph input or output as ONNX Runtime's `NodeArg` shows it: '?' for a dynamic dimension."""

    name: str
    shape: list
    type: str = "tensor(float)"


# -- choosing ------------------------------------------------------------------------------
def default_providers() -> list[str]:
    """ONNX Runtime providers: CUDA first when this build offers it, CPU always as the fallback."""
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def providers_or_default(providers) -> list[str]:
    """The providers asked for, as a list, or `default_providers` when none are."""
    return list(providers) if providers else default_providers()


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def default_backend() -> str:
    """ONNX Runtime when it offers CUDA (a GPU is there), else OpenVINO when installed."""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() or not openvino_available():
        return "onnxruntime"
    return "openvino"


def check_backend(backend: str | None) -> str:
    """`backend`, or the default when None; a clear error for unknown or uninstalled ones."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "openvino" and not openvino_available():
        raise ValueError("backend 'openvino' needs the openvino package: pip install openvino")
    return backend


# oneDNN's instruction sets that compute bf16 natively; ONEDNN_MAX_CPU_ISA (which OpenVINO's CPU
# plugin obeys) set below them makes a CPU compute as one without bf16, while OpenVINO still lists BF16.
BF16_ISAS = ("AVX512_CORE_BF16", "AVX10", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "ALL", "DEFAULT")


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this processor (as limited by ONEDNN_MAX_CPU_ISA)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and not limit.startswith(BF16_ISAS):
        return False
    return "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(precision: str) -> str:
    """'auto' becomes bf16 where the CPU has it, else int8; 'bf16' on a CPU without it is an error.

    int8 asks for a model's int8 version: the loaders (`agestimate.runtime.registry`,
    `agestimate.faces.descriptors`) choose it, and a model without one runs in f32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "int8"
    if precision == "bf16" and not cpu_has_bf16():
        raise ValueError("precision 'bf16' asked for, but this CPU has no native bf16 (OpenVINO would emulate it slowly); use 'f32' or 'auto'")
    return precision


@functools.lru_cache(maxsize=1)
def _openvino_core():
    import openvino

    return openvino.Core()


# -- sessions ------------------------------------------------------------------------------
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


class OnnxRuntimeSession:
    """An ONNX Runtime session over a serialised graph, with its `RuntimeInfo`."""

    def __init__(self, model: bytes, *, providers=None, threads: int | None = None):
        self.session = onnxruntime.InferenceSession(
            model, sess_options=session_options(threads), providers=providers_or_default(providers)
        )
        self.info = RuntimeInfo("onnxruntime", ",".join(self.session.get_providers()), "f32", threads)

    def run(self, output_names, feeds) -> list[np.ndarray]:
        return self.session.run(output_names, feeds)

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return self.session.get_providers()


def _shape(port) -> list:
    return [dimension.get_length() if dimension.is_static else "?" for dimension in port.get_partial_shape()]


class OpenVINOSession:
    """An OpenVINO model compiled for the CPU, with the `run(output_names, feeds)` of an ONNX
    Runtime session (and `get_inputs`/`get_outputs`, for insightface's SCRFD).

    Parameters
    ----------
    model : the ONNX graph, serialised, or an OpenVINO IR graph (.xml) with its `weights` (.bin).
    precision : "auto" (bf16 where the CPU has it, else int8), "bf16", "f32" or "int8" (the
        precision of the model's quantized operations; a model without any runs in f32).
    threads : inference threads (default: OpenVINO's choice, all cores).
    input_shape : compile for this one input shape instead of the graph's (dynamic) one.
    """

    def __init__(self, model: bytes, *, weights: bytes = b"", precision: str = "auto", threads: int | None = None,
                 input_shape=None):
        core = _openvino_core()
        self._model, self._weights, self._threads, self._input_shape = model, weights, threads, input_shape
        graph = core.read_model(model=model, weights=weights)
        if input_shape is not None:
            graph.reshape({graph.inputs[0]: list(input_shape)})
        self.precision = resolve_precision(precision)
        if self.precision == "int8" and not any(op.get_type_name() == "FakeQuantize" for op in graph.get_ops()):
            self.precision = "f32"  # no int8 version of this model
        config = {"PERFORMANCE_HINT": "LATENCY",  # the operations around the quantized ones run in f32
                  "INFERENCE_PRECISION_HINT": "f32" if self.precision == "int8" else self.precision,
                  # two models share the cores (detector in a worker thread, recogniser in the caller's)
                  "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = compile_cached(core, graph, model + weights, config, input_shape)
        # Ports by the graph's own names (those ONNX Runtime reports): a freshly compiled model
        # also answers to internal tensor names ('450' beside 'score_8'), one imported from the
        # cache does not, so the compiled model's names are never handed out.
        self._inputs = {port.get_any_name(): compiled for port, compiled in zip(graph.inputs, self.compiled.inputs)}
        self._outputs = {port.get_any_name(): compiled for port, compiled in zip(graph.outputs, self.compiled.outputs)}
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns
        self.info = RuntimeInfo("openvino", "CPU", self.precision, threads)

    def reshaped(self, input_shape) -> OpenVINOSession:
        """The same model compiled for one static input shape (SCRFD, per detector size)."""
        return OpenVINOSession(self._model, weights=self._weights, precision=self.precision, threads=self._threads,
                               input_shape=input_shape)

    def run(self, output_names, feeds) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer({self._inputs[name]: value for name, value in feeds.items()})
        return [results[self._outputs[name]] for name in (output_names or self._outputs)]

    def get_inputs(self) -> list[TensorInfo]:
        return [TensorInfo(name, _shape(port)) for name, port in self._inputs.items()]

    def get_outputs(self) -> list[TensorInfo]:
        return [TensorInfo(name, _shape(port)) for name, port in self._outputs.items()]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:CPU:{self.precision}"]


# A detector input size's own compiled model runs 5-15% faster than the model compiled for any
# size, but costs 0.1-0.3 s to make (imported from the cache, or compiled): worth it for a size that
# comes often, not for each of the dozen sizes of a short run (BENCHMARKS.md, issue 26).
OWN_MODEL_AFTER = 128


class SizedSession:
    """An `OpenVINOSession` compiled for any input shape, answering for one shape (SCRFD's session
    for one detector size): it runs the general model until this shape has come `OWN_MODEL_AFTER`
    times, then a copy compiled for this shape alone."""

    def __init__(self, general: OpenVINOSession, input_shape):
        self.general, self.input_shape = general, list(input_shape)
        self.info = general.info
        self.own: OpenVINOSession | None = None
        self.runs = 0
        self._lock = threading.Lock()

    def run(self, output_names, feeds) -> list[np.ndarray]:
        return (self.own or self._counted()).run(output_names, feeds)

    def _counted(self) -> OpenVINOSession:
        with self._lock:
            self.runs += 1
            if self.own is None and self.runs >= OWN_MODEL_AFTER:
                self.own = self.general.reshaped(self.input_shape)
            return self.own or self.general

    def get_inputs(self) -> list[TensorInfo]:
        (name, *_), *others = self.general.get_inputs()
        return [TensorInfo(name, self.input_shape), *others]

    def get_outputs(self) -> list[TensorInfo]:
        return self.general.get_outputs()

    def get_providers(self) -> list[str]:
        return self.general.get_providers()


def open_session(model: bytes, *, backend: str | None = None, providers=None, threads: int | None = None,
                 precision: str = "auto"):
    """A session over the serialised ONNX graph `model` on `backend` (default: `default_backend`).

    `providers` apply to ONNX Runtime, `precision` to OpenVINO.
    """
    if check_backend(backend) == "openvino":
        return OpenVINOSession(model, precision=precision, threads=threads)
    return OnnxRuntimeSession(model, providers=providers, threads=threads)
