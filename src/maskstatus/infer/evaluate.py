"""Evaluation: a model's class probabilities for every row of a loader, as training's validation and prediction both need.

Kept apart from ``predict`` (run folders, ensembles, submission files) so that
training and scoring depend only on this, not on prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..age import Cuts, mean_years, thresholds_cuts
from ..config import GroupingConfig
from ..data.cache import available_cores
from ..data.dataset import FaceDataset, NamedCollate, worker_init
from ..labels import DEFAULT_AGE_THRESHOLDS, NUM_CLASSES
from .grouping import FeatureCapture, group_people
from .tta import average_view_probs, tta_views

# What predicts: the PyTorch model, or its ONNX export run by ONNX Runtime (infer.onnx_model.OnnxModel).
# Both map a normalised batch to the same dict of outputs, so everything after the forward pass is shared.
Model = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def normalize_on_device(setting: str, fabric: Fabric) -> bool:
    """``train.normalize_on`` resolved: "auto" normalises on the device when it is a GPU.

    On a CPU the loader's workers and the model share the same cores, so moving the
    per-pixel work into the model's process would only take it from the workers.
    """
    return setting == "device" or (setting == "auto" and fabric.device.type == "cuda")


def loader_workers(setting: int | str, fabric: Fabric) -> int:
    """``train.num_workers`` resolved: "auto" gives each process of this machine one worker per core it has, less one."""
    if setting == "auto":
        local_processes = getattr(fabric.strategy, "num_processes", 1)  # DDP: processes per machine
        return max(available_cores() // max(local_processes, 1) - 1, 0)
    return int(setting)


def eval_loader(dataset: FaceDataset, batch_size: int, num_workers: int | str, fabric: Fabric) -> DataLoader:
    """Ordered loader; under DDP each rank takes a strided share (padded; rows are de-duplicated after gathering).

    ``num_workers`` may be "auto" (see :func:`loader_workers`).
    """
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=fabric.world_size, rank=fabric.global_rank, shuffle=False, drop_last=False
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader_workers(num_workers, fabric),
        worker_init_fn=worker_init,
        persistent_workers=False,
        # Page-locked batches let fabric.to_device copy to a GPU asynchronously (it passes non_blocking).
        pin_memory=fabric.device.type == "cuda",
        collate_fn=NamedCollate(dataset.cache.paths),
    )
    return loader


def gather_tensor(fabric: Fabric, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank stacked (world_size, ...); Fabric's all_gather is typed for collections too."""
    gathered = fabric.all_gather(tensor)
    assert isinstance(gathered, torch.Tensor)
    return gathered


def sum_tensor(fabric: Fabric, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank."""
    reduced = fabric.all_reduce(tensor, reduce_op="sum")
    assert isinstance(reduced, torch.Tensor)
    return reduced


class Inference(NamedTuple):
    rows: np.ndarray  # table rows, sorted and unique
    probs: np.ndarray  # (N, 18) float32
    loss: float  # mean loss of the plain view, nan without a loss function
    age_years: np.ndarray | None  # (N, 2) predicted mean and spread in years (regression head), else None


@torch.no_grad()
def infer(
    fabric: Fabric,
    model: Model,
    loader: DataLoader,
    loss_fn: torch.nn.Module | None = None,
    limit_batches: int | None = None,
    progress: bool = False,
    desc: str = "predict",
    tta: Sequence[str] = (),
    age_cuts: Cuts | None = None,
    grouping: GroupingConfig | None = None,
) -> Inference:
    """Probabilities of every row of ``loader``, gathered from every rank, sorted by row, rows unique.

    ``tta`` names test-time augmentations (see ``tta.TTA``); their probabilities are
    averaged with the plain view's. The loss is always that of the plain view.
    ``age_cuts`` split a regression head's years into age groups (default 29.5, 59.5).
    With ``grouping``, the photos are grouped into people by the plain view's face
    embeddings, and gender and age made consistent within each group (see ``grouping``).
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    views = tta_views(tta)
    rows, probs, years, losses, embeds = [], [], [], [], []
    capture = (
        FeatureCapture(model, grouping.layer, grouping.upper_fraction, grouping.columns)
        if grouping is not None
        else None
    )
    # A FaceDataset may leave normalisation to the batches (BatchNormalize); other datasets give model input.
    model_input = getattr(loader.dataset, "model_input", lambda images: images)
    bar = tqdm(loader, desc=desc, disable=not (progress and fabric.is_global_zero), leave=False)
    for i, batch in enumerate(bar):
        if limit_batches is not None and i >= limit_batches:
            break
        batch = fabric.to_device(batch)
        images = model_input(batch["image"])
        view_outputs = []
        for view_index, view in enumerate(views):
            embed = capture if capture is not None and view_index == 0 else contextlib.nullcontext()
            with fabric.autocast(), embed:
                outputs = model(view(images))
            if embed is capture:
                embeds.append(capture.pop())
            view_outputs.append({k: v.float() for k, v in outputs.items()})
        if loss_fn is not None:
            loss, _ = loss_fn(view_outputs[0], batch)
            losses.append(loss.detach().float() * len(batch["row"]))
        rows.append(batch["row"])
        probs.append(average_view_probs(view_outputs, age_cuts))
        batch_years = mean_years(view_outputs)
        if batch_years is not None:
            years.append(batch_years)
    if rows:
        row_t, prob_t = torch.cat(rows), torch.cat(probs)
    else:
        row_t = torch.zeros(0, dtype=torch.long, device=fabric.device)
        prob_t = torch.zeros(0, NUM_CLASSES, device=fabric.device)
    year_t = torch.cat(years) if years else None
    embed_t = torch.cat(embeds) if embeds else None
    loss_sum = torch.stack(losses).sum() if losses else torch.zeros((), device=fabric.device)
    count = torch.tensor(float(len(row_t)), device=fabric.device)
    if fabric.world_size > 1:
        row_t = gather_tensor(fabric, row_t).reshape(-1)
        prob_t = gather_tensor(fabric, prob_t).reshape(-1, NUM_CLASSES)
        if year_t is not None:
            year_t = gather_tensor(fabric, year_t).reshape(-1, 2)
        if embed_t is not None:
            embed_t = gather_tensor(fabric, embed_t).reshape(-1, embed_t.shape[-1])
        loss_sum = sum_tensor(fabric, loss_sum)
        count = sum_tensor(fabric, count)
    row_np, prob_np = row_t.cpu().numpy(), prob_t.float().cpu().numpy()
    row_np, first = np.unique(row_np, return_index=True)
    year_np = year_t.float().cpu().numpy()[first] if year_t is not None else None
    mean_loss = float(loss_sum / count) if loss_fn is not None and count > 0 else float("nan")
    prob_np = prob_np[first]
    if embed_t is not None and grouping is not None:
        # After gathering, so every rank groups all the photos the same way.
        grouped = group_people(
            prob_np,
            embed_t.float().cpu().numpy()[first],
            grouping.max_size,
            grouping.min_similarity,
            grouping.neighbors,
            year_np,
            age_cuts or thresholds_cuts(DEFAULT_AGE_THRESHOLDS),
        )
        prob_np, year_np = grouped.probs, grouped.age_years
    return Inference(row_np, prob_np, mean_loss, year_np)
