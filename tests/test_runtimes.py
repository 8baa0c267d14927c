import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from agestimate.errors import ModelFileError
from agestimate.faces.encoder import FaceEncoder
from agestimate.io.images import load_image
from agestimate.runtime import sessions as runtimes
from agestimate.runtime.cache import cache_dir
from agestimate.runtime.registry import REGISTRY, load_model, weights_dir
from agestimate.runtime.sessions import (OnnxRuntimeSession, OpenVINOSession, SizedSession, open_session,
                                         resolve_precision)

from conftest import FIXTURES, PATIENCE_SECONDS


def tiny_model(output: str = "y") -> bytes:
    """relu(x @ W) through an Identity, x of shape (batch, 3), with a dynamic batch. Compiled
    fresh, OpenVINO names the output both "r" and `output`; imported from a blob, only `output`."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], [1, -1, 2, 0, -3, 1])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Identity", ["r"], [output])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 2])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


TINY_X = np.array([[1, 2, 3], [-1, 0, 1]], np.float32)
TINY_Y = np.maximum(TINY_X @ np.array([[1, -1], [2, 0], [-3, 1]], np.float32), 0)


def test_both_backends_answer_run_like_an_onnx_runtime_session():
    for backend in ("openvino", "onnxruntime"):
        session = open_session(tiny_model(), backend=backend, precision="f32", threads=1)
        (y,) = session.run(["y"], {"x": TINY_X})
        np.testing.assert_allclose(y, TINY_Y, rtol=1e-6)
        assert [i.name for i in session.get_inputs()] == ["x"] and session.get_outputs()[0].name == "y"
        assert session.info.backend == backend and session.info.precision == "f32"


def test_a_static_openvino_session_reports_its_fixed_shape():
    session = OpenVINOSession(tiny_model(), precision="f32").reshaped([4, 3])
    assert session.get_inputs()[0].shape == [4, 3]
    assert OpenVINOSession(tiny_model(), precision="f32").get_inputs()[0].shape == ["?", 3]


def test_a_sized_session_runs_the_general_model_then_its_own_copy(monkeypatch):
    monkeypatch.setattr(runtimes, "OWN_MODEL_AFTER", 3)
    sized = SizedSession(OpenVINOSession(tiny_model(), precision="f32"), [2, 3])
    assert sized.get_inputs()[0].shape == [2, 3]  # what insightface's SCRFD checks of a size's session
    for run in range(1, 5):
        (y,) = sized.run(["y"], {"x": TINY_X})
        np.testing.assert_allclose(y, TINY_Y, rtol=1e-6)
        assert (sized.own is None) == (run < 3)
    assert sized.own.get_inputs()[0].shape == [2, 3]


def test_precision_is_decided_from_the_cpu_and_f32_can_be_forced(monkeypatch):
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto") == "int8"
    # a model without quantized operations has no int8 version: it runs in f32
    assert OpenVINOSession(tiny_model(), precision="auto").info.precision == "f32"
    with pytest.raises(ValueError, match="no native bf16"):
        resolve_precision("bf16")
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("f32") == "f32"
    assert OpenVINOSession(tiny_model(), precision="f32").info.precision == "f32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8")


class CountingCore:
    """OpenVINO's Core, counting the models it compiles (the rest goes to the real one)."""

    def __init__(self, core):
        self.core, self.compiled = core, 0

    def compile_model(self, *args, **kwargs):
        self.compiled += 1
        return self.core.compile_model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.core, name)


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    """An empty compiled-model cache folder, and the counting Core compiling into it."""
    monkeypatch.setenv("AGESTIMATE_CACHE", str(tmp_path / "cache"))
    core = CountingCore(runtimes._openvino_core())
    monkeypatch.setattr(runtimes, "_openvino_core", lambda: core)
    return core


def cached_blobs():
    return sorted(cache_dir().glob("*.blob"))


def assert_answers_by_its_graph_names(session):
    assert [port.name for port in session.get_inputs()] == ["x"] and [port.name for port in session.get_outputs()] == ["y"]
    for names in (["y"], None):
        np.testing.assert_allclose(session.run(names, {"x": TINY_X})[0], TINY_Y, rtol=1e-6)


