"""Decode, orient and resize every image once; serve uint8 arrays after that.

The crops and resizes that every sample would get first (``Prepare`` in
``data.transforms``) run once too, before an image is stored.
Decoding a JPEG each epoch is the usual CPU bottleneck, so the cache is filled
once before training: in memory (shared copy-on-write with forked DataLoader
workers), or on disk as one uint8 .npy array memory-mapped by every later epoch
and every later run on the same files and size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, Problem
from ..runs import atomic_write
from .images import ImageError, load_rgb

logger = logging.getLogger(__name__)

Size = tuple[int, int] | None


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resize_to(img: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """Resize to (height, width); INTER_AREA because the cache only ever shrinks photos."""
    if size is None or img.shape[:2] == tuple(size):
        return img
    h, w = size
    interp = cv2.INTER_AREA if h <= img.shape[0] and w <= img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def cache_key(paths: Sequence[str], size: Size, variant: str = "") -> str:
    """Identity of the cached array: every file's path, length and mtime, the target size and the loader's variant."""
    h = hashlib.sha1(repr(tuple(size) if size else None).encode())
    if variant:  # empty for plain decoding, so existing caches keep their keys
        h.update(f"variant={variant}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class ImageCache:
    """Index -> decoded uint8 RGB image (H, W, 3), for a fixed list of files."""

    def __init__(
        self,
        paths: Sequence[str],
        size: Sequence[int] | None = None,
        mode: str = "memory",
        cache_dir: Path | str = ".cache/maskstatus",
        threads: int = 2,
        progress: bool = True,
        loader: Callable[[str], np.ndarray] = load_rgb,
        variant: str = "",
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if mode not in ("memory", "disk", "none"):
            raise ConfigError(f"cache.mode must be memory, disk or none, got {mode!r}")
        if mode == "disk" and size is None:
            raise ConfigError("cache.mode=disk needs cache.size (height, width): one array holds all images")
        self.paths = [str(p) for p in paths]
        self.size: Size = (size[0], size[1]) if size else None
        self.mode = mode
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self.progress = progress
        self.loader = loader
        # Steps run on each decoded, resized image before it is stored (data.transforms.Prepare).
        self.prepare = prepare
        # Names a loader other than load_rgb, and the prepare steps, in the disk cache's key.
        self.variant = "|".join(v for v in (variant, getattr(prepare, "variant", "")) if v)
        self.item_shape: tuple[int, ...] | None = None if self.size is None else self._stored_shape(self.size)
        self._store: np.ndarray | list[np.ndarray] | None = None
        self.file: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _array_shape(self) -> tuple[int, ...]:
        """Shape of the one array that holds every image; only a cache with a fixed size has one."""
        assert self.item_shape is not None, "a cache without cache.size keeps a list of images, not one array"
        return (len(self.paths), *self.item_shape)

    def _stored_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        blank = np.zeros((*size, 3), dtype=np.uint8)
        return tuple(np.asarray(self.prepare(blank)).shape) if self.prepare is not None else blank.shape

    def _decode(self, i: int) -> np.ndarray:
        img = resize_to(self.loader(self.paths[i]), self.size)
        return np.ascontiguousarray(self.prepare(img)) if self.prepare is not None else img

    def _decode_or_error(self, i: int) -> np.ndarray | ImageError:
        try:
            return self._decode(i)
        except ImageError as exc:
            return exc

    def _decode_all(self, out) -> None:
        """Decode every file into ``out``; a DataError naming every file that failed, after trying them all."""
        bad: list[Problem] = []
        with ThreadPoolExecutor(self.threads) as pool:
            it = pool.map(self._decode_or_error, range(len(self.paths)))
            for i, img in enumerate(tqdm(it, total=len(self.paths), desc="decode", disable=not self.progress)):
                if isinstance(img, ImageError):
                    bad.append(Problem(img.path, img.reason))
                else:
                    out[i] = img
        if bad:
            raise DataError(bad, f"{len(self.paths)} images", note="cannot decode")

    def fill(self) -> ImageCache:
        """Decode everything now (no-op for mode=none or when already filled)."""
        if self.mode == "none" or self._store is not None:
            return self
        if self.mode == "memory":
            if self.size is None:
                store: list = [None] * len(self.paths)
                self._decode_all(store)
                self._store = store
            else:
                arr = np.empty(self._array_shape(), dtype=np.uint8)
                self._decode_all(arr)
                self._store = arr
            return self
        self._store = self._open_disk()
        return self

    def _open_disk(self) -> np.ndarray:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = cache_key(self.paths, self.size, self.variant)
        path = self.cache_dir / f"images-{key}.npy"
        self.file = path
        if path.is_file():
            stored, reason = self._read_disk(path)
            if stored is not None:
                logger.info("reusing disk cache %s", path)
                return stored
            # Written atomically, a cache is only ever damaged from outside (a copy cut short, a full disk
            # in a sync tool): its content is derived, so it is rebuilt rather than left for the user to delete.
            logger.warning("disk cache %s is unusable (%s); building it again", path, reason)
        logger.info("filling disk cache %s (%d images)", path, len(self.paths))
        # Written atomically: a crash mid-fill leaves no half-valid cache for a later run to trust.
        atomic_write(path, self._fill_file)
        stored, reason = self._read_disk(path)
        if stored is None:
            raise DataError.one(path, f"disk cache just written is unusable ({reason}); delete it and check the disk")
        return stored

    def _read_disk(self, path: Path) -> tuple[np.ndarray | None, str]:
        """The cached array memory-mapped, or None and why when the file is truncated or holds another shape."""
        expected = self._array_shape()
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:  # numpy's words for a short or garbled .npy
            return None, str(exc)
        if arr.dtype != np.uint8 or arr.shape != expected:
            return None, f"holds {arr.dtype} {arr.shape}, expected uint8 {expected}"
        return arr, ""

    def _fill_file(self, tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self._array_shape())
        self._decode_all(arr)
        arr.flush()
        del arr

    def __getitem__(self, i: int) -> np.ndarray:
        if self._store is None:
            if self.mode != "none":
                raise RuntimeError("ImageCache.fill() must be called before reading")
            return self._decode(i)
        return self._store[i]
