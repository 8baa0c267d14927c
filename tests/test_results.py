"""What predict returns: `ImageResult`, a sequence of `Face` with its views; per-call options
that load nothing; the same options on predict and predict_batch; the deprecated names."""

import inspect
import json
import sys

import numpy as np
import pytest

import agestimate
from agestimate import estimator as estimator_module
from agestimate.results import Face, ImageResult, predicted_face

from conftest import add_bad_files

OPTIONS = {"model", "max_faces", "crops", "return_embedding", "max_pixels", "backend", "interval"}


def test_predict_returns_a_sequence_of_faces_with_its_image_model_and_runtime(players_path, tmp_path):
    result = agestimate.predict(players_path)
    assert isinstance(result, ImageResult) and len(result) == 22
    assert all(isinstance(face, Face) for face in result) and result[0] is result.faces[0]
    assert result == list(result.faces) and result[:2] == result.faces[:2]
    assert (result.width, result.height) == (1237, 800)
    assert result.model == "default"
    assert result.runtime["backend"] in ("openvino", "onnxruntime") and result.runtime["precision"]
    body = json.loads(result.to_json())
    assert body["image"] == {"width": 1237, "height": 800} and body["model"] == "default"
    assert body["runtime"] == result.runtime and body["faces"] == [face.to_dict() for face in result]
    frame = result.to_pandas()
    assert len(frame) == 22 and frame.to_dict("records")[0] == pytest.approx(result.summary()[0])
    assert result.plot().shape == (800, 1237, 3)
    saved = result.save(tmp_path / "drawn" / "players.png")
    from agestimate.io.images import load_image

    assert load_image(saved).shape == (800, 1237, 3)


def test_to_pandas_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="to_pandas needs pandas"):
        ImageResult("x.jpg", []).to_pandas()


def test_max_faces_and_crops_per_call_load_no_second_model(players_path, monkeypatch):
    faces = agestimate.predict(players_path)  # the default model, loaded once

    def refuse(*args, **kwargs):
        raise AssertionError("a second model was loaded")

    monkeypatch.setattr(estimator_module, "FaceEncoder", refuse)
    monkeypatch.setattr(estimator_module.AgeGenderHeads, "load", refuse)
    two = agestimate.predict(players_path, max_faces=2)
    assert len(two) == 2 and [face.box for face in two] == [face.box for face in faces[:2]]
    assert len(agestimate.predict(players_path, max_faces=1, crops=True)) == 1
    batch = list(agestimate.predict_batch([players_path, players_path], max_faces=3))
    assert [len(result) for result in batch] == [3, 3]
    assert len(agestimate.predict(players_path)) == 22  # the default is untouched
    with pytest.raises(ValueError, match="max_faces must be at least 1"):
        agestimate.predict(players_path, max_faces=0)


def test_predict_and_predict_batch_take_the_same_options(players_path):
    for single, batch in ((agestimate.predict, agestimate.predict_batch),
                          (agestimate.Estimator.predict, agestimate.Estimator.predict_batch)):
        options = set(inspect.signature(single).parameters) - {"self", "image"}
        assert options <= set(inspect.signature(batch).parameters)
    assert OPTIONS <= set(inspect.signature(agestimate.predict_batch).parameters)
    single = agestimate.predict(players_path, max_faces=2, return_embedding=True)
    (batch,) = agestimate.predict_batch([players_path], max_faces=2, return_embedding=True, return_image=True)
    assert [face.box for face in batch] == [face.box for face in single]
    np.testing.assert_allclose([face.age for face in batch], [face.age for face in single], atol=1e-4)
    assert all(face.embedding is not None for face in batch) and batch.plot().shape == single.plot().shape
    assert batch.model == single.model and batch.runtime == single.runtime


def test_the_heads_run_once_per_batch(players_path, face_folder, monkeypatch):
    estimator = estimator_module._estimator(None, None)  # the one predict uses
    calls, batches = [], []
    heads_predict, encode_batches = estimator.heads.predict, estimator.encoder.encode_batches

    def counted_heads(X, **options):
        calls.append(len(X))
        return heads_predict(X, **options)

    def counted_batches(*args, **options):
        for batch in encode_batches(*args, **options):
            batches.append(len(batch))
            yield batch

    monkeypatch.setattr(estimator.heads, "predict", counted_heads)
    monkeypatch.setattr(estimator.encoder, "encode_batches", counted_batches)
    add_bad_files(face_folder)
    paths = sorted(face_folder.iterdir())
    results = list(agestimate.predict_batch(paths, batch_size=64, crops=True))
    assert len(results) == len(paths) == sum(batches)
    assert len(calls) <= len(batches) < len(paths)  # once per batch (a batch of bad files alone needs none)
    assert sum(calls) == sum(len(result) for result in results)
    assert [result.ok for result in results].count(False) >= 1 and all(len(r) == 0 for r in results if not r.ok)


def test_deprecated_names_warn_and_give_the_same_values(players_path):
    estimator = estimator_module._estimator(None, None)  # the one predict uses
    features = estimator.encoder.encode(players_path).features
    outputs = estimator.predict_features(features)
    with pytest.warns(FutureWarning, match="predict_features"):
        old = estimator.predict_embeddings(features)
    np.testing.assert_array_equal(old.age, outputs.age)
    with pytest.warns(FutureWarning, match="prob_female"):
        np.testing.assert_array_equal(outputs.gender_prob_female, outputs.prob_female)


def test_one_rule_makes_a_face_of_head_outputs():
    common = {"box": (0, 0, 10, 10), "landmarks": [(1, 1)] * 5, "detection_score": 0.9, "detection_method": "detected",
              "age": 30.0, "age_spread": 4.0, "age_interval": (28.0, 39.0), "confidence": 0.5}
    male = predicted_face(prob_female=0.2, **common)
    assert (male.gender, male.gender_probability, male.prob_female) == ("male", pytest.approx(0.8), pytest.approx(0.2))
    female = predicted_face(prob_female=0.7, **common)
    assert (female.gender, female.gender_probability, female.age_group) == ("female", pytest.approx(0.7), "25-32")
    unknown = predicted_face(prob_female=None, **common)
    assert unknown.gender is None and unknown.gender_probability is None and unknown.prob_female is None
    assert predicted_face(prob_female=0.5, **common).gender == "male"  # female only above 0.5
