import shutil

import pytest

from agestimate.errors import ModelFileError
from agestimate.runtime.registry import REGISTRY, SHIPPED_WEIGHTS, load_model, weight_path, weights_dir
from agestimate.runtime.sessions import default_providers


def test_weights_are_found_in_the_installed_package_and_match_their_pins():
    for name, weight in REGISTRY.items():
        path = weight_path(name)
        assert path.parent == (SHIPPED_WEIGHTS if weight.shipped else weights_dir()) and path.name == weight.filename


def test_a_tampered_weight_file_is_refused_before_loading(tmp_path):
    for weight in REGISTRY.values():
        if not weight.shipped:
            shutil.copy(weights_dir() / weight.filename, tmp_path / weight.filename)
    target = tmp_path / REGISTRY["recognizer"].filename
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert weight_path("detector", directory=tmp_path).is_file()
    with pytest.raises(ModelFileError, match="w600k_mbf.onnx: SHA-256 does not match"):
        load_model("recognizer", directory=tmp_path)


def test_a_missing_weight_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ModelFileError, match=r"scrfd_500m_bnkps.onnx: weight file missing; reinstall"):
        weight_path("detector", directory=tmp_path)


def test_providers_fall_back_to_cpu_and_can_be_overridden():
    assert default_providers()[-1] == "CPUExecutionProvider"
    model = load_model("detector", backend="onnxruntime", providers=["CPUExecutionProvider"], threads=1)
    assert model.session.get_providers() == ["CPUExecutionProvider"]
