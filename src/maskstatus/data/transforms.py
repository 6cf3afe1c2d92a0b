"""Albumentations pipelines declared in YAML, with train and eval kept apart.

A spec is ``{name: <albumentations class>, **arguments}``; composition
classes (OneOf, SomeOf, Sequential) take ``transforms: [specs]``. ``Normalize``
without mean/std takes the backbone's; when a pipeline has no Normalize one is
appended, and ``ToTensorV2`` always ends it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..config import ConfigError

_COMPOSITIONS = {"OneOf", "SomeOf", "Sequential"}
# Steps whose output depends on the input alone (at p=1): running them once, when the cache is filled,
# gives the pixels that running them on every sample gives. Kept to the ones whose every argument is
# fixed; e.g. LongestMaxSize picks among several sizes at random when given a list.
_DETERMINISTIC = {"CenterCrop", "Crop", "Resize"}


def _build_one(spec: dict[str, Any], where: str, mean: Sequence[float], std: Sequence[float]) -> A.BasicTransform:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: a transform needs a 'name' key, got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    cls = getattr(A, str(name), None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}.name: unknown albumentations transform {name!r}")
    if name in _COMPOSITIONS:
        children = args.pop("transforms", None)
        if not children:
            raise ConfigError(f"{where}.transforms: {name} needs a non-empty list of transforms")
        args["transforms"] = [_build_one(c, f"{where}.transforms[{i}]", mean, std) for i, c in enumerate(children)]
    if name == "Normalize":
        args.setdefault("mean", tuple(mean))
        args.setdefault("std", tuple(std))
    for key in ("size", "std_range", "hole_height_range", "hole_width_range", "num_holes_range", "limit"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    # albumentations only warns about unknown arguments; a config typo must be an error.
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(args) - set(params))
        if unknown:
            raise ConfigError(f"{where}: {name} takes no argument(s) {unknown}; it takes {sorted(params)}")
    try:
        return cls(**args)
    except Exception as exc:  # albumentations raises pydantic and type errors with useful text
        raise ConfigError(f"{where}: cannot build {name} with {args}: {exc}") from None


def build_transforms(
    specs: Sequence[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    where: str = "transforms",
    defer_normalize: bool = False,
) -> A.Compose:
    """The pipeline; with ``defer_normalize`` the Normalize it would append is left to :func:`batch_normalizer`.

    A pipeline that names its own Normalize keeps it either way: steps after it see floats.
    """
    steps = [_build_one(s, f"{where}[{i}]", mean, std) for i, s in enumerate(specs)]
    deferred = defer_normalize and not _normalizes(specs)
    if not deferred and not any(isinstance(t, A.Normalize) for t in steps):
        steps.append(A.Normalize(mean=tuple(mean), std=tuple(std)))
    steps.append(ToTensorV2())
    return A.Compose(steps)


def _normalizes(specs: Sequence[Any]) -> bool:
    """Whether any step, nested ones included, is a Normalize (then nothing is deferred)."""
    for spec in specs:
        if isinstance(spec, dict) and (spec.get("name") == "Normalize" or _normalizes(spec.get("transforms") or [])):
            return True
    return False


class BatchNormalize:
    """Normalize on uint8 batches (N, C, H, W), on whatever device they are: the same floats as albumentations.

    Its table is read off albumentations' own Normalize applied to every pixel value, so a batch
    normalised here equals, bit for bit, the images normalised one by one in the workers (for
    uint8 images Normalize is a per-channel lookup table, which float arithmetic on the device
    would only approximate).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], len(mean), axis=2)
        table = A.Normalize(mean=tuple(mean), std=tuple(std))(image=ramp)["image"][0]  # (256, C)
        self.table = torch.from_numpy(np.ascontiguousarray(table.T, dtype=np.float32))  # (C, 256)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(
                f"BatchNormalize takes the uint8 batches of a pipeline built with defer_normalize, got {images.dtype}"
            )
        if self.table.device != images.device:
            self.table = self.table.to(images.device)
        index = images.long()
        return torch.stack([self.table[c].take(index[:, c]) for c in range(images.shape[1])], dim=1)


