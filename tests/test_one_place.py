"""The package installs one OpenCV, and its modules are not shadowed by its functions."""

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
