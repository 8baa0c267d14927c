"""The task branch: the torch copy of the recogniser's last stage, its training over cached
trunk maps, and the ONNX branch merged into the recogniser pass as the `adapted` block."""

import numpy as np
import onnx
import onnxruntime
import pytest

from agestimate.errors import ModelFileError
from agestimate.faces.descriptors import DescriptorModel
from agestimate.io.images import load_image
from agestimate.runtime.registry import REGISTRY, file_sha256, weight_path

from conftest import FIXTURES

torch = pytest.importorskip("torch")
from agestimate.training import branch as branch_training  # noqa: E402


@pytest.fixture(scope="module")
def crops(encoder):
    images = [load_image(path) for path in sorted((FIXTURES / "utkface").iterdir())]
    return np.concatenate([encoder.align(image, encoder.detect(image)[:1]) for image in images])


@pytest.fixture(scope="module")
def trunk():
    recogniser = onnx.load(str(weight_path("recognizer")))
    return recogniser, onnxruntime.InferenceSession(branch_training.trunk_model(recogniser),
                                                     providers=["CPUExecutionProvider"])


def maps_of(trunk_session, crops):
    maps = np.zeros((len(crops), *branch_training.MAP_SHAPE), np.float16)
    branch_training.trunk_maps(trunk_session, crops, maps)
    return maps


def test_the_torch_branch_over_the_trunk_maps_reproduces_grid509(trunk, crops):
    recogniser, session = trunk
    branch = branch_training.RecogniserBranch(recogniser).eval()
    with torch.no_grad():
        features = branch(torch.from_numpy(maps_of(session, crops)).float()).numpy()
    _, grid509 = DescriptorModel("grid509", backend="onnxruntime", threads=1)(crops)
    assert np.allclose(features, grid509, atol=1e-3 * np.abs(grid509).max())  # float16 maps


def test_fine_tuning_changes_the_branch_and_its_onnx_runs_inside_the_recogniser(trunk, crops, tmp_path, monkeypatch):
    recogniser, session = trunk
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    views = np.stack([maps_of(session, crops), maps_of(session, np.stack([branch_training.augmented(c, rng) for c in crops]))])
    np.save(work / "train.npy", views)
    np.save(work / "val.npy", views[:1])
    labels = {"age": np.array([25, 25, 25, 25, 25, 3, 45, 70], np.float32), "gender": np.array([0, 0, 1, 1, 1, 0, 0, 1])}
    for split in ("train", "val"):
        np.savez(work / f"{split}_labels.npz", **labels)
    out = tmp_path / "adapted.onnx"
    result = branch_training.fine_tune(work, epochs=2, batch_size=4, lr_branch=1e-2, out=out)
    assert [record["epoch"] for record in result["history"]] == [1, 2]
    pretrained = branch_training.RecogniserBranch(recogniser)
    assert not torch.equal(result["branch"].layers[0].weight, pretrained.layers[0].weight)

    # the exported branch, merged into the recogniser, gives what the torch branch gives
    monkeypatch.setitem(REGISTRY, "adapted", REGISTRY["adapted"].__class__(
        out.name, file_sha256(out), "test branch", shipped=out.parent.name))
    monkeypatch.setattr("agestimate.runtime.registry.WEIGHTS", out.parent.parent)
    _, features = DescriptorModel("grid509+adapted", backend="onnxruntime", threads=1)(crops)
    with torch.no_grad():
        expected = result["branch"].eval()(torch.from_numpy(maps_of(session, crops)).float()).numpy()
    assert np.allclose(features[:, 2048:], expected, atol=1e-3 * np.abs(expected).max())
    _, grid509 = DescriptorModel("grid509", backend="onnxruntime", threads=1)(crops)
    assert np.allclose(features[:, :2048], grid509, atol=1e-5)  # the frozen trunk still gives grid509


def test_augmented_views_are_crops_of_the_same_size_and_differ(crops):
    rng = np.random.default_rng(1)
    views = [branch_training.augmented(crops[0], rng) for _ in range(8)]
    assert all(view.shape == (112, 112, 3) and view.dtype == np.uint8 for view in views)
    assert min(np.abs(view.astype(int) - crops[0]).mean() for view in views) > 0


def test_the_shipped_branch_is_checked_before_use(tmp_path, monkeypatch):
    path = weight_path("adapted")  # the shipped file matches its pin
    tampered = tmp_path / "branches" / path.name
    tampered.parent.mkdir()
    tampered.write_bytes(path.read_bytes() + b"\0")
    monkeypatch.setattr("agestimate.runtime.registry.WEIGHTS", tmp_path)
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        DescriptorModel("adapted", backend="onnxruntime")


def test_prepare_caches_each_view_of_the_train_split_and_refuses_what_it_cannot_use(tmp_path):
    from agestimate.errors import StoreError
    from agestimate.store.embedding import embed

    images = sorted((FIXTURES / "utkface").iterdir())
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender,split\n" + "".join(
        f"{path},{path.name.split('_')[0]},{path.name.split('_')[1]},{'val' if i < 2 else 'train'}\n"
        for i, path in enumerate(images)))
    embed(images, store=tmp_path / "store", labels=labels, descriptor="grid509")
    description = branch_training.prepare(tmp_path / "store", tmp_path / "work")
    assert description["splits"]["train"]["faces"] == 6 and description["splits"]["val"]["faces"] == 2
    train = np.load(tmp_path / "work" / "train.npy")
    assert train.shape == (branch_training.VIEWS, 6, *branch_training.MAP_SHAPE) and train.dtype == np.float16
    assert not np.array_equal(train[0], train[1])  # an augmented view is not the crop itself
    assert branch_training.prepare(tmp_path / "store", tmp_path / "work") == description  # computed once
    with pytest.raises(ValueError, match="holds the maps of the store"):
        branch_training.prepare(tmp_path / "other", tmp_path / "work")
    embed(images, store=tmp_path / "people", labels="utkface", descriptor="grid509")  # labels without splits
    with pytest.raises(StoreError, match="no labelled faces in the train split"):
        branch_training.prepare(tmp_path / "people", tmp_path / "work2")
