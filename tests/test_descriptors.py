import numpy as np
import onnx
import pytest

from agestimate.descriptors import BLOCKS, Descriptor, DescriptorModel, pool, tapped_recognizer
from agestimate.images import load_image
from agestimate.models import REGISTRY, file_sha256, weight_path

from conftest import FIXTURES


def test_descriptor_names_round_trip_and_bad_names_are_refused():
    descriptor = Descriptor.parse("gap505+grid509+flip")
    assert descriptor == Descriptor(("gap505", "grid509"), flip=True)
    assert descriptor.name == "gap505+grid509+flip" and descriptor.dim == 256 + 2048
    assert descriptor.tensors == ["505", "509"]
    assert descriptor.columns_of(Descriptor.parse("grid509+flip")).tolist() == list(range(256, 2304))
    with pytest.raises(ValueError, match="'grid509' is not part of"):
        descriptor.columns_of(Descriptor.parse("grid509"))
    with pytest.raises(ValueError, match=r"unknown blocks \['pool9'\]"):
        Descriptor.parse("pool9+flip")


def test_the_graph_edit_is_deterministic_and_leaves_the_pinned_file_alone():
    path = weight_path("recognizer")
    model = onnx.load(str(path))
    first = tapped_recognizer(model, ["473", "505", "509"]).SerializeToString()
    assert first == tapped_recognizer(onnx.load(str(path)), ["473", "505", "509"]).SerializeToString()
    assert [output.name for output in onnx.load_from_string(first).graph.output] == ["516", "473", "505", "509"]
    assert len(model.graph.output) == 1
    assert file_sha256(path) == REGISTRY["recognizer"].sha256
    with pytest.raises(ValueError, match="'nope' is not produced"):
        tapped_recognizer(model, ["nope"])


def test_pooling_matches_a_direct_computation():
    maps = np.random.default_rng(0).normal(size=(2, 3, 7, 7)).astype(np.float32)
    assert np.allclose(pool(maps, "global"), maps.mean(axis=(2, 3)))
    grid = pool(maps, "grid2").reshape(2, 3, 4)
    assert np.allclose(grid[:, :, 0], maps[:, :, :4, :4].mean(axis=(2, 3)))
    assert np.allclose(grid[:, :, 3], maps[:, :, 3:, 3:].mean(axis=(2, 3)))


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
    assert set(BLOCKS) == {"emb", "gap473", "gap505", "gap509", "grid509"}
