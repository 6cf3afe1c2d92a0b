import numpy as np
import pytest
from PIL import Image

from maskstatus.data.images import IMAGE_EXTENSIONS, ImageError, is_image_file, load_rgb

W, H = 16, 12


def test_rgb_jpeg_shape_and_dtype(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (W, H), (200, 40, 40)).save(path)
    arr = load_rgb(path)
    assert arr.shape == (H, W, 3)
    assert arr.dtype == np.uint8
    assert arr.flags.writeable
    assert abs(int(arr[..., 0].mean()) - 200) < 8


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (W, H), 77).save(path)
    arr = load_rgb(str(path))
    assert arr.shape == (H, W, 3)
    assert (arr == 77).all()


def test_rgba_png_composited_onto_white(tmp_path):
    path = tmp_path / "t.PNG"
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    img.save(path)
    arr = load_rgb(path)
    assert arr.shape == (H, W, 3)
    assert tuple(arr[0, 0]) == (10, 20, 30)
    assert tuple(arr[5, 5]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "p.png"
    img = Image.new("P", (W, H), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    img.save(path, transparency=0)
    arr = load_rgb(path)
    assert tuple(arr[1, 1]) == (0, 255, 0)
    assert tuple(arr[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg_and_16bit_png(tmp_path):
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (W, H), (0, 0, 0, 0)).save(cmyk)
    arr = load_rgb(cmyk)
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8

    deep = tmp_path / "d.png"
    Image.fromarray(np.full((H, W), 65535, dtype=np.uint16)).save(deep)
    arr = load_rgb(deep)
    assert arr.shape == (H, W, 3)
    assert (arr == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to show upright
    Image.new("RGB", (W, H), (0, 0, 255)).save(path, exif=exif.tobytes())
    arr = load_rgb(path)
    assert arr.shape == (W, H, 3)


def test_corrupt_file_names_file_and_reason(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert "not a recognised image" in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_truncated_jpeg_fails(tmp_path):
    full = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    data = full.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(f"cannot decode image: {path}")
    assert "truncated" in message.lower()


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")


def test_image_extensions():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
    assert is_image_file("x/MASK1.JPEG")
    assert is_image_file("a.webp")
    assert not is_image_file("notes.txt")
