"""Decoding any image source to RGB uint8, once, with EXIF orientation applied."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agestimate.errors import ImageLoadError

DEFAULT_MAX_PIXELS = 40_000_000  # well above any camera photo, far below a decompression bomb

SOURCE_TYPES = "a path (str or os.PathLike), bytes, a NumPy array or a PIL image"


@dataclass(frozen=True)
class FileBytes:
    """The bytes of an image file, read once (e.g. to hash them too), decoded as that file would
    be: errors name its path."""

    path: str
    data: bytes


def describe_source(source) -> str:
    """A short name for a source in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, FileBytes):
        return source.path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size}>"
    return f"<{type(source).__name__}>"


def load_image(source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `source` to an RGB uint8 array of shape (H, W, 3).

    Parameters
    ----------
    source : path, bytes, `FileBytes`, ndarray or PIL.Image.Image
        Arrays are taken as RGB (or gray, or RGBA); uint8 or uint16.
    max_pixels : refuse images with more pixels than this before decoding them (None: no limit).

    Raises
    ------
    ImageLoadError
        The source cannot be read or decoded; the message names it and says why.
    TypeError
        `source` is of a type that is not supported.
    """
    name = describe_source(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, Image.Image):
        return _from_pil(source, name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(source))
    elif isinstance(source, FileBytes):
        stream = io.BytesIO(source.data)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageLoadError(name, "is a directory, not an image file", kind="unreadable")
        try:
            stream = io.BytesIO(path.read_bytes())
        except OSError as error:
            raise ImageLoadError.unreadable(name, error) from error
    else:
        raise TypeError(f"cannot load an image from {type(source).__name__}; expected {SOURCE_TYPES}")
    if stream.getbuffer().nbytes == 0:
        raise ImageLoadError(name, "empty file (0 bytes)", kind="empty")
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as error:  # Pillow's own header check, before ours
        raise ImageLoadError(name, f"refused as a decompression bomb ({error})", kind="too large") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(name, "not a recognised image format", kind="not an image") from error
    except Exception as error:  # Pillow raises many types on malformed headers
        raise ImageLoadError(name, f"cannot decode image header ({error})", kind="not an image") from error
    return _from_pil(image, name, max_pixels)


def _from_pil(image: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (max_pixels)",
            kind="too large",
        )
    if width == 0 or height == 0:
        raise ImageLoadError(name, f"image has no pixels ({width}x{height})")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageLoadError:
        raise
    except Exception as error:  # truncated data, bad EXIF, unsupported modes
        raise ImageLoadError(name, f"cannot decode image ({error})") from error


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit gray: scale to 8 bits rather than letting convert() clip at 255
        array = np.asarray(image, dtype=np.uint32)
        return _gray_to_rgb((array >> 8).clip(0, 255).astype(np.uint8))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return _gray_to_rgb(np.clip(array, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(name, f"arrays must be uint8 or uint16, got {array.dtype}", kind="bad array")
    if array.ndim == 2:
        array = _gray_to_rgb(array)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = _gray_to_rgb(array[:, :, 0])
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise ImageLoadError(
            name, f"arrays must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {array.shape}", kind="bad array"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(name, f"image has no pixels (shape {array.shape})", kind="bad array")
    return np.ascontiguousarray(array)
