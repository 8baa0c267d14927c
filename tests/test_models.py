import shutil

import pytest

from agestimate.errors import ModelFileError
from agestimate.runtime.registry import REGISTRY, WEIGHTS, load_model, weight_path, weights_dir
from agestimate.runtime.sessions import default_providers


def test_weights_are_found_in_the_installed_package_and_match_their_pins():
    for name, weight in REGISTRY.items():
        path = weight_path(name)
        assert path.parent == (WEIGHTS / weight.shipped if weight.shipped else weights_dir()) and path.name == weight.filename


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


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_the_faster_post_processing_finds_exactly_what_insightface_finds(backend):
    """SCRFDetector decodes only the anchors over the threshold; insightface decodes all, then selects."""
    import cv2
    import numpy as np

    from conftest import FIXTURES

    detector = load_model("detector", backend=backend, precision="f32", threads=1)
    images = [cv2.imread(str(path)) for path in sorted((FIXTURES / "fgnet").iterdir())[:4]]
    images.append(cv2.imread(str(weights_dir() / "players.jpg")))
    for image, size in zip(images, [(320, 320), (640, 640), (224, 224), (640, 640), (640, 640)]):
        for threshold in (0.5, 0.02):  # a low threshold keeps many anchors, of every stride
            ours = detector.detect(image, input_size=size, det_thresh=threshold)
            reference = _insightface_detect(detector, image, size, threshold)
            assert len(ours[0]) > 0
            for mine, expected in zip(ours, reference):
                np.testing.assert_array_equal(mine, expected)


def _insightface_detect(detector, image, size, threshold):
    """`detect` with insightface's own `SCRFD.forward` on the same sessions."""
    from insightface.model_zoo.scrfd import SCRFD

    original = type(detector).forward
    try:
        type(detector).forward = SCRFD.forward
        return detector.detect(image, input_size=size, det_thresh=threshold)
    finally:
        type(detector).forward = original
