import os

import numpy as np
import pytest
from PIL import Image

from maskstatus.data.cache import ImageCache, cache_key


def _images(tmp_path, n=5):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class CountingLoader:
    def __init__(self):
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return np.asarray(Image.open(path).convert("RGB"))


def test_memory_cache_decodes_each_image_once(tmp_path):
    paths = _images(tmp_path)
    loader = CountingLoader()
    cache = ImageCache(paths, size=(20, 15), mode="memory", progress=False, loader=loader).fill()
    for _ in range(3):  # three "epochs"
        for i in range(len(cache)):
            assert cache[i].shape == (20, 15, 3) and cache[i].dtype == np.uint8
    assert loader.calls == len(paths)


def test_original_size_kept_without_size(tmp_path):
    cache = ImageCache(_images(tmp_path), size=None, progress=False).fill()
    assert cache[0].shape == (40, 30, 3)


def test_disk_cache_reused_by_a_second_run_and_invalidated_by_change(tmp_path):
    paths = _images(tmp_path)
    d = tmp_path / "cache"
    first = CountingLoader()
    a = ImageCache(paths, size=(20, 15), mode="disk", cache_dir=d, progress=False, loader=first).fill()
    assert first.calls == len(paths) and a.file.is_file()
    second = CountingLoader()
    b = ImageCache(paths, size=(20, 15), mode="disk", cache_dir=d, progress=False, loader=second).fill()
    assert second.calls == 0 and b.file == a.file
    np.testing.assert_array_equal(np.asarray(a[3]), np.asarray(b[3]))
    # another size or a changed file -> another key
    assert cache_key(paths, (10, 10)) != cache_key(paths, (20, 15))
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(paths, (20, 15)) != a.file.stem.split("-", 1)[1]


def test_failed_fill_leaves_no_cache_file(tmp_path):
    paths = _images(tmp_path)

    def broken(path):
        if path.endswith("img3.png"):
            raise ValueError(f"cannot decode image: {path}")
        return np.asarray(Image.open(path).convert("RGB"))

    d = tmp_path / "cache"
    with pytest.raises(ValueError, match="img3.png"):
        ImageCache(paths, size=(20, 15), mode="disk", cache_dir=d, progress=False, loader=broken).fill()
    assert list(d.iterdir()) == []


def test_disk_mode_needs_size_and_unfilled_read_fails(tmp_path):
    with pytest.raises(ValueError, match="cache.size"):
        ImageCache(_images(tmp_path), size=None, mode="disk")
    with pytest.raises(RuntimeError, match="fill"):
        ImageCache(_images(tmp_path), size=(8, 8))[0]
    # mode none decodes on demand
    assert ImageCache(_images(tmp_path), size=(8, 8), mode="none")[0].shape == (8, 8, 3)
