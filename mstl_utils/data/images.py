"""Decoding one image file into the study's input: one grey 8-bit channel at a square size
(or three RGB channels, for the colour-shortcut experiment only).

Every file the datasets may hold is either converted correctly (8- and 16-bit grey,
palette, RGB, RGBA/LA, CMYK, bilevel, EXIF-rotated JPEG, upper-case extensions) or
stopped with a ``DataFormatError`` that names the file and says what was expected. No
PIL or numpy exception escapes for a bad file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Suffixes read as images (compared case-insensitively).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: Smallest side accepted: below it, resizing to the network's input invents the image.
MIN_SIDE = 32
#: Largest image accepted (pixels): PIL's own decompression-bomb limit.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970


class DataFormatError(ValueError):
    """A file or folder that does not hold what was expected; the message names it."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file held before conversion (for the data audit)."""

    mode: str  # PIL mode: L, RGB, RGBA, P, I;16, CMYK, ...
    width: int
    height: int
    bits: int  # bits per channel
    conversion: str  # how it became grey, e.g. "RGB -> L", "I;16 -> L (16-bit scaled)"


_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _over_black(img: Image.Image) -> Image.Image:
    """Transparent pixels become black, as an unpainted background would be (an RGBA image, opaque)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba)


def _grey(img: Image.Image) -> tuple[Image.Image, str]:
    """The image as mode L, and how it was converted."""
    mode = img.mode
    if mode == "L":
        return img, "L"
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        # 16-bit data scaled by its bit depth, not clipped at 255 (PIL's convert("L") clips).
        top = 65535.0 if array.max(initial=0) <= 65535 else float(array.max())
        return Image.fromarray(np.round(array / top * 255).astype(np.uint8), "L"), f"{mode} -> L (scaled by {top:.0f})"
    if mode == "F":
        array = np.nan_to_num(np.asarray(img, dtype=np.float64))
        low, high = float(array.min(initial=0)), float(array.max(initial=1))
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L"), "F -> L (min-max scaled)"
    if _transparent(img):
        return _over_black(img).convert("L"), f"{mode} -> L (alpha over black)"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "P"):
        return img.convert("RGB").convert("L"), f"{mode} -> RGB -> L"
    return img.convert("L"), f"{mode} -> L"


def _rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """The image as mode RGB, and how it was converted: colour kept, grey repeated, alpha over black.

    Only the colour-shortcut experiment reads images so (``in_chans=3``); the study feeds grey.
    """
    mode = img.mode
    if mode == "RGB":
        return img, "RGB"
    if _transparent(img):
        return _over_black(img).convert("RGB"), f"{mode} -> RGB (alpha over black)"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey, conversion = _grey(img)  # scaled as the grey path scales them
        return grey.convert("RGB"), f"{conversion} -> RGB"
    return img.convert("RGB"), f"{mode} -> RGB"


def open_grey(path: str | Path) -> tuple[Image.Image, ImageInfo]:
    """Decode ``path`` fully into a grey PIL image (EXIF rotation applied) and describe the original."""
    return _open(path, _grey)


def open_rgb(path: str | Path) -> tuple[Image.Image, ImageInfo]:
    """Decode ``path`` fully into an RGB PIL image (EXIF rotation applied) and describe the original."""
    return _open(path, _rgb)


def _open(path: str | Path, convert) -> tuple[Image.Image, ImageInfo]:
    """Decode ``path`` with the checks every file gets, then ``convert`` it (``_grey`` or ``_rgb``)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataFormatError(f"{path}: suffix {path.suffix!r} is not an image suffix; expected one of {sorted(IMAGE_SUFFIXES)}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise DataFormatError(f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS} accepted; "
                                 "downscale it first")
            if min(width, height) < MIN_SIDE:
                raise DataFormatError(f"{path}: {width}x{height} pixels; expected at least {MIN_SIDE} on each side")
            mode = img.mode
            bits = _BITS.get(mode, 8)
            img = ImageOps.exif_transpose(img)
            img.load()  # decode now: a truncated file fails here, inside this try
            converted, conversion = convert(img)
    except DataFormatError:
        raise
    except FileNotFoundError as error:
        raise DataFormatError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise DataFormatError(f"{path}: not an image PIL can identify; expected a PNG, JPEG, BMP or TIFF file") from error
    except Image.DecompressionBombError as error:
        raise DataFormatError(f"{path}: too large to decode safely ({error})") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise DataFormatError(f"{path}: cannot be decoded ({type(error).__name__}: {error}); the file may be truncated "
                         "or corrupt") from error
    return converted, ImageInfo(mode, width, height, bits, conversion)


def load_image(path: str | Path, image_size: int, *, in_chans: int = 1) -> np.ndarray:
    """One image as a grey ``[image_size, image_size]`` uint8 array, or with ``in_chans=3`` as an RGB
    ``[3, image_size, image_size]`` one (channels first, as the network takes them). The aspect
    ratio is not kept, as in the public chest X-ray copy."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans={in_chans}; expected 1 (grey) or 3 (RGB)")
    image, _ = open_grey(path) if in_chans == 1 else open_rgb(path)
    resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.uint8)
    return array if in_chans == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))