def test_a_model_compiled_or_imported_from_the_cache_answers_by_the_same_names(model_cache):
    """Issue 26: the detector's output 'score_8' was also '450' when compiled fresh, only 'score_8'
    when imported, so a session opened beside a cached one asked for a name it did not have."""
    fresh = OpenVINOSession(tiny_model(), precision="f32")
    imported = OpenVINOSession(tiny_model(), precision="f32")
    assert model_cache.compiled == 1 and len(cached_blobs()) == 1
    assert "r" in fresh.compiled.outputs[0].get_names() and "r" not in imported.compiled.outputs[0].get_names()
    for session in (fresh, imported):
        assert_answers_by_its_graph_names(session)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another model"])
def test_a_damaged_cache_entry_is_compiled_again_and_replaced(model_cache, damage):
    OpenVINOSession(tiny_model(), precision="f32")
    (blob,) = cached_blobs()
    good = blob.read_bytes()
    if damage == "another model":
        OpenVINOSession(tiny_model(output="z"), precision="f32")
        (other,) = set(cached_blobs()) - {blob}
        blob.write_bytes(other.read_bytes())  # imports fine, but answers "z"
    else:
        blob.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00agestimate" * 100, "empty": b""}[damage])
    compiled_before = model_cache.compiled
    assert_answers_by_its_graph_names(OpenVINOSession(tiny_model(), precision="f32"))
    assert model_cache.compiled == compiled_before + 1
    assert_answers_by_its_graph_names(OpenVINOSession(tiny_model(), precision="f32"))
    assert model_cache.compiled == compiled_before + 1  # the entry was replaced by one that imports


def test_a_cache_folder_that_cannot_be_written_costs_only_the_compile(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("AGESTIMATE_CACHE", str(tmp_path / "file"))
    assert_answers_by_its_graph_names(OpenVINOSession(tiny_model(), precision="f32"))


def test_threads_opening_one_model_at_once_on_an_empty_cache_all_get_working_sessions(model_cache):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda _: OpenVINOSession(tiny_model(), precision="f32"), range(8)))
    for session in sessions:
        assert_answers_by_its_graph_names(session)
    assert len(cached_blobs()) == 1 and not list(cache_dir().glob(".*.tmp"))


def test_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        open_session(tiny_model(), backend="tensorrt")


def test_the_sha_check_comes_before_openvino_compiles_anything(tmp_path, monkeypatch):
    for weight in REGISTRY.values():
        if not weight.shipped:
            shutil.copy(weights_dir() / weight.filename, tmp_path / weight.filename)
    target = tmp_path / REGISTRY["detector"].filename
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    compiled = []
    monkeypatch.setattr(OpenVINOSession, "__init__", lambda self, *a, **k: compiled.append(a))
    with pytest.raises(ModelFileError, match="scrfd_500m_bnkps.onnx: SHA-256 does not match"):
        load_model("detector", backend="openvino", directory=tmp_path)
    with pytest.raises(ModelFileError, match="scrfd_500m_bnkps.onnx: SHA-256 does not match"):
        FaceEncoder(backend="openvino", model_dir=tmp_path)
    assert compiled == []


@pytest.fixture(scope="module")
def encoders():
    return {backend: FaceEncoder(backend=backend, precision="f32", threads=2, descriptor="grid509")
            for backend in ("openvino", "onnxruntime")}


def test_openvino_and_onnx_runtime_agree_on_the_fixtures(encoders):
    images = [load_image(path) for path in sorted((FIXTURES / "fgnet").iterdir())]
    images += [load_image(path) for path in sorted((FIXTURES / "utkface").iterdir())[:3]]
    for image in images:
        found = {backend: encoder.detect(image) for backend, encoder in encoders.items()}
        assert len(found["openvino"]) == len(found["onnxruntime"]) > 0
        for a, b in zip(found["openvino"], found["onnxruntime"]):
            assert np.abs(a.landmarks - b.landmarks).max() < 0.5  # pixels
        aligned = FaceEncoder.align(image, found["onnxruntime"])
        (e1, f1), (e2, f2) = (encoder.embed(aligned) for encoder in encoders.values())
        assert (e1 * e2).sum(axis=1).min() > 0.999
        assert np.abs(f1 - f2).max() < 1e-2 * np.abs(f2).max()


def test_the_encoder_records_what_runs_it(encoders):
    assert encoders["openvino"].runtime.as_dict() == {"backend": "openvino", "device": "CPU", "precision": "f32",
                                                      "threads": 2}
    assert encoders["onnxruntime"].runtime.backend == "onnxruntime"
    assert isinstance(encoders["onnxruntime"].describer.session, OnnxRuntimeSession)


