"""torch Dataset over the image cache: (image tensor, targets) per row of the image table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from ..age import AGE_YEARS
from ..config import ConfigError
from ..errors import DataError, Problem
from ..labels import AgeThresholds, age_group, encode
from .cache import ImageCache
from .transforms import BatchNormalize


def table_targets(table: pd.DataFrame, thresholds: AgeThresholds | None = None) -> dict[str, np.ndarray]:
    """The image table's labels as target arrays, one per head.

    With `thresholds`, age groups (and so classes) are recomputed from the ages
    in years: training may use other boundaries than scoring (e.g. 58 for 60).
    ``age_years`` is the age itself (float; -1 where unknown) for a regression head.
    """
    mask, gender = table["mask"].to_numpy(np.int64), table["gender"].to_numpy(np.int64)
    if thresholds is None:
        age, cls = table["age_group"].to_numpy(np.int64), table["label"].to_numpy(np.int64)
    else:
        years = table["age"].to_numpy()
        # Rows without years (pseudo labels, age -1) keep the age group they came with.
        age = np.where(years >= 0, age_group(years, thresholds), table["age_group"].to_numpy()).astype(np.int64)
        cls = np.asarray(encode(mask, gender, age), dtype=np.int64)
    years = table["age"].to_numpy(np.float32) if "age" in table else np.full(len(table), -1.0, np.float32)
    return {"class": cls, "mask": mask, "gender": gender, "age": age, AGE_YEARS: years}


class FaceDataset(Dataset):
    """Rows `indices` of an ImageCache, transformed, with optional targets.

    Augmentation randomness is seeded per (seed, epoch, row), so a batch's
    pixels do not depend on the number of DataLoader workers, and a resumed
    run sees the same augmentations as an uninterrupted one.

    With ``normalize`` (the ``BatchNormalize`` a ``defer_normalize`` transform left out),
    items stay uint8 and ``model_input`` normalises whole batches where they land.
    """

    def __init__(
        self,
        cache: ImageCache,
        indices: np.ndarray,
        transform: A.Compose,
        targets: dict[str, np.ndarray] | None = None,
        seed: int = 0,
        normalize: BatchNormalize | None = None,
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.targets = targets
        self.seed = seed
        self.normalize = normalize
        self.epoch = 0

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A collated batch of this data set's images as the model takes them."""
        return images if self.normalize is None else self.normalize(images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.indices[i])
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(1)[0])
        self.transform.set_random_seed(sample_seed)
        image = self.transform(image=np.asarray(self.cache[row]))["image"]
        if self.normalize is not None and image.dtype != torch.uint8:
            raise ConfigError(
                f"a transform turned the images into {image.dtype} before normalisation, so it cannot "
                f"run on the batches: set train.normalize_on=workers, or end the pipeline with "
                f"an explicit Normalize"
            )
        item: dict[str, Any] = {"image": image, "row": row}
        if self.targets is not None:
            for key, values in self.targets.items():
                item[key] = torch.as_tensor(values[row])
        return item


class NamedCollate:
    """``default_collate``, but images of different shapes raise a DataError naming the files.

    Without ``cache.size`` every image keeps its own size, and a pipeline that does not resize
    would otherwise fail inside ``torch.stack`` naming no file.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        shapes = [tuple(item["image"].shape) for item in batch]
        if len(set(shapes)) > 1:
            common = max(set(shapes), key=shapes.count)
            odd = [
                Problem(self.paths[item["row"]], f"makes a {_hw(shape)} tensor, not {_hw(common)} like the others")
                for item, shape in zip(batch, shapes, strict=True)
                if shape != common
            ]
            raise DataError(
                odd,
                "one batch",
                note="images of different sizes: set cache.size=[height, width] or "
                "end transforms.train and transforms.eval with a Resize",
            )
        return default_collate(batch)


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape[-2:])


def worker_init(_: int) -> None:
    # Each worker is one process of its own: nested OpenCV/torch thread pools only oversubscribe the cores.
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
