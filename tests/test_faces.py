"""Face detection and the training-style crop on whole photos (skimage's astronaut portrait)."""

import numpy as np
import pytest

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from maskstatus.data.faces import Box, FaceDetector, crop_face, training_frame  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()  # 512x512 RGB, face near (175..265, 76..166)


def wide_scene(face_photo, seed=0):
    """The portrait pasted off-centre into a 1200x1600 noisy background: a small face in a whole photo."""
    bg = np.random.default_rng(seed).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    bg[500:1012, 900:1412] = face_photo
    return bg


def test_finds_the_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert faces, "no face found in the astronaut photo"
    best = faces[0]
    # the face, not the other (lower-scoring) detection on the suit
    assert 150 < (best.left + best.right) / 2 < 290 and 50 < (best.top + best.bottom) / 2 < 190


def test_small_face_in_a_wide_photo_is_cropped_like_training(detector, astronaut):
    scene = wide_scene(astronaut)
    crop = crop_face(scene, detector, aspect=4 / 3)
    assert crop.cropped
    face, frame = crop.face, crop.frame
    assert 900 + 150 < (face.left + face.right) / 2 < 900 + 290
    assert frame.left <= face.left and face.right <= frame.right
    assert frame.top <= face.top and face.bottom <= frame.bottom
    assert crop.image.shape[:2] == (frame.height, frame.width)
    assert frame.height / frame.width == pytest.approx(4 / 3, rel=0.02)
    # the frame is framed as training photos are, so cropping it again changes nothing
    again = crop_face(crop.image, detector, aspect=4 / 3)
    assert not again.cropped and again.face is not None
    assert again.image is crop.image


def test_no_face_keeps_the_photo(detector):
    flat = np.full((300, 400, 3), 127, np.uint8)
    crop = crop_face(flat, detector)
    assert crop.face is None and not crop.cropped and crop.image is flat


def test_frame_stays_inside_the_photo():
    frame = training_frame(Box(0, 0, 40, 40), (1000, 1000), aspect=4 / 3)
    assert frame.left == 0 and frame.top == 0 and frame.width == 100 and frame.height == 133
    clipped = training_frame(Box(10, 10, 90, 90), (120, 100))
    assert (clipped.left, clipped.top, clipped.right, clipped.bottom) == (0, 0, 100, 120)


def test_detect_rejects_non_rgb(detector):
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_face_crop_cache_crops_files_and_keys_apart(astronaut, tmp_path):
    from PIL import Image

    from maskstatus.config import load_config
    from maskstatus.data.cache import ImageCache, cache_key
    from maskstatus.data.faces import cache_loader, shared_detector

    assert load_config(None, []).data.face_crop is False  # off unless asked for
    scene = wide_scene(astronaut)
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    kwargs = cache_loader(True, [64, 48])
    cache = ImageCache([str(path)], size=None, mode="memory", progress=False, **kwargs).fill()
    expected = crop_face(scene, shared_detector(), aspect=64 / 48)
    assert expected.cropped
    np.testing.assert_array_equal(cache[0], expected.image)
    assert cache_loader(False, [64, 48]) == {}
    # a face-cropped disk cache never stands in for a whole-photo one
    assert cache_key([str(path)], (64, 48), kwargs["variant"]) != cache_key([str(path)], (64, 48))
