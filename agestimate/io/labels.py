"""Labels of face images: UTKFace and FG-NET file names, and CSV files."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agestimate.errors import LabelError

UNKNOWN_GENDER = -1  # the gender code where no gender is known (labels) or predicted (a model without a gender head)
GENDER_NAMES = ("male", "female")  # the names of the gender codes 0 and 1
GENDER_NAME_OF_CODE = dict(enumerate(GENDER_NAMES))  # the same as a mapping (no entry for UNKNOWN_GENDER)
GENDERS = {"0": 0, "1": 1, "m": 0, "f": 1, "male": 0, "female": 1}
SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("path", "age", "gender", "race", "person", "split")

UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_(?:([0-4])_)?\d+[^_]*\.jpg$", re.IGNORECASE)
FGNET_NAME = re.compile(r"^(\d{3})A(\d{2})[ab]?\.jpe?g$", re.IGNORECASE)


@dataclass(frozen=True)
class FaceLabel:
    """What is known of the person in an image; None where unknown.

    gender : 0 male, 1 female. race : UTKFace's code (0 white, 1 black, 2 asian, 3 indian,
    4 others). split : "train", "val" or "test". extra : other CSV columns, kept as text.
    """

    age: float | None = None
    gender: int | None = None
    race: int | None = None
    person: str | None = None
    split: str | None = None
    extra: dict = field(default_factory=dict)


def parse_utkface_name(name: str) -> FaceLabel:
    """Label from a UTKFace file name `AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg]` (race may be absent)."""
    match = UTKFACE_NAME.match(name)
    if match is None:
        raise LabelError(f"{name}: not a UTKFace file name (AGE_GENDER_RACE_DATETIME.jpg)")
    age, gender, race = match.groups()
    return FaceLabel(age=float(age), gender=int(gender), race=None if race is None else int(race))


def parse_fgnet_name(name: str) -> FaceLabel:
    """Label from an FG-NET file name `PPPAaa[a|b].JPG`: person PPP at age aa (no gender)."""
    match = FGNET_NAME.match(name)
    if match is None:
        raise LabelError(f"{name}: not an FG-NET file name (PPPAaa.JPG)")
    person, age = match.groups()
    return FaceLabel(age=float(age), person=person)


def _parse_gender(value: str, where: str) -> int | None:
    value = value.strip().lower()
    if not value:
        return None
    if value not in GENDERS:
        raise LabelError(f"{where}: gender {value!r} is not one of {sorted(GENDERS)}")
    return GENDERS[value]


def _parse_number(value: str, where: str, column: str, kind=float):
    value = value.strip()
    if not value:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise LabelError(f"{where}: {column} {value!r} is not a number") from None
    if number < 0 or number != number:
        raise LabelError(f"{where}: {column} {value!r} is negative or not a number")
    return number


def parse_csv_row(row: dict, where: str) -> FaceLabel:
    """A `FaceLabel` from one CSV row (columns path, age, gender, race, person, split; others kept)."""
    split = (row.get("split") or "").strip() or None
    if split is not None and split not in SPLITS:
        raise LabelError(f"{where}: split {split!r} is not one of {SPLITS}")
    return FaceLabel(
        age=_parse_number(row.get("age") or "", where, "age"),
        gender=_parse_gender(row.get("gender") or "", where),
        race=_parse_number(row.get("race") or "", where, "race", int),
        person=(row.get("person") or "").strip() or None,
        split=split,
        extra={k: v for k, v in row.items() if k not in CSV_COLUMNS and k is not None and v},
    )


def read_labels_csv(path: str | Path) -> dict[Path, FaceLabel]:
    """Labels keyed by resolved image path; `path` column entries are relative to the CSV's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise LabelError(f"{path}: cannot read labels CSV ({error})") from error
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise LabelError(f"{path}: labels CSV needs a 'path' column, found {reader.fieldnames}")
    labels = {}
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        image = (row.get("path") or "").strip()
        if not image:
            raise LabelError(f"{where}: empty path")
        try:
            resolved = (path.parent / image).resolve()
        except (OSError, ValueError) as error:  # e.g. a NUL character in the path
            raise LabelError(f"{where}: bad path {image!r} ({error})") from None
        labels[resolved] = parse_csv_row(row, where)
    return labels


def label_reader(spec: str | Path) -> Callable[[Path], FaceLabel]:
    """A function from image path to `FaceLabel` for `spec`: "utkface", "fgnet" or a CSV path.

    The function raises `LabelError` when the image has no label, saying why.
    """
    if spec == "utkface":
        return lambda image: parse_utkface_name(Path(image).name)
    if spec == "fgnet":
        return lambda image: parse_fgnet_name(Path(image).name)
    table = read_labels_csv(spec)

    def from_csv(image: Path) -> FaceLabel:
        try:
            return table[Path(image).resolve()]
        except KeyError:
            raise LabelError(f"{image}: no row in {spec}") from None

    return from_csv
