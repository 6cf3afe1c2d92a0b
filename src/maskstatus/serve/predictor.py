"""A model loaded once that answers for images in memory exactly what ``maskstatus predict`` answers for files.

Everything between the decoded image and the 18 probabilities is the
run's prediction pipeline (``infer.pipeline``), the one ``predict`` and
``export`` use: it loads the runs, sizes the images, applies each run's eval
transforms, runs the TTA views and joins the ensemble members. Only the source
of the pixels differs: arrays already decoded (with ``load_rgb``'s rules)
instead of file paths. Two bounds on
the cost of large photos apply only here: a JPEG over 2 x ``DECODE_MIN_SIDE``
is decoded at reduced size, and faces are looked for in a copy at most
``DETECT_MAX_SIDE`` long; a face-crop-sized photo is unaffected by either. With
``backend="onnx"`` the networks run in ONNX Runtime from ``maskstatus export``'s
files, as ``predict --backend onnx`` runs them; Grad-CAM still needs gradients,
so ``explain`` keeps the PyTorch weights for its heatmaps.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import cv2
import numpy as np

from ..choices import check_accelerator_available, check_backend
from ..data.faces import Box, FaceCrop, FaceDetector, cache_aspect, crop_face, shared_detector
from ..data.images import (
    MAX_IMAGE_PIXELS,
    ImageError,
    ImageFormatError,
    ImageTooLarge,
    accepted_formats,
    load_rgb,
    probe_image,
)
from ..defaults import DECODE_MIN_SIDE, DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..infer.pipeline import Backend, Pipeline, model_inputs
from ..infer.tta import TTA, tta_views
from ..labels import AGE_NAMES, DEFAULT_AGE_THRESHOLDS, GENDER_NAMES, MASK_NAMES, TASKS, decode, split_class_probs
from .gradcam import heatmaps, png_data_uri

logger = logging.getLogger(__name__)

# Faces are looked for in a copy of the photo at most this long: dlib's detector costs time and memory with the
# pixels (7 s and 600 MB for a 16 MP photo, 0.8 s for 1600x1200), and a face in a portrait is far above its
# smallest (about 40 px at this size). Photos up to this size are searched as they are, as predict searches them.
DETECT_MAX_SIDE = 1600


class BadImage(ValueError):
    """An upload the server will not decode; ``reason`` is shown to the client with HTTP ``status``."""

    def __init__(self, reason: str, status: int = 422, filename: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.filename = filename


def _heif_brand(head: bytes) -> str | None:
    """'HEIC' (or AVIF...) for an ISO media file, which PIL cannot open without a plugin, so it can be named."""
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12].decode("ascii", "replace").strip()
    return "AVIF" if brand.startswith("avi") else "HEIC" if brand.startswith(("hei", "hev", "mif")) else None


def probe_upload(file: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = DECODE_MIN_SIDE) -> int:
    """Pixels that decoding an uploaded file will hold, read from its header (a decompression bomb costs nothing).

    Raises BadImage: 422 not an image, 415 a format not in ``IMAGE_FORMATS``, 413 more than ``max_pixels``.
    """
    file.seek(0)
    head = file.read(16)
    if not head:
        raise BadImage("empty file")
    file.seek(0)
    try:
        fmt, (width, height), pixels = probe_image(file, min_side)
    except ImageTooLarge as err:
        raise BadImage(f"too many pixels: {err.reason}", 413) from None
    except ImageFormatError as err:
        raise BadImage(err.reason, 415) from None
    except ImageError as err:
        brand = _heif_brand(head)
        if brand is not None:
            raise BadImage(
                f"{brand} images are not accepted (PIL cannot decode them); accepted formats: "
                f"{', '.join(accepted_formats())}",
                415,
            ) from None
        raise BadImage(err.reason) from None
    if pixels > max_pixels:
        decoded = "" if pixels == width * height else f" decoded at reduced size to {pixels} pixels"
        raise BadImage(f"too many pixels: {fmt} {width}x{height}{decoded} is more than the limit of {max_pixels}", 413)
    return pixels


def decode_upload(
    file: BinaryIO | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = DECODE_MIN_SIDE
) -> np.ndarray:
    """An uploaded file -> (H, W, 3) uint8 RGB, decoded as ``load_rgb`` decodes a file (JPEGs over twice
    ``min_side`` at reduced size), after ``probe_upload``'s checks."""
    if isinstance(file, bytes):
        file = io.BytesIO(file)
    probe_upload(file, max_pixels, min_side)
    file.seek(0)
    try:
        return load_rgb(file, min_side)
    except ImageTooLarge as err:
        raise BadImage(f"too many pixels: {err.reason}", 413) from None
    except ImageError as err:
        raise BadImage(err.reason) from None


