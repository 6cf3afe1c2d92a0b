"""Decode any photo file into an RGB uint8 array, or fail with a message naming the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MaskstatusError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Bounds on an image's size, checked from the file header before decoding. 50 million pixels (150 MB
# decoded) is above any camera photo; PIL would decode 12000x12000 (2.7 GB with its copies) on every
# decoding thread at once. A side under 8 px is a placeholder or an icon, never a face photo.
MAX_IMAGE_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 8


class ImageError(MaskstatusError, ValueError):
    """An image file could not be decoded; ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image: {self.path} ({reason})")


def is_image_file(path: str | Path) -> bool:
    """True when the extension (any case) is one of IMAGE_EXTENSIONS."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16L", "I;16B"):
        # 16-bit grayscale: convert("RGB") would clip to 255 instead of scaling.
        gray = np.asarray(img, dtype=np.float64)
        if gray.size and gray.max() > 255:
            gray = gray / 257.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels hold arbitrary colours; show them as a white background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    # np.array copies, so the result is writable (np.asarray of a PIL image is read-only).
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _check_size(path: str | Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(path, f"{width}x{height} is {width * height / 1e6:.0f} million pixels, more than the "
                               f"{MAX_IMAGE_PIXELS / 1e6:.0f} million allowed; downscale it")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(path, f"{width}x{height} pixels: a side under {MIN_IMAGE_SIDE} px is no face photo")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array, upright per its EXIF orientation.

    Grayscale, palette, RGBA (composited onto white), CMYK and 16-bit files are all
    turned into RGB. Raises ImageError for missing, corrupt or truncated files, and for images
    over MAX_IMAGE_PIXELS or with a side under MIN_IMAGE_SIDE (checked from the header, before decoding).
    """
    try:
        with warnings.catch_warnings():
            # PIL's decompression-bomb warning names no file; the size check below does, with a lower limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as img:
            _check_size(path, *img.size)
            # Decode all pixel data now: a truncated file must fail here, not in a worker later.
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not a file") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image: corrupt or unknown format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"too many pixels to decode ({exc}); downscale it") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad data
        raise ImageError(path, str(exc) or type(exc).__name__) from None
