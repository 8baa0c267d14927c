"""Checks on the real data sets in ../shared/data; skipped where the folder is absent."""

import json
import random
import shutil

import pytest
from click.testing import CliRunner

from agestimate.cli.main import cli

from conftest import SHARED_DATA

pytestmark = [pytest.mark.shared_data, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data")]


def sample(folder, count, tmp_path, seed=0):
    names = sorted(p.name for p in folder.iterdir())
    target = tmp_path / folder.parent.name
    target.mkdir()
    for name in random.Random(seed).sample(names, count):
        shutil.copy(folder / name, target / name)
    return target


def test_utkface_crops_and_fgnet_photos_yield_faces_with_labels_from_names(tmp_path):
    utk = sample(SHARED_DATA / "utkface" / "images", 300, tmp_path)
    fgnet = sample(SHARED_DATA / "fgnet" / "images", 60, tmp_path)
    runner = CliRunner()
    for folder, labels in ((utk, "utkface"), (fgnet, "fgnet")):
        result = runner.invoke(cli, ["embed", str(folder), "--store", str(tmp_path / labels), "--labels", labels,
                                     "--json"], catch_exceptions=False)
        summary = json.loads(result.stdout)
        assert summary["errors"] == 0 and summary["label_problems"] == 0
        assert summary["embedded"] >= 0.995 * summary["files"], summary
