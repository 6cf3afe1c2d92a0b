"""Decode any photo file into an RGB uint8 array, or fail with a message naming the file."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..defaults import MAX_IMAGE_PIXELS
from ..errors import MaskstatusError

# The one list of accepted image formats: PIL's format name -> its file extensions. A folder given to predict
# lists files by these extensions, the server accepts uploads by the format PIL reads from the header, and both
# decode with ``load_rgb``, which refuses any other format. GIF (its first frame) and TIFF decode with plain PIL;
# HEIC needs a plugin PIL does not have, so it is refused everywhere. MPO is how PIL names the JPEG of phones
# that store a second (depth) picture after the first.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "MPO": (),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
}
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext for exts in IMAGE_FORMATS.values() for ext in exts)

# Bounds on an image's size, checked from the file header before decoding (the largest: defaults.MAX_IMAGE_PIXELS).
# A side under 8 px is a placeholder or an icon, never a face photo.
MIN_IMAGE_SIDE = 8


class ImageError(MaskstatusError, ValueError):
    """An image file could not be decoded; ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image: {self.path} ({reason})")


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (read from its header: nothing was decoded)."""


class ImageFormatError(ImageError):
    """A file in a format that is not one of IMAGE_FORMATS; ``format`` names it."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        self.format = fmt
        super().__init__(path, f"{fmt} images are not accepted; accepted formats: {', '.join(accepted_formats())}")


def accepted_formats() -> list[str]:
    """The formats' names as a user knows them (MPO is a JPEG)."""
    return [f for f in IMAGE_FORMATS if f != "MPO"]


def is_image_file(path: str | Path) -> bool:
    """True when the extension (any case) is one of IMAGE_EXTENSIONS."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> np.ndarray:
    # Each step frees what the next does not need and copies nothing it can avoid: a server decodes photos up to
    # its pixel limit, and an RGBA one used to hold 25 bytes a pixel at the peak (12 now), a 16-bit one more.
    if img.mode in ("I", "I;16", "I;16L", "I;16B"):
        # 16-bit grayscale: convert("RGB") would clip to 255 instead of scaling. float32 rounds as float64 would:
        # x / 257 is never within 0.002 of a half, and every value that does not clip to 255 is exact in float32.
        gray = np.array(img, dtype=np.float32)
        if gray.size and gray.max() > 255:
            np.divide(gray, 257.0, out=gray)
        np.clip(np.rint(gray, out=gray), 0, 255, out=gray)
        gray8 = gray.astype(np.uint8)
        del gray
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels hold arbitrary colours; show them as a white background.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
        del background, rgba
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    del img
    # np.array copies, so the result is writable (np.asarray of a PIL image is read-only).
    return np.array(rgb, dtype=np.uint8)


def _check_size(path: str | Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(
            path,
            f"{width}x{height} is {width * height / 1e6:.0f} million pixels, more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} million allowed; downscale it",
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(path, f"{width}x{height} pixels: a side under {MIN_IMAGE_SIDE} px is no face photo")


def _draft(img: Image.Image, min_side: int | None) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale (a fraction of the memory and time), keeping the
    longest side at least ``min_side``; other formats decode at full size. Changes ``img.size`` at once."""
    if not min_side or img.format not in ("JPEG", "MPO") or max(img.size) < 2 * min_side:
        return
    longest = max(img.size)
    img.draft(
        "RGB",
        (max(1, math.ceil(img.size[0] * min_side / longest)), max(1, math.ceil(img.size[1] * min_side / longest))),
    )


def probe_image(source: str | Path | IO[bytes], min_side: int | None = None) -> tuple[str, tuple[int, int], int]:
    """(format, (width, height) in the header, pixels ``load_rgb(source, min_side)`` decodes), decoding nothing.

    Raises ImageError as ``load_rgb`` does for what the header shows (format, size).
    """
    with open_image(source) as img:
        size = img.size
        _check_size(_name(source), *size)
        _draft(img, min_side)
        return str(img.format), size, img.size[0] * img.size[1]


def open_image(path: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open`` for a format in IMAGE_FORMATS, checked before any pixel is decoded; raises ImageError."""
    try:
        with warnings.catch_warnings():
            # PIL's decompression-bomb warning names no file; the size check below does, with a lower limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise ImageError(_name(path), "file not found") from None
    except IsADirectoryError:
        raise ImageError(_name(path), "is a folder, not a file") from None
    except UnidentifiedImageError:
        raise ImageError(_name(path), "not a recognised image: corrupt or unknown format") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_name(path), f"too many pixels to decode ({exc}); downscale it") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad data
        raise ImageError(_name(path), str(exc) or type(exc).__name__) from None
    if img.format not in IMAGE_FORMATS:
        img.close()
        raise ImageFormatError(_name(path), str(img.format))
    return img


def _name(path: str | Path | IO[bytes]) -> str:
    return str(getattr(path, "name", "upload") if hasattr(path, "read") else path)


def load_rgb(path: str | Path | IO[bytes], min_side: int | None = None) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array, upright per its EXIF orientation.

    Grayscale, palette, RGBA (composited onto white), CMYK and 16-bit files are all
    turned into RGB; a GIF or TIFF gives its first frame. Raises ImageError for missing, corrupt or
    truncated files, for formats not in IMAGE_FORMATS, and for images over MAX_IMAGE_PIXELS or with a
    side under MIN_IMAGE_SIDE (checked from the header, before decoding). ``min_side``: a JPEG is decoded
    at the smallest of 1/1, 1/2, 1/4, 1/8 of its size that keeps its longest side at least this;
    other formats decode in full.
    """
    opened = open_image(path)
    try:
        with opened as img:
            _check_size(_name(path), *img.size)
            _draft(img, min_side)
            # Decode all pixel data now: a truncated file must fail here, not in a worker later.
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # upright, without the copy it makes otherwise
            return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad data
        raise ImageError(_name(path), str(exc) or type(exc).__name__) from None
