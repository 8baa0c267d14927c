"""Small rules live in one place each, and the package installs one OpenCV."""

import importlib
from importlib.metadata import requires

import pytest

import agestimate


def test_one_opencv_build_writes_cv2():
    opencv = {r.split(">")[0].split("=")[0].strip() for r in requires("agestimate") + requires("insightface")
              if r.lower().startswith("opencv")}
    assert opencv == {"opencv-python"}  # insightface needs it; -headless beside it would overwrite cv2


def test_the_module_is_not_shadowed_by_the_function():
    assert callable(agestimate.predict) and importlib.import_module("agestimate.estimator").predict is agestimate.predict
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("agestimate.predict")


def test_each_small_rule_has_one_home():
    from agestimate import embedding, heads, labels, metrics, models, report, runtimes, sources

    assert metrics.UNKNOWN_GENDER is labels.UNKNOWN_GENDER and embedding.file_sha256 is models.file_sha256
    assert report.DECADE_KEYS is metrics.DECADE_KEYS and heads.providers_or_default is runtimes.providers_or_default
    assert embedding.expand_sources is sources.expand_sources
    assert [metrics.summary([5, 15], [5, 15])[key] for key in metrics.DECADE_KEYS[:3]] == [0.0, 0.0, None]
    torch_side = pytest.importorskip("agestimate.training.export")
    assert torch_side.OUTPUT_NAMES is heads.OUTPUT_NAMES and torch_side.FORMAT_VERSION is heads.FORMAT_VERSION
    assert importlib.import_module("agestimate.training.heads").UNKNOWN_GENDER is labels.UNKNOWN_GENDER