def batch_normalizer(
    specs: Sequence[dict[str, Any]], mean: Sequence[float], std: Sequence[float], defer_normalize: bool
) -> BatchNormalize | None:
    """What ``build_transforms(specs, ..., defer_normalize)`` leaves for the batches; None if it leaves nothing."""
    return BatchNormalize(mean, std) if defer_normalize and not _normalizes(specs) else None


def _deterministic(spec: Any) -> bool:
    if not isinstance(spec, dict) or spec.get("name") not in _DETERMINISTIC:
        return False
    p = spec.get("p", 1.0)
    return isinstance(p, (int, float)) and p >= 1.0


def shared_prefix(train_specs: Sequence[dict[str, Any]], eval_specs: Sequence[dict[str, Any]]) -> int:
    """How many leading steps the two pipelines share that are deterministic (crops, resizes at p=1).

    Those steps can run once, on the cached image, for training and validation alike; the first
    step that differs between the pipelines or draws anything at random ends the prefix.
    """
    n = 0
    for a, b in zip(train_specs, eval_specs, strict=False):  # the shorter pipeline ends the prefix
        if a != b or not _deterministic(a):
            break
        n += 1
    return n


class Prepare:
    """Deterministic steps run on each image as the cache is filled (a picklable callable).

    ``variant`` names them in a disk cache's key, so a cache prepared otherwise is never reused.
    """

    def __init__(self, specs: Sequence[dict[str, Any]], where: str = "transforms") -> None:
        if not specs or not all(_deterministic(s) for s in specs):
            raise ValueError(f"Prepare takes deterministic crops and resizes only, got {list(specs)}")
        self.specs = [dict(s) for s in specs]
        self.where = f"{where}[0:{len(specs)}]"
        self.compose = A.Compose([_build_one(s, f"{where}[{i}]", (0.0,), (1.0,)) for i, s in enumerate(specs)])
        self.variant = "prepare=" + json.dumps(self.specs, sort_keys=True)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        try:
            return self.compose(image=image)["image"]
        except Exception as exc:  # albumentations' own errors name no config key
            names = ", ".join(s["name"] for s in self.specs)
            raise ConfigError(
                f"{self.where} ({names}) cannot run on a {image.shape[0]}x{image.shape[1]} image: {exc}"
            ) from None


def split_prepare(
    train_specs: Sequence[dict[str, Any]], eval_specs: Sequence[dict[str, Any]], enabled: bool = True
) -> tuple[Prepare | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The shared deterministic prefix as a :class:`Prepare` (None if none or not ``enabled``), and what is left."""
    n = shared_prefix(train_specs, eval_specs) if enabled else 0
    prepare = Prepare(train_specs[:n], "transforms.train") if n else None
    return prepare, list(train_specs[n:]), list(eval_specs[n:])


def output_shape(pipeline: A.Compose, input_hw: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the tensor the pipeline makes from an image of input_hw (to catch train/eval mismatches)."""
    dummy = np.zeros((*input_hw, 3), dtype=np.uint8)
    return tuple(pipeline(image=dummy)["image"].shape)


def build_train_eval(
    train_specs: Sequence[dict[str, Any]],
    eval_specs: Sequence[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    input_hw: tuple[int, int] | None = None,
    defer_normalize: bool = False,
) -> tuple[A.Compose, A.Compose]:
    """Both pipelines; when the input size is known, insist they make the same tensor shape.

    The starter code trained and predicted at different sizes; this refuses that
    at start-up instead of silently scoring lower.
    """
    train = build_transforms(train_specs, mean, std, "transforms.train", defer_normalize)
    evaluate = build_transforms(eval_specs, mean, std, "transforms.eval", defer_normalize)
    if input_hw is not None:
        ts, es = output_shape(train, input_hw), output_shape(evaluate, input_hw)
        if ts != es:
            raise ConfigError(
                f"transforms.train makes tensors of shape {ts} but transforms.eval makes {es} "
                f"from {input_hw[0]}x{input_hw[1]} images; add the same Resize/crop to both"
            )
    return train, evaluate
