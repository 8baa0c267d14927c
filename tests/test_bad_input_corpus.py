"""A corpus of broken and unusual files, generated here, through every entry point.

Each file is accounted for with a reason; the good files in the same batch are all processed.
"""

import csv
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import agestimate
from agestimate.cli.main import cli
from agestimate.errors import ImageLoadError

from conftest import FIXTURES

FACE = sorted((FIXTURES / "utkface").iterdir())[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb is refused before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def exif_rotated(image: Image.Image, orientation: int) -> bytes:
    """The image stored rotated, with the EXIF orientation that turns it back upright."""
    stored = image.rotate({6: 90, 8: -90}[orientation], expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


# name -> expected outcome: ("error", kind), ("faces", at least n) or ("no face",)
EXPECTED = {
    "truncated.jpg": ("error", "corrupt"),
    "random bytes.jpg": ("error", "not an image"),
    "empty.jpg": ("error", "empty"),
    "text.jpg": ("error", "not an image"),
    "bomb 20000x20000.png": ("error", "too large"),
    "gray16.png": ("faces", 1),
    "rgba.png": ("faces", 1),
    "gray.png": ("faces", 1),
    "cmyk.jpg": ("faces", 1),
    "exif6.jpg": ("faces", 1),
    "exif8.jpg": ("faces", 1),
    "one pixel.png": ("no face",),
    "wall.png": ("no face",),
    "players.jpg": ("faces", 20),
    "visage ü née.jpg": ("faces", 1),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, players_path):
    folder = tmp_path_factory.mktemp("corpus")
    face = Image.open(FACE).convert("RGB").resize((300, 300))
    good = FACE.read_bytes()
    files = {
        "truncated.jpg": good[: len(good) // 2],
        "random bytes.jpg": np.random.default_rng(0).bytes(5000),
        "empty.jpg": b"",
        "text.jpg": b"a text file, not a photo\n",
        "bomb 20000x20000.png": png_header_only(20000, 20000),
        "gray16.png": encoded(Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257)), "PNG"),
        "rgba.png": encoded(face.convert("RGBA"), "PNG"),
        "gray.png": encoded(face.convert("L"), "PNG"),
        "cmyk.jpg": encoded(face.convert("CMYK"), "JPEG"),
        "exif6.jpg": exif_rotated(face, 6),
        "exif8.jpg": exif_rotated(face, 8),
        "one pixel.png": encoded(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"),
        "wall.png": encoded(Image.new("RGB", (320, 240), (90, 90, 90)), "PNG"),
        "players.jpg": players_path.read_bytes(),
        "visage ü née.jpg": good,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a directory symlink loop
    return folder


def test_load_image_on_each_file(corpus):
    for name, expected in EXPECTED.items():
        if expected[0] == "error":
            with pytest.raises(ImageLoadError) as error:
                agestimate.load_image(corpus / name)
            assert error.value.kind == expected[1], name
            assert name in str(error.value)
        else:
            image = agestimate.load_image(corpus / name)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert agestimate.load_image(corpus / "exif6.jpg").shape[:2] == (300, 300)


def test_predict_and_predict_batch_account_for_every_file(corpus):
    names = list(EXPECTED)
    results = list(agestimate.predict_batch([corpus / name for name in names]))
    assert [r.source for r in results] == [str(corpus / name) for name in names]
    for name, result in zip(names, results):
        expected = EXPECTED[name]
        if expected[0] == "error":
            assert result.error_kind == expected[1] and result.error, name
            with pytest.raises(ImageLoadError):
                agestimate.predict(corpus / name)
        elif expected[0] == "no face":
            assert result.ok and result.faces == [], name
        else:
            assert result.ok and len(result.faces) >= expected[1], name


def test_cli_embed_and_predict_account_for_every_file(corpus, tmp_path):
    runner = CliRunner()
    embedded = runner.invoke(cli, ["embed", str(corpus), "--store", str(tmp_path / "store"), "--json"])
    assert embedded.exit_code == 0, embedded.output
    summary = json.loads(embedded.stdout)
    errors = [name for name, expected in EXPECTED.items() if expected[0] == "error"]
    no_face = [name for name, expected in EXPECTED.items() if expected[0] == "no face"]
    assert summary["files"] == len(EXPECTED)  # the symlink loop is not followed
    assert summary["errors"] == len(errors) and summary["no_face"] == len(no_face)
    # "visage ü née.jpg" has the same bytes as the fixture face: stored once, under both names
    assert summary["embedded"] + summary["already_stored"] == len(EXPECTED) - len(errors) - len(no_face)

    predicted = runner.invoke(cli, ["predict", str(corpus), "--recursive"])
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    by_file = {}
    for row in rows:
        by_file.setdefault(os.path.basename(row["file"]), []).append(row)
    assert set(by_file) == set(EXPECTED)
    for name in errors:
        assert by_file[name][0]["error"] and not by_file[name][0]["age"], name
    for name in no_face:
        assert by_file[name][0]["error"] == "no face"
    assert len(by_file["players.jpg"]) >= 20


def test_exit_codes(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["predict"]).exit_code == 2  # usage: no source
    assert runner.invoke(cli, ["embed", str(tmp_path), "--store", str(tmp_path / "s"), "--descriptor", "nope"]).exit_code == 2
    assert runner.invoke(cli, ["info", "--store", str(tmp_path / "missing")]).exit_code == 1  # fatal


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_reported(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(FACE.read_bytes())
    path.chmod(0)
    result = next(agestimate.predict_batch([path]))
    assert result.error_kind == "unreadable" and "Permission denied" in result.error
