import numpy as np
import onnx
import onnxruntime
import pytest

from agestimate.faces.descriptors import BLOCKS, Descriptor, DescriptorModel, recogniser_input, tapped_recognizer
from agestimate.io.images import load_image
from agestimate.runtime.registry import REGISTRY, file_sha256, weight_path

from conftest import FIXTURES


def test_descriptor_names_round_trip_and_bad_names_are_refused():
    descriptor = Descriptor.parse("gap505+grid509+flip")
    assert descriptor == Descriptor(("gap505", "grid509"), flip=True)
    assert descriptor.name == "gap505+grid509+flip" and descriptor.dim == 256 + 2048
    assert descriptor.columns_of(Descriptor.parse("grid509+flip")).tolist() == list(range(256, 2304))
    with pytest.raises(ValueError, match="'grid509' is not part of"):
        descriptor.columns_of(Descriptor.parse("grid509"))
    with pytest.raises(ValueError, match=r"unknown blocks \['pool9'\]"):
        Descriptor.parse("pool9+flip")


def test_the_graph_edit_is_deterministic_and_leaves_the_pinned_file_alone():
    path = weight_path("recognizer")
    model = onnx.load(str(path))
    blocks = ["gap473", "gap505", "gap509", "grid509"]
    first = tapped_recognizer(model, blocks).SerializeToString()
    assert first == tapped_recognizer(onnx.load(str(path)), blocks).SerializeToString()
    assert [output.name for output in onnx.load_from_string(first).graph.output] == ["516", *blocks]
    assert len(model.graph.output) == 1
    assert file_sha256(path) == REGISTRY["recognizer"].sha256


def test_pooling_in_the_graph_matches_numpy_on_the_raw_maps(encoder):
    crop = load_image(next((FIXTURES / "utkface").iterdir()))
    aligned = encoder.align(crop, encoder.detect(crop)[:1])
    tapped = tapped_recognizer(onnx.load(str(weight_path("recognizer"))), ["gap505", "grid509"])
    tapped.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in ("505", "509"))
    session = onnxruntime.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    blob = recogniser_input(aligned)
    gap505, grid509, raw505, raw509 = session.run(["gap505", "grid509", "505", "509"], {"input.1": blob})
    assert np.allclose(gap505[:, :, 0, 0], raw505.mean(axis=(2, 3)), atol=1e-5)
    cells = [raw509[:, :, r:r + 4, c:c + 4].mean(axis=(2, 3)) for r in (0, 3) for c in (0, 3)]
    assert np.allclose(grid509.reshape(1, -1), np.stack(cells, axis=2).reshape(1, -1), atol=1e-5)
    _, features = DescriptorModel("gap505+grid509", backend="onnxruntime", threads=1)(aligned)
    assert np.allclose(features, np.concatenate([gap505.reshape(1, -1), grid509.reshape(1, -1)], axis=1), atol=1e-5)


def test_flip_averaging_is_the_mean_of_the_crop_and_its_mirror(encoder):
    crop = load_image(next((FIXTURES / "utkface").iterdir()))
    aligned = encoder.align(crop, encoder.detect(crop)[:1])
    plain = DescriptorModel("gap505+grid509", threads=1)
    flipped = DescriptorModel("gap505+grid509+flip", threads=1)
    embedding, features = flipped(aligned)
    plain_embedding, plain_features = plain(aligned)
    _, mirror_features = plain(aligned[:, :, ::-1].copy())
    assert np.allclose(embedding, plain_embedding, atol=1e-5)  # the identity embedding is never flipped
    assert np.allclose(features, (plain_features + mirror_features) / 2, atol=1e-4)
    assert features.shape == (1, 2304)
    emb_only = DescriptorModel("emb", threads=1)(aligned)
    assert np.allclose(emb_only[0], emb_only[1], atol=1e-6)
    assert set(BLOCKS) == {"emb", "gap473", "gap505", "gap509", "grid509", "adapted"}