def check_max_pixels(max_pixels: int) -> None:
    """--max-pixels must be positive and within the decoder's hard cap, which would refuse the images anyway."""
    if not 0 < max_pixels <= MAX_IMAGE_PIXELS:
        raise UsageError(
            f"--max-pixels {max_pixels}: give a number of pixels from 1 to {MAX_IMAGE_PIXELS} "
            "(images.MAX_IMAGE_PIXELS, the most any image may have)"
        )


def check_tta_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in TTA]
    if unknown:
        raise UsageError(
            f"--tta {', '.join(map(repr, unknown))}: unknown test-time augmentation; known: "
            f"{', '.join(TTA.names())}, or 'none'"
        )


class BoundedDetector:
    """A face detector run on a copy of the photo at most ``max_side`` px long, its boxes scaled back."""

    def __init__(self, detector: FaceDetector, max_side: int = DETECT_MAX_SIDE) -> None:
        self.detector = detector
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        scale = self.max_side / max(h, w)
        if scale >= 1:
            return self.detector.detect(image)
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        return [
            Box(
                max(0, round(b.left / scale)),
                max(0, round(b.top / scale)),
                min(w, round(b.right / scale)),
                min(h, round(b.bottom / scale)),
                b.score,
            )
            for b in self.detector.detect(small)
        ]


@dataclass
class Prediction:
    probs: np.ndarray  # (18,) float32, the ensemble's class probabilities
    crop: FaceCrop  # what the model saw, and where the face was
    age_ranges: tuple[str, ...] = DEFAULT_AGE_THRESHOLDS.names()  # readable age groups, e.g. "<30"

    def as_dict(self) -> dict:
        """JSON-ready answer: the class, each task's label and probabilities, the face box."""
        cls = int(self.probs.argmax())
        mask, gender, age = decode(cls)
        marginals = {t: p[0] for t, p in split_class_probs(self.probs[None].astype(np.float64)).items()}
        names = {"mask": MASK_NAMES, "gender": GENDER_NAMES, "age": AGE_NAMES}
        chosen = {"mask": mask, "gender": gender, "age": age}
        out: dict = {"class": cls, "class_prob": float(self.probs[cls])}
        for task in TASKS:
            out[task] = {
                "label": names[task][chosen[task]],
                "code": int(chosen[task]),
                "prob": float(marginals[task][chosen[task]]),
                "probs": {n: float(p) for n, p in zip(names[task], marginals[task], strict=True)},
            }
        out["age"]["range"] = self.age_ranges[age]
        out["age"]["ranges"] = dict(zip(AGE_NAMES, self.age_ranges, strict=True))
        out["face"] = {
            "detected": self.crop.face is not None,
            "box": self.crop.face.as_list() if self.crop.face else None,
            "cropped": self.crop.cropped,
            "frame": self.crop.frame.as_list() if self.crop.frame else None,
        }
        return out


