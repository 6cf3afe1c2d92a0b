"""Grad-CAM heatmaps per task, from the ``grad-cam`` package, for the web page's "why".

For each task the target is the task's chosen class: that class's logit for a
multi-task head, the log of the task's marginal probability for a single
18-way head (the sum of the classes sharing that task's value), and the
predicted mean age for an age-regression head. The maps are taken at the last
convolution with a spatial output (``conv_head`` for EfficientNets), on the
image exactly as the model sees it (after the run's eval transforms, without
TTA), and drawn over that image.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from ..age import AGE_YEARS
from ..labels import TASKS
from ..models.heads import SINGLE_KEY

# The models see small images (the demo's are 96x72); heatmaps are enlarged so the page shows them plainly.
MIN_DISPLAY_SIDE = 192


def last_spatial_conv(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv2d run in a forward pass whose output is larger than 1x1 (SE convolutions are 1x1)."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: order.append(mod) if out.shape[-1] * out.shape[-2] > 1 else None)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("Grad-CAM needs a convolutional backbone; this model has no Conv2d with a spatial output")
    return order[-1]


class _TaskOutput(nn.Module):
    """The model with one tensor out, for ``GradCAM``: a task's logits, log-marginals or age years."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if SINGLE_KEY in out:
            logp = F.log_softmax(out[SINGLE_KEY].float(), dim=1)
            logp = logp.reshape(-1, TASKS["mask"], TASKS["gender"], TASKS["age"])
            dims = {"mask": (2, 3), "gender": (1, 3), "age": (1, 2)}[self.task]
            return torch.logsumexp(logp, dim=dims)
        if self.task == "age" and AGE_YEARS in out:
            return out[AGE_YEARS]
        return out[self.task]


class _Pick:
    """Target for GradCAM: one column of the wrapped model's output for one sample."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index]


def model_tasks(outputs: Mapping[str, torch.Tensor]) -> list[str]:
    """Tasks a model's output covers (a per-task model covers some only)."""
    if SINGLE_KEY in outputs:
        return list(TASKS)
    return [t for t in TASKS if t in outputs or (t == "age" and AGE_YEARS in outputs)]


def heatmaps(
    model: nn.Module,
    image: torch.Tensor,
    chosen: Mapping[str, int],
    mean: tuple,
    std: tuple,
) -> dict[str, np.ndarray]:
    """Heatmaps (H, W, 3 uint8 RGB, the map over the image) of ``image`` (C, H, W, normalised) per task.

    ``chosen`` maps each task to the class to explain; for an age-regression
    head the age map explains the predicted mean whatever the class.
    """
    model.eval()
    batch = image[None].float()
    with torch.no_grad():
        outputs = model(batch)
    layer = last_spatial_conv(model, batch)
    seen = image.float().cpu().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    seen = np.clip(seen, 0.0, 1.0).astype(np.float32)
    maps = {}
    for task in model_tasks(outputs):
        index = 0 if task == "age" and AGE_YEARS in outputs else int(chosen[task])  # column 0 is the mean
        with GradCAM(model=_TaskOutput(model, task), target_layers=[layer]) as cam:
            grayscale = cam(input_tensor=batch, targets=[_Pick(index)])[0]
        maps[task] = show_cam_on_image(seen, grayscale, use_rgb=True)
    return maps


def png_data_uri(rgb: np.ndarray, min_side: int = MIN_DISPLAY_SIDE) -> str:
    """An RGB array as a ``data:image/png;base64,...`` URI, enlarged to at least ``min_side`` on its short side."""
    img = Image.fromarray(rgb)
    scale = max(1, -(-min_side // min(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
