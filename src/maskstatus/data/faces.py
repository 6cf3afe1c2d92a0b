"""Find the face in a whole photo and cut it out framed like the training photos.

The training photos are upper-body portraits (384 wide x 512 high) with the
face near the top middle. A photo that is framed much wider (a street scene, a
group, a phone photo in landscape) shows the model a small face it never saw
in training, so the serving code finds the face first and cuts out a frame of
the training shape around it.

Detector choice. OpenCV 5.0 (the ``opencv-python-headless`` this project
installs) no longer ships ``cv2.data.haarcascades`` nor ``cv2.CascadeClassifier``,
so the classic Haar cascades would need a second, older OpenCV. dlib's HOG +
linear SVM frontal face detector is compiled into the ``dlib-bin`` wheel
(Boost Software License, MIT-compatible; no weight file to fetch), needs no
other dependency and finds the face of skimage's ``astronaut`` photo alone
and pasted into a 1600x1200 noise background (0.1 s and 0.7 s on one CPU
core). Its limits: frontal faces only, and it misses many faces whose nose and
mouth are covered (mask worn); when it finds nothing the whole photo is used,
which is what the model was trained on anyway.

Rule for "already framed": the frame around the detected face is compared with
the photo; when it would cover at least half of the photo's area the photo is
taken as framed like the training data and left whole (a competition photo, a
face crop). Only a photo where the face is small is cropped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

# Training framing, measured by eye on competition-style portraits: the detector's
# box (brows to chin) is about 40% of the photo's width, its centre about 40% down.
FACE_WIDTH_FRACTION = 0.4
FACE_CENTER_HEIGHT = 0.4
# Height / width of the training photos (512 / 384).
TRAINING_ASPECT = 4 / 3
# A frame covering at least this share of the photo means the photo is already framed.
FRAMED_AREA_FRACTION = 0.5


@dataclass(frozen=True)
class Box:
    """Pixel box [left, right) x [top, bottom) with the detector's score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


@dataclass(frozen=True)
class FaceCrop:
    image: np.ndarray  # what the model gets: the frame around the face, or the whole photo
    face: Box | None  # the detected face in photo coordinates, None when none was found
    frame: Box | None  # the cut-out frame in photo coordinates, None when the photo was kept whole

    @property
    def cropped(self) -> bool:
        return self.frame is not None


class Detector(Protocol):
    """Anything that finds faces the way FaceDetector does (a wrapper that resizes first, for one)."""

    def detect(self, image: np.ndarray) -> list[Box]: ...


class FaceDetector:
    """dlib's frontal face detector; one instance may be shared by threads (calls are serialised)."""

    def __init__(self, upsample: int = 1) -> None:
        from ..extras import require

        # A clear message beats a bare ModuleNotFoundError deep in a request or a cache fill.
        require("serve", "face detection (serve, data.face_crop)", ["dlib"])
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect needs an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        with self._lock:
            rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample, 0.0)
        h, w = image.shape[:2]
        boxes = [
            Box(max(r.left(), 0), max(r.top(), 0), min(r.right() + 1, w), min(r.bottom() + 1, h), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]
        return sorted(boxes, key=lambda b: b.score, reverse=True)


def training_frame(face: Box, image_hw: tuple[int, int], aspect: float = TRAINING_ASPECT) -> Box:
    """The frame of height/width ``aspect`` around ``face`` framed like a training photo, kept inside the image.

    The frame is moved (not shrunk) to fit inside the photo where it can; when it is
    larger than the photo it is clipped to it.
    """
    h, w = image_hw
    fw = face.width / FACE_WIDTH_FRACTION
    fh = fw * aspect
    cx = (face.left + face.right) / 2
    cy = (face.top + face.bottom) / 2
    left = cx - fw / 2
    top = cy - FACE_CENTER_HEIGHT * fh
    left = min(max(left, 0.0), max(w - fw, 0.0))
    top = min(max(top, 0.0), max(h - fh, 0.0))
    return Box(int(round(left)), int(round(top)), int(round(min(left + fw, w))), int(round(min(top + fh, h))))


def crop_face(image: np.ndarray, detector: Detector, aspect: float = TRAINING_ASPECT) -> FaceCrop:
    """Cut the best-scoring face out of a whole photo framed like the training data; see the module doc."""
    faces = detector.detect(image)
    if not faces:
        return FaceCrop(image, None, None)
    face = faces[0]
    h, w = image.shape[:2]
    frame = training_frame(face, (h, w), aspect)
    if frame.width * frame.height >= FRAMED_AREA_FRACTION * h * w:
        return FaceCrop(image, face, None)
    logger.debug("face %s in a %dx%d photo: cropping to %s", face.as_list(), w, h, frame.as_list())
    return FaceCrop(np.ascontiguousarray(image[frame.top : frame.bottom, frame.left : frame.right]), face, frame)


def cache_aspect(size: tuple[int, int] | list[int] | None) -> float:
    """Frame shape for a run: its ``cache.size`` (height, width), else the training photos' 4:3."""
    return size[0] / size[1] if size else TRAINING_ASPECT


_shared: FaceDetector | None = None
_shared_lock = threading.Lock()


def shared_detector() -> FaceDetector:
    """One detector per process (its model is built once; calls are serialised by its lock)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FaceDetector()
        return _shared


class FaceCropLoader:
    """``ImageCache`` loader for ``data.face_crop``: decode a file as ``load_rgb`` does, then ``crop_face`` it."""

    variant = "face_crop"

    def __init__(self, aspect: float = TRAINING_ASPECT) -> None:
        self.aspect = aspect
        self.detector = shared_detector()

    def __call__(self, path: str) -> np.ndarray:
        from .images import load_rgb

        return crop_face(load_rgb(path), self.detector, self.aspect).image


def cache_loader(face_crop: bool, size: tuple[int, int] | list[int] | None) -> dict:
    """``ImageCache`` keyword arguments (loader and variant) for a run's ``data.face_crop`` and ``cache.size``."""
    if not face_crop:
        return {}
    loader = FaceCropLoader(cache_aspect(size))
    return {"loader": loader, "variant": f"{loader.variant}:{loader.aspect:.6f}"}
