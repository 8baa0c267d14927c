"""Prediction files: CSV, JSON Lines and Parquet written by one writer, resumed after a crash."""

import csv
import json

import pytest

from agestimate.errors import AgestimateError
from agestimate.io.predictions import PREDICTION_COLUMNS, PredictionWriter, table_rows

FACE_COLUMNS = [name for name in PREDICTION_COLUMNS if name not in ("neighbours", "error")]


def face(file, index, **values):
    """A face row as `ImageResult.summary` gives it: every face column, unknown ones None."""
    return {**dict.fromkeys(FACE_COLUMNS), "file": file, "face": index, **values}


IMAGES = {
    "a.jpg": [face("a.jpg", 0, age=31.5, gender="male", age_low=25.0), face("a.jpg", 1, age=8.25)],
    "b.jpg": [{"file": "b.jpg", "frame": None, "error": "no face"}],
    "c.jpg": [{"file": "c.jpg", "frame": None, "error": "empty file (0 bytes)"}],
    "d.jpg": [face("d.jpg", 0, age=60.0, neighbours=[{"file": "x.jpg", "age": 61.0}]), face("d.jpg", 1, age=61.0)],
}


def read_rows(out):
    if out.suffix == ".csv":
        return list(csv.DictReader(out.open()))
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    import pyarrow.parquet as pq

    return table_rows(pq.read_table(out))


def as_text(rows):
    """Rows as CSV shows them: None as nothing, neighbours as JSON."""
    text = lambda k, v: json.dumps(v) if k == "neighbours" and not isinstance(v, str) else str(v)  # noqa: E731
    return [{k: text(k, v) for k, v in row.items() if v is not None and v != ""} for row in rows]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_rows_round_trip_and_a_rerun_skips_what_is_there(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    with PredictionWriter(out) as writer:
        assert writer.scored == set()
        for rows in IMAGES.values():
            writer.write(rows)
    expected = [row for rows in IMAGES.values() for row in rows]
    assert as_text(read_rows(out)) == as_text(expected)
    if suffix != ".csv":  # JSON Lines and Parquet give back the very rows
        assert read_rows(out) == expected
    with PredictionWriter(out) as writer:
        # Parquet parts are written whole; lines may end mid-image, so the last image is scored again
        assert writer.scored == (set(IMAGES) if suffix == ".parquet" else set(IMAGES) - {"d.jpg"})
        if suffix != ".parquet":
            writer.write(IMAGES["d.jpg"])
    assert as_text(read_rows(out)) == as_text(expected)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_tail_and_the_rows_of_its_image_are_dropped(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    with PredictionWriter(out) as writer:
        for rows in IMAGES.values():
            writer.write(rows)
    data = out.read_bytes()
    out.write_bytes(data[: data.rfind(b"\n", 0, len(data) - 1) + 5])  # d.jpg's first row whole, its second torn
    with PredictionWriter(out) as writer:
        assert writer.scored == {"a.jpg", "b.jpg", "c.jpg"}
        writer.write(IMAGES["d.jpg"])
    assert as_text(read_rows(out)) == as_text([row for rows in IMAGES.values() for row in rows])


def test_parquet_is_a_folder_of_whole_parts(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setattr("agestimate.io.predictions.PARQUET_PART_ROWS", 2)
    out = tmp_path / "rows.parquet"
    with PredictionWriter(out) as writer:
        for rows in IMAGES.values():
            writer.write(rows)
    (out / ".part-00003.parquet.tmp").write_bytes(b"half a part")  # a part whose writing was killed
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pd.read_parquet(out)  # readers skip the hidden temporary
    assert list(table.columns) == PREDICTION_COLUMNS and len(table) == 6
    assert table["age"].tolist()[:2] == [31.5, 8.25] and table["error"].tolist()[2] == "no face"
    with PredictionWriter(out) as writer:
        assert writer.scored == set(IMAGES)
    assert not list(out.glob(".*.tmp"))
    empty = tmp_path / "empty.parquet"
    PredictionWriter(empty).close()
    assert list(pd.read_parquet(empty).columns) == PREDICTION_COLUMNS  # an empty run is still a typed table


def test_outputs_that_are_not_ours_are_refused(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(AgestimateError, match="not an agestimate predictions file"):
        PredictionWriter(other)
    assert other.read_text() == "name,score\nx,1\n"
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(AgestimateError, match="not a folder"):
        PredictionWriter(tmp_path / "file.parquet")
    with pytest.raises(ValueError, match="must end in"):
        PredictionWriter(tmp_path / "rows.txt")
