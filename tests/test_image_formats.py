"""One list of accepted image formats (data.images.IMAGE_FORMATS) for predict's folder listing and the server."""

import logging

import numpy as np
import pytest
from PIL import Image

from maskstatus.data.images import IMAGE_EXTENSIONS, ImageError, is_image_file, load_rgb
from maskstatus.data.tables import folder_table


def test_gif_and_tiff_are_listed_heic_and_others_named_in_a_warning(tmp_path, caplog):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (16, 12), (200, 0, 0)).save(root / "a.jpg")
    Image.new("P", (16, 12)).save(root / "b.gif")
    Image.new("RGB", (16, 12)).save(root / "sub" / "c.tif")
    Image.new("RGB", (16, 12)).save(root / "sub" / "d.TIFF", format="TIFF")
    (root / "e.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "Thumbs.db").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="maskstatus.data.tables"):
        table = folder_table(root)
    assert list(table["image_id"]) == ["a.jpg", "b.gif", "sub/c.tif", "sub/d.TIFF"]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "2 file(s) left out" in message and "e.heic" in message and "notes.txt" in message
    assert ".DS_Store" not in message and "Thumbs.db" not in message


def test_a_folder_of_images_only_warns_nothing(tmp_path, caplog):
    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING):
        folder_table(tmp_path)
    assert not caplog.records


def test_gif_decodes_its_first_frame_and_tiff_its_first_page(tmp_path):
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tiff"):
        rgb = load_rgb(tmp_path / name)
        assert rgb.shape == (10, 20, 3)
        np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), (255, 0, 0), atol=2)


def test_a_format_outside_the_list_is_refused_by_name_whatever_its_extension(tmp_path):
    from maskstatus.data.images import ImageFormatError

    Image.new("RGB", (32, 32)).save(tmp_path / "icon.png", format="ICO")
    with pytest.raises(ImageFormatError, match="ICO images are not accepted") as err:
        load_rgb(tmp_path / "icon.png")
    assert err.value.format == "ICO" and "JPEG, PNG" in str(err.value)
    (tmp_path / "photo.jpg").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_rgb(tmp_path / "photo.jpg")


def test_one_extension_list():
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
    assert is_image_file("x.GIF") and is_image_file("x.tif") and not is_image_file("x.heic")