class Predictor:
    """Runs loaded once; ``predict`` is thread-safe (one batch at a time through the models).

    ``sources`` are ensemble members as for ``maskstatus predict --run``: run
    folders or CV folders. ``face_crop`` finds the face in whole photos first
    (see ``data.faces``); ``predict`` on face crops answers as ``maskstatus predict``.
    """

    def __init__(
        self,
        sources: Sequence[Path | str],
        checkpoint: str = "best",
        accelerator: str = "auto",
        tta: Sequence[str] | None = None,
        face_crop: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int | None = None,
        backend: str = "torch",
        onnx_dir: Path | str | None = None,
    ) -> None:
        if not sources:
            raise ValueError("serve needs at least one run or CV folder")
        check_backend(backend, accelerator)
        check_accelerator_available(accelerator)
        self.backend = backend
        check_max_pixels(max_pixels)
        if tta is not None:  # unknown names fail at start-up, before any model is loaded
            check_tta_names(tta)
            tta_views(tta)
        self.sources = [Path(s) for s in sources]
        self.tta = None if tta is None else list(tta)
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        # Grad-CAM needs gradients, so with ONNX answering the PyTorch models are kept for ``explain``.
        self.pipeline = Pipeline.load(
            self.sources, checkpoint, cast(Backend, backend), onnx_dir, accelerator, keep_torch=True
        )
        self.pipeline.prepare_all()  # at start-up, not on the first request
        self.members = self.pipeline.members
        self.fabric = self.pipeline.fabric
        first = self.pipeline.first
        # Frame faces with the shape the first model was trained on (cache.size is height, width).
        self.aspect = cache_aspect(first.cache.size)
        # A run trained with data.face_crop saw only crops (predict crops for it too), so it gets them here
        # whatever ``face_crop`` says. In an ensemble mixing such runs with others, the others then get the
        # crop as well: the one case where the server's input differs from predict's.
        self.trained_on_faces = any(r.cfg.data.face_crop for m in self.members for r in m.runs)
        self.detector = BoundedDetector(shared_detector()) if face_crop or self.trained_on_faces else None
        # The scored age groups; the members of an ensemble are scored alike, so the first run's hold.
        self.age_ranges = first.data.age.thresholds().names()
        self.lock = threading.Lock()
        logger.info(
            "serving %d model(s) from %s on %s (%s)",
            self.model_count,
            ", ".join(map(str, self.sources)),
            self.fabric.device,
            "ONNX Runtime" if backend == "onnx" else "PyTorch",
        )

    @property
    def model_count(self) -> int:
        return sum(len(m.runs) for m in self.members)

    def describe(self) -> dict:
        # Folder names only: a client has no business knowing where the server keeps its runs.
        return {
            "sources": [s.resolve().name for s in self.sources],
            "models": self.model_count,
            "device": str(self.fabric.device),
            "backend": self.backend,
            "face_crop": self.detector is not None,
            "max_pixels": self.max_pixels,
        }

    def prepare(self, image: np.ndarray) -> FaceCrop:
        """The face cut out of a whole photo, or the photo itself (see ``data.faces``)."""
        if self.detector is None:
            return FaceCrop(image, None, None)
        return crop_face(image, self.detector, self.aspect)

    def probs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 18) ensemble probabilities of decoded RGB images, as ``predict`` computes them for files."""
        if not images:
            raise ValueError("probs needs at least one image")
        images = list(images)
        with self.lock:
            return self.pipeline.predict_arrays(images, self.batch_size, self.tta)[0]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Find the faces, then predict all images in one batch."""
        crops = [self.prepare(img) for img in images]
        probs = self.probs([c.image for c in crops])
        return [Prediction(p, c, self.age_ranges) for p, c in zip(probs, crops, strict=True)]

    def predict_timed(self, images: Sequence[np.ndarray]) -> tuple[list[Prediction], float]:
        start = time.perf_counter()
        preds = self.predict(images)
        return preds, time.perf_counter() - start

    def explain(self, image: np.ndarray) -> dict:
        """The answer for one photo plus a Grad-CAM heatmap per task as PNG data URIs (see ``serve.gradcam``).

        Each task's map comes from the first model that predicts the task (the
        first fold of a CV folder), explaining the ensemble's chosen class.
        """
        crop = self.prepare(image)
        pred = Prediction(self.probs([crop.image])[0], crop, self.age_ranges)
        answer = pred.as_dict()
        chosen = {t: answer[t]["code"] for t in TASKS}
        maps: dict[str, str] = {}
        with self.lock:
            for member in self.members:
                if all(t in maps for t in member.tasks):
                    continue
                run = member.torch_runs[0]
                x = model_inputs(run, [crop.image])[0].to(self.fabric.device)
                norm = run.norm
                for task, rgb in heatmaps(run.module, x, chosen, norm["mean"], norm["std"]).items():
                    maps.setdefault(task, png_data_uri(rgb))
        answer["heatmaps"] = maps
        return answer
