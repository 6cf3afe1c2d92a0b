"""Inference: class probabilities for a table of images, soft voting over runs, submission files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..config import Config, load_config
from ..data.cache import ImageCache
from ..data.dataset import FaceDataset, worker_init
from ..data.layout import eval_table, folder_table
from ..data.transforms import build_transforms
from ..labels import NUM_CLASSES, decode
from ..models import create_model, model_data_config, outputs_to_probs
from ..runs import atomic_write_csv, load_checkpoint, open_run_dir

logger = logging.getLogger(__name__)

PROB_COLUMNS = [f"p{c}" for c in range(NUM_CLASSES)]


def eval_loader(dataset: FaceDataset, batch_size: int, num_workers: int, fabric: Fabric) -> DataLoader:
    """Ordered loader; under DDP each rank takes a strided share (padded; rows are de-duplicated after gathering)."""
    sampler = DistributedSampler(
        dataset, num_replicas=fabric.world_size, rank=fabric.global_rank, shuffle=False, drop_last=False
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=worker_init,
        persistent_workers=False,
    )
    return loader


@torch.no_grad()
def infer(
    fabric: Fabric,
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: Optional[torch.nn.Module] = None,
    limit_batches: Optional[int] = None,
    progress: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray, float]:
    """-> (rows, probs (N, 18), mean loss or nan), gathered from every rank, sorted by row, rows unique."""
    model.eval()
    rows, probs, losses = [], [], []
    bar = tqdm(loader, desc=desc, disable=not (progress and fabric.is_global_zero), leave=False)
    for i, batch in enumerate(bar):
        if limit_batches is not None and i >= limit_batches:
            break
        batch = fabric.to_device(batch)
        with fabric.autocast():
            outputs = model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items()}
        if loss_fn is not None:
            loss, _ = loss_fn(outputs, batch)
            losses.append(loss.detach().float() * len(batch["row"]))
        rows.append(batch["row"])
        probs.append(outputs_to_probs(outputs))
    if rows:
        row_t, prob_t = torch.cat(rows), torch.cat(probs)
    else:
        row_t = torch.zeros(0, dtype=torch.long, device=fabric.device)
        prob_t = torch.zeros(0, NUM_CLASSES, device=fabric.device)
    loss_sum = torch.stack(losses).sum() if losses else torch.zeros((), device=fabric.device)
    count = torch.tensor(float(len(row_t)), device=fabric.device)
    if fabric.world_size > 1:
        row_t = fabric.all_gather(row_t).reshape(-1)
        prob_t = fabric.all_gather(prob_t).reshape(-1, NUM_CLASSES)
        loss_sum = fabric.all_reduce(loss_sum, reduce_op="sum")
        count = fabric.all_reduce(count, reduce_op="sum")
    row_np, prob_np = row_t.cpu().numpy(), prob_t.float().cpu().numpy()
    row_np, first = np.unique(row_np, return_index=True)
    mean_loss = float(loss_sum / count) if loss_fn is not None and count > 0 else float("nan")
    return row_np, prob_np[first], mean_loss


def read_images(data: Path) -> tuple[pd.DataFrame, bool]:
    """A competition eval folder (info.csv + images/, or a parent holding eval/), else any image folder.

    Returns the table and whether it is a competition eval set (submission rows keep info.csv order).
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    for candidate in (data, data / "eval"):
        if (candidate / "info.csv").is_file():
            return eval_table(candidate), True
    return folder_table(data), False


@dataclass
class LoadedRun:
    cfg: Config
    model: torch.nn.Module
    checkpoint: Path


def load_run(run_dir: Path | str, which: str = "best") -> LoadedRun:
    run = open_run_dir(run_dir)
    cfg = load_config(run.config)
    ckpt_path = run.best if which == "best" else run.last
    state = load_checkpoint(ckpt_path)
    # Weights come from the checkpoint: never fetch or load pretrained ones again.
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_path": None})
    model = create_model(model_cfg)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, model.eval(), ckpt_path)


def predict_probs(
    runs: Sequence[LoadedRun],
    table: pd.DataFrame,
    fabric: Fabric,
    batch_size: Optional[int] = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Soft voting: the mean of every run's 18-class probabilities, in table order."""
    caches: dict = {}
    total = np.zeros((len(table), NUM_CLASSES), dtype=np.float64)
    for run in runs:
        cfg = run.cfg
        key = tuple(cfg.cache.size) if cfg.cache.size else None
        if key not in caches:  # runs sharing an image size share one decode
            caches[key] = ImageCache(
                table["image_path"].tolist(), size=key, mode="memory", threads=cfg.cache.decode_threads, progress=progress
            ).fill()
        norm = model_data_config(run.model)
        transform = build_transforms(cfg.transforms.eval, norm["mean"], norm["std"], "transforms.eval")
        dataset = FaceDataset(caches[key], np.arange(len(table)), transform)
        loader = eval_loader(dataset, batch_size or cfg.train.eval_batch_size, num_workers, fabric)
        model = run.model
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = fabric.setup_module(model)
        rows, probs, _ = infer(fabric, model, loader, progress=progress, desc=f"predict {run.checkpoint.parent.parent.name}")
        if not np.array_equal(rows, np.arange(len(table))):
            raise RuntimeError("inference lost rows; this is a bug")
        total += probs
    return (total / len(runs)).astype(np.float32)


def write_predictions(table: pd.DataFrame, probs: np.ndarray, out: Path, competition: bool) -> tuple[Path, Path]:
    """submission (ImageID,ans in table order) and a probabilities file beside it; both written atomically."""
    out = Path(out)
    ans = probs.argmax(axis=1)
    if competition:
        submission = pd.DataFrame({"ImageID": table["image_id"].to_numpy(), "ans": ans})
    else:
        mask, gender, age = decode(ans)
        submission = pd.DataFrame(
            {"image": table["image_id"].to_numpy(), "ans": ans, "mask": mask, "gender": gender, "age": age}
        )
    probs_path = out.with_name(out.stem + ".probs.csv")
    prob_df = pd.DataFrame(probs, columns=PROB_COLUMNS)
    prob_df.insert(0, "ImageID" if competition else "image", table["image_id"].to_numpy())
    atomic_write_csv(prob_df, probs_path, float_format="%.6f")
    atomic_write_csv(submission, out)
    return out, probs_path


def predict(
    run_dirs: Sequence[Path | str],
    data: Path | str,
    out: Path | str,
    checkpoint: str = "best",
    batch_size: Optional[int] = None,
    accelerator: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Predict with one or more runs (soft voting) and write the submission and probabilities."""
    if not run_dirs:
        raise ValueError("predict needs at least one run folder")
    runs = [load_run(r, checkpoint) for r in run_dirs]
    table, competition = read_images(Path(data))
    if table.empty:
        raise ValueError(f"no images found in {data}")
    fabric = Fabric(accelerator=accelerator, devices=1, precision=runs[0].cfg.train.precision)
    probs = predict_probs(runs, table, fabric, batch_size, num_workers, progress)
    return write_predictions(table, probs, Path(out), competition)