@pytest.mark.skipif(not runtimes.cpu_has_bf16(), reason="this CPU has no native bf16 (the f32 path is tested above)")
def test_the_bf16_path_stays_close_to_onnx_runtime_fp32(encoders):
    bf16 = FaceEncoder(backend="openvino", precision="auto", threads=2, descriptor="grid509")
    assert bf16.runtime.precision == "bf16"
    image = load_image(sorted((FIXTURES / "fgnet").iterdir())[0])
    found = {"bf16": bf16.detect(image), "fp32": encoders["onnxruntime"].detect(image)}
    assert len(found["bf16"]) == len(found["fp32"]) > 0
    assert np.abs(found["bf16"][0].landmarks - found["fp32"][0].landmarks).max() < 1.5  # pixels
    aligned = FaceEncoder.align(image, found["fp32"])
    (e1, _), (e2, _) = bf16.embed(aligned), encoders["onnxruntime"].embed(aligned)
    assert (e1 * e2).sum(axis=1).min() > 0.995


@pytest.fixture(scope="module")
def fp32_default():
    """ONNX Runtime fp32 with the default descriptor: what the int8 models are measured against."""
    return FaceEncoder(backend="onnxruntime", threads=2)


def assert_close_to_fp32(encoder, fp32):
    """Landmarks within 1.5 px and embedding and features at cosine 0.98 or more to ONNX Runtime fp32."""
    images = [load_image(path) for path in sorted((FIXTURES / "fgnet").iterdir())[:2]]
    images += [load_image(path) for path in sorted((FIXTURES / "utkface").iterdir())[:4]]
    for image in images:
        found = {"tested": encoder.detect(image), "fp32": fp32.detect(image)}
        assert len(found["tested"]) == len(found["fp32"]) > 0
        assert np.abs(found["tested"][0].landmarks - found["fp32"][0].landmarks).max() < 1.5  # pixels
        aligned = FaceEncoder.align(image, found["fp32"])
        (e1, f1), (e2, f2) = encoder.embed(aligned), fp32.embed(aligned)
        assert (e1 * e2).sum(axis=1).min() > 0.98
        cosine = (f1 * f2).sum(axis=1) / np.linalg.norm(f1, axis=1) / np.linalg.norm(f2, axis=1)
        assert cosine.min() > 0.98


def test_the_int8_path_stays_close_to_onnx_runtime_fp32(fp32_default):
    int8 = FaceEncoder(backend="openvino", precision="int8", threads=2)
    assert int8.runtime.precision == "int8"
    assert_close_to_fp32(int8, fp32_default)
    # a descriptor with blocks the int8 recogniser does not compute runs in f32
    assert FaceEncoder(backend="openvino", precision="int8", threads=2, descriptor="gap473").runtime.precision == "f32"


def test_a_cpu_without_bf16_gets_int8(monkeypatch, fp32_default):
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: False)
    encoder = FaceEncoder(backend="openvino", threads=2)
    assert encoder.runtime.precision == "int8"
    assert_close_to_fp32(encoder, fp32_default)


def test_int8_and_f32_run_on_an_avx2_only_cpu(tmp_path):
    """oneDNN limited to AVX2 (no AVX-512, no VNNI, no bf16: OpenVINO's kernels for such CPUs) in a
    new process: auto chooses int8, and int8 and f32 give the embedding of ONNX Runtime fp32."""
    script = (
        "import sys, numpy as np\n"
        "from agestimate.faces.encoder import FaceEncoder\n"
        "from agestimate.io.images import load_image\n"
        "image = load_image(sys.argv[1])\n"
        "fp32 = FaceEncoder(backend='onnxruntime', threads=2)\n"
        "aligned = FaceEncoder.align(image, fp32.detect(image))\n"
        "reference = fp32.embed(aligned)[0]\n"
        "for precision in ('auto', 'f32'):\n"
        "    encoder = FaceEncoder(backend='openvino', precision=precision, threads=2)\n"
        "    print(precision, encoder.runtime.precision, float((encoder.embed(aligned)[0] * reference).sum(axis=1).min()))\n")
    image = sorted((FIXTURES / "fgnet").iterdir())[0]
    result = subprocess.run([sys.executable, "-c", script, str(image)], capture_output=True, text=True, timeout=PATIENCE_SECONDS,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[:2] for line in lines] == [["auto", "int8"], ["f32", "f32"]]  # auto: int8 without bf16
    assert min(float(line[2]) for line in lines) > 0.98
