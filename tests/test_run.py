"""One prediction run (`agestimate.apps.run.predict`): sources, resume, counting and the report,
for the library as for the CLI."""

import json

import pytest

from agestimate import estimator as estimator_module
from agestimate.apps.run import EngineOptionError, PredictionSummary, predict

from conftest import add_bad_files


def test_a_run_writes_counts_reports_and_resumes(face_folder, tmp_path):
    bad = add_bad_files(face_folder)
    goods = len(list(face_folder.iterdir())) - len(bad)
    estimator = estimator_module._estimator(None, None)
    out, lines = tmp_path / "rows.jsonl", []
    summary = predict([face_folder], out, estimator=estimator, crops=True, report=lines.append)
    assert isinstance(summary, PredictionSummary) and summary.engine == "local"
    assert summary.images == goods + len(bad) and summary.faces >= goods and summary.skipped == 0
    assert summary.errors == {kind: 1 for kind in bad.values()} and summary.frames == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({row["file"] for row in rows}) == goods + len(bad)
    assert lines == summary.lines() and lines[-1].startswith(f"{goods + len(bad)} images, 0 video frames")
    assert summary.runtime in lines[-1]

    lines.clear()
    again = predict([face_folder], out, estimator=estimator, report=lines.append)
    # every image is skipped but those whose failure may pass (a truncated file), which are tried again
    assert again.skipped >= goods and again.skipped + again.images == goods + len(bad) and again.images >= 1
    assert lines[0] == f"{out}: {again.skipped} images and videos already scored, skipped (delete it to score them again)"
    assert len({json.loads(line)["file"] for line in out.read_text().splitlines()}) == goods + len(bad)


def test_the_ray_engine_refuses_what_only_the_local_one_does(face_folder, tmp_path):
    with pytest.raises(EngineOptionError, match="--engine local"):
        predict([face_folder], engine="ray", annotate=tmp_path / "drawn")
    with pytest.raises(ValueError, match="engine must be"):
        predict([face_folder], engine="spark")
