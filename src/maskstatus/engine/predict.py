"""Inference: class probabilities for a table of images, test-time augmentation, voting over runs, submission files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..age import Cuts, mean_years, read_cuts, thresholds_cuts
from ..config import Config, load_config
from ..data.cache import ImageCache
from ..data.dataset import FaceDataset, worker_init
from ..data.faces import cache_loader
from ..data.layout import eval_table, folder_table
from ..data.transforms import build_transforms
from ..labels import NUM_CLASSES, PROB_COLUMNS, decode
from ..models import create_model, model_data_config
from ..runs import atomic_write_csv, load_checkpoint, open_run_dir
from .ensemble import Vote, check_vote, combine_probs, expand_runs, normalize_weights
from .tta import average_view_probs, tta_views

logger = logging.getLogger(__name__)



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


class Inference(NamedTuple):
    rows: np.ndarray  # table rows, sorted and unique
    probs: np.ndarray  # (N, 18) float32
    loss: float  # mean loss of the plain view, nan without a loss function
    age_years: Optional[np.ndarray]  # (N, 2) predicted mean and spread in years (regression head), else None


@torch.no_grad()
def infer(
    fabric: Fabric,
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: Optional[torch.nn.Module] = None,
    limit_batches: Optional[int] = None,
    progress: bool = False,
    desc: str = "predict",
    tta: Sequence[str] = (),
    age_cuts: Optional[Cuts] = None,
) -> Inference:
    """Probabilities of every row of ``loader``, gathered from every rank, sorted by row, rows unique.

    ``tta`` names test-time augmentations (see ``tta.TTA``); their probabilities are
    averaged with the plain view's. The loss is always that of the plain view.
    ``age_cuts`` split a regression head's years into age groups (default 29.5, 59.5).
    """
    model.eval()
    views = tta_views(tta)
    rows, probs, years, losses = [], [], [], []
    bar = tqdm(loader, desc=desc, disable=not (progress and fabric.is_global_zero), leave=False)
    for i, batch in enumerate(bar):
        if limit_batches is not None and i >= limit_batches:
            break
        batch = fabric.to_device(batch)
        view_outputs = []
        for view in views:
            with fabric.autocast():
                outputs = model(view(batch["image"]))
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
    loss_sum = torch.stack(losses).sum() if losses else torch.zeros((), device=fabric.device)
    count = torch.tensor(float(len(row_t)), device=fabric.device)
    if fabric.world_size > 1:
        row_t = fabric.all_gather(row_t).reshape(-1)
        prob_t = fabric.all_gather(prob_t).reshape(-1, NUM_CLASSES)
        if year_t is not None:
            year_t = fabric.all_gather(year_t).reshape(-1, 2)
        loss_sum = fabric.all_reduce(loss_sum, reduce_op="sum")
        count = fabric.all_reduce(count, reduce_op="sum")
    row_np, prob_np = row_t.cpu().numpy(), prob_t.float().cpu().numpy()
    row_np, first = np.unique(row_np, return_index=True)
    year_np = year_t.float().cpu().numpy()[first] if year_t is not None else None
    mean_loss = float(loss_sum / count) if loss_fn is not None and count > 0 else float("nan")
    return Inference(row_np, prob_np[first], mean_loss, year_np)


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
    age_cuts: Cuts  # where a regression head's predicted years split into age groups


def load_run(run_dir: Path | str, which: str = "best", age_cuts: Optional[Cuts] = None) -> LoadedRun:
    """A run's config and model with its best (or last) weights.

    ``age_cuts`` default to the ones tuned for this run (its age_cuts.json), else the scoring thresholds.
    """
    run = open_run_dir(run_dir)
    cfg = load_config(run.config)
    if age_cuts is None:
        age_cuts = read_cuts(run.root) or thresholds_cuts(cfg.data.age.thresholds())
    ckpt_path = run.best if which == "best" else run.last
    state = load_checkpoint(ckpt_path)
    # Weights come from the checkpoint: never fetch or load pretrained ones again.
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_path": None})
    model = create_model(model_cfg)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, model.eval(), ckpt_path, age_cuts)


def predict_probs(
    runs: Sequence[Union[LoadedRun, Sequence[LoadedRun]]],
    table: pd.DataFrame,
    fabric: Fabric,
    batch_size: Optional[int] = None,
    num_workers: int = 0,
    progress: bool = True,
    tta: Optional[Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    vote: Vote = "soft",
) -> np.ndarray:
    """Ensemble 18-class probabilities in table order.

    Each member of ``runs`` is a run, or a list of runs (the folds of a CV folder)
    whose probabilities are averaged into one member. Members are combined by
    ``vote`` with ``weights`` (default equal; soft: the weighted mean). ``tta``
    overrides every run's ``predict.tta`` (``[]``: none); None keeps each run's own.
    """
    members = [[m] if isinstance(m, LoadedRun) else list(m) for m in runs]
    if not members or any(not m for m in members):
        raise ValueError("predict_probs needs at least one run in every member")
    caches: dict = {}
    member_probs = []
    for member in members:
        probs = [_run_probs(run, table, fabric, caches, batch_size, num_workers, progress, tta) for run in member]
        member_probs.append(np.mean(probs, axis=0))
    # The folds of one member share a config, so its first run tells which tasks it predicts.
    return combine_probs(member_probs, weights, vote, [m[0].cfg.model.tasks for m in members],
                         [m[0].cfg.data.mask_states for m in members])


def _run_probs(
    run: LoadedRun,
    table: pd.DataFrame,
    fabric: Fabric,
    caches: dict,
    batch_size: Optional[int],
    num_workers: int,
    progress: bool,
    tta: Optional[Sequence[str]],
) -> np.ndarray:
    """One run's probabilities (N, 18) as float64; ``caches`` holds decoded images shared between runs."""
    cfg = run.cfg
    size = tuple(cfg.cache.size) if cfg.cache.size else None
    key = (size, cfg.data.face_crop)
    if key not in caches:  # runs sharing an image size (and face cropping) share one decode
        caches[key] = ImageCache(
            table["image_path"].tolist(), size=size, mode="memory", threads=cfg.cache.decode_threads, progress=progress,
            **cache_loader(cfg.data.face_crop, cfg.cache.size),
        ).fill()
    norm = model_data_config(run.model)
    transform = build_transforms(cfg.transforms.eval, norm["mean"], norm["std"], "transforms.eval")
    dataset = FaceDataset(caches[key], np.arange(len(table)), transform)
    loader = eval_loader(dataset, batch_size or cfg.train.eval_batch_size, num_workers, fabric)
    model = run.model
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = fabric.setup_module(model)
    rows, probs, _, _ = infer(
        fabric,
        model,
        loader,
        progress=progress,
        desc=f"predict {run.checkpoint.parent.parent.name}",
        tta=cfg.predict.tta if tta is None else tta,
        age_cuts=run.age_cuts,
    )
    if not np.array_equal(rows, np.arange(len(table))):
        raise RuntimeError("inference lost rows; this is a bug")
    return probs.astype(np.float64)


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
    tta: Optional[Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    vote: Vote = "soft",
) -> tuple[Path, Path]:
    """Predict with one or more runs and write the submission and probabilities.

    Each of ``run_dirs`` is an ensemble member: a run folder, or a CV folder whose
    fold runs are averaged into one member (see ``ensemble.expand_runs``).
    ``weights`` (one per member) and ``vote`` combine the members (default: the
    plain mean). ``tta`` overrides the runs' ``predict.tta``; None keeps each run's own.
    """
    if not run_dirs:
        raise ValueError("predict needs at least one run folder")
    groups = [expand_runs([r]) for r in run_dirs]
    # A bad weight list or vote fails here, before any model is loaded or image decoded.
    normalize_weights(weights, len(groups))
    check_vote(vote)
    if tta is not None:
        tta_views(tta)  # unknown names fail now too
    # Cut points tuned for a CV folder as a whole hold for each of its fold runs.
    runs = [[load_run(r, checkpoint, read_cuts(member)) for r in group] for member, group in zip(run_dirs, groups)]
    table, competition = read_images(Path(data))
    if table.empty:
        raise ValueError(f"no images found in {data}")
    fabric = Fabric(accelerator=accelerator, devices=1, precision=runs[0][0].cfg.train.precision)
    probs = predict_probs(runs, table, fabric, batch_size, num_workers, progress, tta, weights, vote)
    return write_predictions(table, probs, Path(out), competition)
