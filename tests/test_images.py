import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agestimate.errors import ImageLoadError
from agestimate.io.images import load_image

from conftest import FIXTURES

FACE = next((FIXTURES / "utkface").iterdir())


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def gradient(width=40, height=30) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 6, y * 8, (x + y) * 3], axis=2).astype(np.uint8)


def test_every_source_type_gives_the_same_rgb_array():
    from_path = load_image(FACE)
    assert from_path.dtype == np.uint8 and from_path.shape == (200, 200, 3)
    assert np.array_equal(load_image(str(FACE)), from_path)
    assert np.array_equal(load_image(FACE.read_bytes()), from_path)
    assert np.array_equal(load_image(Image.open(FACE)), from_path)
    assert np.array_equal(load_image(from_path), from_path)


def test_colour_order_is_rgb():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    decoded = load_image(encoded(Image.fromarray(red), "PNG"))
    assert decoded[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    "mode, expected",
    [("L", [100, 100, 100]), ("RGBA", [10, 20, 30]), ("CMYK", None), ("I;16", [100, 100, 100]), ("P", [10, 20, 30])],
)
def test_modes_are_converted_to_rgb(mode, expected):
    if mode == "L":
        image = Image.new("L", (5, 4), 100)
    elif mode == "I;16":
        image = Image.fromarray(np.full((4, 5), 100 * 256 + 7, np.uint16))
    elif mode == "CMYK":
        image = Image.new("CMYK", (5, 4), (0, 255, 255, 0))
    else:
        image = Image.new("RGBA", (5, 4), (10, 20, 30, 128))
        if mode == "P":
            image = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    data = encoded(image, "JPEG" if mode == "CMYK" else "PNG")
    decoded = load_image(data)
    assert decoded.shape == (4, 5, 3) and decoded.dtype == np.uint8
    if expected is None:  # CMYK cyan-free red: red dominates after conversion
        assert decoded[0, 0, 0] > 200 and decoded[0, 0, 1] < 60
    else:
        assert decoded[0, 0].tolist() == expected


@pytest.mark.parametrize("orientation, rotate", [(6, -90), (8, 90), (3, 180)])
def test_exif_orientation_is_applied(orientation, rotate):
    pixels = gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = load_image(encoded(Image.fromarray(pixels), "PNG", exif=exif))
    expected = np.asarray(Image.fromarray(pixels).rotate(rotate, expand=True))
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)


def test_arrays_gray_rgba_and_uint16_are_accepted():
    assert load_image(np.full((3, 4), 7, np.uint8)).shape == (3, 4, 3)
    assert load_image(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)
    assert load_image(np.full((3, 4, 3), 65535, np.uint16)).max() == 255


def test_too_many_pixels_are_refused_before_decoding():
    data = encoded(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(ImageLoadError, match="3000x2000 = 6000000 pixels exceeds the limit of 1000000") as error:
        load_image(data, max_pixels=1_000_000)
    assert error.value.kind == "too large"
    assert load_image(data, max_pixels=None).shape == (2000, 3000, 3)


@pytest.mark.parametrize(
    "content, kind, message",
    [
        (b"", "empty", "empty file"),
        (b"hello, this is text", "not an image", "not a recognised image format"),
        (FACE.read_bytes()[:1500], "corrupt", "truncated"),
    ],
)
def test_unreadable_files_raise_the_library_error_naming_the_file(tmp_path, content, kind, message):
    path = tmp_path / "bad file é.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as error:
        load_image(path)
    assert error.value.kind == kind
    assert str(path) in str(error.value)


def test_missing_file_directory_and_bad_types(tmp_path):
    with pytest.raises(ImageLoadError, match="missing.jpg: cannot read file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="cannot load an image from int; expected a path"):
        load_image(42)
    with pytest.raises(ImageLoadError, match="must be uint8 or uint16, got float64"):
        load_image(np.zeros((4, 4, 3)))
    with pytest.raises(ImageLoadError, match="got shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_an_array_or_the_library_error(data):
    try:
        image = load_image(data)
    except ImageLoadError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(FACE.read_bytes())))
def test_every_truncation_of_a_jpeg_gives_an_array_or_the_library_error(length):
    try:
        load_image(FACE.read_bytes()[:length])
    except ImageLoadError:
        pass
