import pytest
from hypothesis import given
from hypothesis import strategies as st

from agestimate.errors import LabelError
from agestimate.io.labels import FaceLabel, label_reader, parse_fgnet_name, parse_utkface_name, read_labels_csv


def test_utkface_names():
    assert parse_utkface_name("100_0_0_20170112213500903.jpg.chip.jpg") == FaceLabel(age=100, gender=0, race=0)
    assert parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") == FaceLabel(age=39, gender=1)
    # two quirky names of the public set
    assert parse_utkface_name("55_0_0_20170116232725357jpg.chip.jpg").age == 55
    assert parse_utkface_name("24_0_1_20170116220224657 .jpg.chip.jpg").race == 1
    for bad in ["photo.jpg", "39_2_0_2017.jpg", "x_1_0_2017.jpg", "39_1_7_2017.jpg"]:
        with pytest.raises(LabelError, match="not a UTKFace file name"):
            parse_utkface_name(bad)


def test_fgnet_names():
    assert parse_fgnet_name("001A02.JPG") == FaceLabel(age=2, person="001")
    assert parse_fgnet_name("001A43b.JPG") == FaceLabel(age=43, person="001")
    with pytest.raises(LabelError, match="not an FG-NET file name"):
        parse_fgnet_name("01A02.JPG")


def test_csv_labels_resolve_paths_keep_extra_columns_and_report_bad_rows(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "path,age,gender,person,split,source\nimages/a.jpg,31,female,p1,train,web\nimages/b.jpg,,,,test,\n"
    )
    labels = read_labels_csv(tmp_path / "labels.csv")
    assert labels[(tmp_path / "images/a.jpg").resolve()] == FaceLabel(
        age=31, gender=1, person="p1", split="train", extra={"source": "web"}
    )
    assert labels[(tmp_path / "images/b.jpg").resolve()] == FaceLabel(split="test")
    read = label_reader(tmp_path / "labels.csv")
    with pytest.raises(LabelError, match="c.jpg: no row in"):
        read(tmp_path / "images/c.jpg")
    (tmp_path / "bad.csv").write_text("path,age,gender\na.jpg,old,male\n")
    with pytest.raises(LabelError, match=r"bad.csv:2: age 'old' is not a number"):
        read_labels_csv(tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("file,age\na.jpg,3\n")
    with pytest.raises(LabelError, match="needs a 'path' column"):
        read_labels_csv(tmp_path / "nopath.csv")


@given(st.text(max_size=60))
def test_name_parsers_raise_only_label_errors(name):
    for parse in (parse_utkface_name, parse_fgnet_name):
        try:
            label = parse(name)
        except LabelError:
            continue
        assert label.age is not None and label.age >= 0


@given(st.lists(st.lists(st.text(max_size=8), min_size=1, max_size=7), max_size=5))
def test_csv_reader_raises_only_label_errors(rows):
    import csv
    import io
    import tempfile
    from pathlib import Path

    buffer = io.StringIO()
    csv.writer(buffer).writerows([["path", "age", "gender", "race", "person", "split"], *rows])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        path.write_text(buffer.getvalue())
        try:
            read_labels_csv(path)
        except LabelError:
            pass
