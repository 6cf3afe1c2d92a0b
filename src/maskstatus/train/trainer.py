"""The training loop: Fabric for devices/precision/DDP, validation by macro F1 every epoch.

One function, `train`, read top to bottom: data -> folds -> run folder ->
cache -> model -> loop (train, validate, checkpoint, early stop) -> plots.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import Logger
from lightning_fabric.wrappers import _FabricModule
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from ..age import AGE_MEAN, AGE_SIGMA, AGE_YEARS, thresholds_cuts
from ..choices import check_accelerator_available
from ..config import Config, ConfigError, config_to_dict, load_config, save_config
from ..data.cache import ImageCache, available_cores
from ..data.dataset import FaceDataset, NamedCollate, table_targets, worker_init
from ..data.faces import cache_loader
from ..data.folds import attach_folds, make_folds, make_image_folds, read_folds, split_rows
from ..data.mix import mix_batch, mixed_loss
from ..data.pseudo import PSEUDO_FOLD, pseudo_rows
from ..data.sampling import WeightedEpochSampler, inverse_density_weights, inverse_frequency_weights
from ..data.tables import load_train_table
from ..data.transforms import Prepare, batch_normalizer, build_train_eval, output_shape, split_prepare
from ..errors import DataError, Problem, RunError
from ..infer.evaluate import eval_loader, infer, loader_workers, normalize_on_device, sum_tensor
from ..infer.grouping import FeatureCapture
from ..labels import MASK_NAMES, PROB_COLUMNS, class_names
from ..losses import build_loss, class_weights, with_class_weights
from ..models import create_model, model_data_config
from ..models.freeze import FrozenStages, freeze_stages
from ..optim import EpochScheduler, build_optimizer, build_scheduler
from ..outputs import check_writable
from ..runs import (
    RunDir,
    atomic_save_torch,
    atomic_write_csv,
    load_checkpoint,
    new_run_dir,
    open_run_dir,
    remove_stale_temp_files,
)
from ..scoring.metrics import confusion, model_metrics, plot_confusion, plot_curves
from ..tracking import RunTracker, check_backends
from .teacher import teacher_targets

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_f1: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    is_global_zero: bool = True


def _folds_for(cfg: Config, table: pd.DataFrame) -> pd.DataFrame:
    if cfg.split.folds_file is not None:
        return read_folds(cfg.split.folds_file)
    if cfg.split.by == "image":
        return make_image_folds(table, cfg.split.folds, cfg.split.seed)
    return make_folds(table, cfg.split.folds, cfg.split.seed)


def _add_pseudo_labels(cfg: Config, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Append confident eval predictions as fold -1 rows: trained on in every fold, never validated on.

    Returns the extended table and the record of the pseudo rows for the run's pseudo.csv.
    """
    pc = cfg.data.pseudo
    assert pc is not None, "called only with data.pseudo set"
    # load_train_table has already refused a config without data.root
    assert cfg.data.root is not None
    eval_dir = pc.eval_dir if pc.eval_dir is not None else Path(cfg.data.root) / "eval"
    pseudo = pseudo_rows(pc.probs_for(cfg.split.fold), eval_dir, pc.threshold, pc.task_thresholds)
    record = pseudo[["person_id", "image_path", "mask", "gender", "age", "age_group", "label", "confidence"]]
    pseudo = pseudo.drop(columns="confidence").assign(fold=PSEUDO_FOLD)
    return pd.concat([table, pseudo], ignore_index=True), record


def _rng_state() -> dict[str, Any]:
    # Plain types only, so the checkpoint loads with weights_only=True.
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy tuple of the global MT19937 generator
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _train_loader(dataset: FaceDataset, cfg: Config, fabric: Fabric):
    sampler: Sampler[int]
    if cfg.train.sampler.name == "weighted":
        by = cfg.train.sampler.by
        targets = dataset.targets
        assert targets is not None, "a training set has targets"
        if by == "years":
            weights = inverse_density_weights(targets[AGE_YEARS][dataset.indices])
        else:
            weights = inverse_frequency_weights(targets[by][dataset.indices])
        sampler = WeightedEpochSampler(weights, seed=cfg.seed, rank=fabric.global_rank, world_size=fabric.world_size)
    else:
        # DistributedSampler with explicit rank/world also serves one process: a seeded, per-epoch shuffle.
        sampler = DistributedSampler(
            dataset,
            num_replicas=fabric.world_size,
            rank=fabric.global_rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
    workers = loader_workers(cfg.train.num_workers, fabric)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init,
        persistent_workers=workers > 0,
        pin_memory=fabric.device.type == "cuda",  # asynchronous copies to the GPU (see evaluate.eval_loader)
        drop_last=len(dataset) // fabric.world_size >= cfg.train.batch_size,
        collate_fn=NamedCollate(dataset.cache.paths),
    )
    # Not fabric.setup_dataloaders: its wrapper sets the sampler epoch to the number of times the loader
    # was iterated, which restarts at 0 on resume and would replay epoch 0's order; batches are moved by hand.
    return loader, sampler


def _write_oof(
    run: RunDir, table: pd.DataFrame, rows: np.ndarray, probs: np.ndarray, age_years: np.ndarray | None
) -> None:
    oof = table.iloc[rows][["person_id", "stem", "image_path", "label", "fold"]].reset_index(drop=True)
    oof = pd.concat([oof, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    if age_years is not None:  # a regression head's years, so its age cut points can be tuned out of fold
        oof[AGE_MEAN], oof[AGE_SIGMA] = age_years[:, 0], age_years[:, 1]
    atomic_write_csv(oof, run.oof, float_format="%.6f")


EpochHook = Callable[[int, dict[str, Any]], None]


def train(cfg: Config, resume: Path | str | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train one fold as configured; with `resume`, continue that run from its last checkpoint.

    ``on_epoch(epoch, row)`` is called on every rank after each epoch is saved, with its metrics.csv row (a
    sweep reports the validation F1 to its pruner there). An exception it raises stops training: the run
    keeps its last.pt, as after an interruption, and the exception reaches the caller.
    """
    if resume is not None:
        run = open_run_dir(resume)
        cfg = _resume_config(run, cfg)
    check_accelerator_available(cfg.train.accelerator, "train.accelerator", ConfigError)
    check_train_outputs(cfg, resume)
    cfg = check_backends(cfg)  # a tracking backend missing or out of reach stops the run here, with nothing written
    fabric = make_fabric(cfg, loggers=[RunTracker(cfg.tracking)])
    # A partial, not extra launch arguments: Fabric types the launched function as taking the Fabric only.
    return fabric.launch(
        partial(_train, cfg=cfg, resume=str(resume) if resume is not None else None, on_epoch=on_epoch)
    )


def make_fabric(cfg: Config, loggers: list[Logger] | None = None) -> Fabric:
    """The Fabric of ``cfg.train``'s devices, machines, strategy and precision (and the run's loggers).

    Under torchrun the processes exist before Fabric does, and each one's WORLD_SIZE says how many there
    are: a config that accounts for another number is refused here, since with one device per config every
    process would quietly train (and write) a run of its own. A second Fabric in a process (the next fold of
    a CV) joins the process group the first one made.
    """
    fabric = Fabric(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=cfg.train.precision,
        loggers=loggers,
    )
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and launched.isdigit() and int(launched) != fabric.world_size:
        raise ConfigError(
            f"train.devices={cfg.train.devices} x train.num_nodes={cfg.train.num_nodes} (train.strategy="
            f"{cfg.train.strategy}) is {fabric.world_size} process(es), but this one was launched as one of "
            f"WORLD_SIZE={launched}: give train.devices=<processes per machine> train.num_nodes=<machines> "
            "train.strategy=ddp to match torchrun's --nproc-per-node and --nnodes"
        )
    return fabric


def check_train_outputs(cfg: Config, resume: Path | str | None = None) -> None:
    """A read-only or full disk under the run (or the disk cache) fails now, not after the images are decoded."""
    check_writable(resume if resume is not None else cfg.output_dir, "--resume" if resume is not None else "output_dir")
    if cfg.cache.mode == "disk":
        check_writable(cfg.cache.dir, "cache.dir")


def _resume_config(run: RunDir, cfg: Config) -> Config:
    """The run's own config with the caller's `train` section (epochs to extend it, workers, devices).

    Data, split, model, loss and optimiser stay as saved: changing them would not continue the same run.
    """
    saved = load_config(run.config)
    return saved.model_copy(update={"train": cfg.train})


def check_resume_epochs(run_root: Path, state: dict[str, Any], epochs: int) -> None:
    """Refuse to resume with fewer epochs than the run has trained, before its config.yaml is rewritten.

    The run would train nothing, yet record the smaller count as its config (and a schedule of that length).
    """
    trained = int(state["epoch"]) + 1
    if epochs < trained:
        raise ConfigError(
            f"train.epochs={epochs} is fewer than the {trained} epochs {run_root} has already trained "
            f"(checkpoints/last.pt holds epoch {trained - 1}); --resume only extends a run: give "
            f"train.epochs={trained + 1} or more, or train a new run with --config {RunDir(Path(run_root)).config} "
            f"train.epochs={epochs}"
        )


def _resume_schedule(scheduler, optimizer, state: dict[str, Any], history: list[dict[str, Any]], epochs: int) -> None:
    """Restore the optimizer and the learning-rate schedule of a resumed run.

    The scheduler state is the number of epochs trained (plus plateau's counters), and a fixed
    schedule's lr is a function of that count and the run length. So with another epoch count (an
    extended run) the same state puts the run on the schedule of a run of ``epochs`` epochs: a
    cosine built for the old count would have ended at its minimum, and the new epochs would train
    at lr 0. Plateau does not depend on the run length, so its saved state continues as it is.
    """
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])  # after the optimizer: it sets the optimizer's lr
    saved_epochs = state.get("config", {}).get("train", {}).get("epochs", epochs)
    if saved_epochs != epochs:
        logger.info(
            "train.epochs changed from %d to %d: the learning-rate schedule is that of a %d-epoch run; "
            "epoch %d trains at lr %.3g",
            saved_epochs,
            epochs,
            epochs,
            len(history),
            scheduler.lr,
        )


def _train(fabric: Fabric, cfg: Config, resume: str | None, on_epoch: EpochHook | None = None) -> TrainResult:
    fabric.seed_everything(cfg.seed)
    # Everything that can fail on a bad config, data or folds file runs before the run folder is made
    # (or a resumed run's config rewritten), so a failed start leaves nothing behind.
    try:
        data = _prepare_data(cfg, resume)
        parts = _build(fabric, cfg, data)
    except KeyboardInterrupt as exc:
        raise TrainingInterrupted(
            "before training started, with nothing written"
            + (f"; {resume_hint(Path(resume))}" if resume is not None else "")
        ) from exc
    run = _open_run(fabric, cfg, data)
    progress = _restore(cfg, parts, data, run)
    saver = EpochSaver(fabric, run, cfg, data.table, resumed=data.resume_state is not None)
    try:
        epoch = _run_epochs(fabric, cfg, data, parts, progress, saver, on_epoch)
    except KeyboardInterrupt as exc:
        saver.abort()
        raise TrainingInterrupted(f"during training; {resume_hint(run.root)}") from exc
    except NonFiniteLoss as exc:
        saver.abort()
        raise RunError(_diverged_message(exc, run)) from None
    except Exception:  # raised by on_epoch (a pruned sweep trial): the epochs saved stay a resumable run
        saver.abort()
        raise
    saver.close(progress)
    return TrainResult(
        run.root, progress.best_score, progress.best_epoch, epoch + 1, progress.history, fabric.is_global_zero
    )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C during training; ``hint`` says in one line what was kept and how to continue (the CLI prints it)."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


def resume_hint(run_root: Path) -> str:
    """How to continue an interrupted run: resume it if an epoch was saved, else start it again."""
    if RunDir(run_root).last.is_file():
        return f"continue with: maskstatus train --resume {run_root}"
    return (
        f"{run_root} finished no epoch, so there is nothing to resume: train again with "
        f"--config {RunDir(run_root).config} (and delete {run_root})"
    )


class NonFiniteLoss(Exception):
    """The training loss (or the weights) stopped being finite: a diverged run, stopped before its weights are saved."""

    def __init__(self, epoch: int, batch: int, what: str) -> None:
        super().__init__(f"{what} at epoch {epoch}, batch {batch}")
        self.epoch, self.batch, self.what = epoch, batch, what


def _diverged_message(exc: NonFiniteLoss, run: RunDir) -> str:
    if run.last.is_file():
        kept = (
            f"{run.root} keeps its last good checkpoint, epoch {exc.epoch - 1} (checkpoints/last.pt; best.pt "
            f"as before); the non-finite weights were not saved"
        )
    else:
        kept = f"no epoch finished, so {run.root} holds no checkpoint; the non-finite weights were not saved"
    return (
        f"training diverged: {exc} (counting from 0). {kept}. Lower optimizer.lr, set train.grad_clip "
        f"or check the loss settings, then train again"
    )


def _run_epochs(
    fabric: Fabric,
    cfg: Config,
    data: TrainData,
    parts: TrainParts,
    progress: Progress,
    saver: EpochSaver,
    on_epoch: EpochHook | None = None,
) -> int:
    """Train, validate and save each epoch from the start epoch on; returns the last epoch run."""
    epoch = progress.start_epoch - 1
    for epoch in range(progress.start_epoch, cfg.train.epochs):
        parts.train_sampler.set_epoch(epoch)
        parts.train_set.set_epoch(epoch)
        if parts.frozen:
            parts.frozen.set_frozen(cfg.train.unfreeze_epoch is None or epoch < cfg.train.unfreeze_epoch)
        started_at, t0 = time.time(), time.perf_counter()
        train_loss, seen = _train_epoch(fabric, parts, cfg, epoch)
        train_time = time.perf_counter() - t0
        val = _validate(fabric, parts, cfg, data.table, epoch) if parts.val_loader is not None else None
        lr = parts.scheduler.lr
        parts.scheduler.step(val.metrics["score"] if val else None)
        improved = progress.record(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                **({"val_loss": val.loss, **{f"val_{k}": v for k, v in val.metrics.items()}} if val else {}),
                "train_images": seen,
                "train_time_s": train_time,
                "train_images_per_s": seen / train_time if train_time > 0 else float("nan"),
                # Wall clock (Unix seconds) of the epoch's training loop, to line it up with outside samplers (GPU use).
                "train_start_time": started_at,
            }
        )
        saver.save(epoch, parts, progress, val, improved)
        _log_epoch(epoch, train_loss, val, improved)
        if on_epoch is not None:
            on_epoch(epoch, progress.history[-1])
        fabric.barrier()
        if cfg.train.early_stopping_patience and progress.stale >= cfg.train.early_stopping_patience:
            logger.info("early stop: no macro-F1 gain for %d epochs", progress.stale)
            break
    return epoch


def _log_epoch(epoch: int, train_loss: float, val: Validation | None, improved: bool) -> None:
    if val is None:
        logger.info("epoch %d: train_loss %.4f (no held-out fold)", epoch, train_loss)
        return
    m = val.metrics
    logger.info(
        "epoch %d: train_loss %.4f val_loss %.4f val_f1 %.4f (mask %.3f gender %.3f age %.3f) score %.4f%s",
        epoch,
        train_loss,
        val.loss,
        m["f1"],
        m["mask_f1"],
        m["gender_f1"],
        m["age_f1"],
        m["score"],
        " *" if improved else "",
    )


@dataclass
class TrainData:
    """The image table with its folds, the rows to train and validate on, and what a resume starts from."""

    table: pd.DataFrame
    folds: pd.DataFrame
    train_rows: np.ndarray
    val_rows: np.ndarray
    pseudo_record: pd.DataFrame | None = None
    run: RunDir | None = None  # the resumed run; a new run's folder is made only after everything is built
    resume_state: dict[str, Any] | None = None


def _prepare_data(cfg: Config, resume: str | None) -> TrainData:
    run, resume_state = None, None
    if resume is not None:
        run = open_run_dir(resume)
        resume_state = load_checkpoint(run.last)  # a damaged last.pt fails here, before config.yaml is rewritten
        check_resume_epochs(run.root, resume_state, cfg.train.epochs)
    table = load_train_table(cfg)
    if run is not None:
        folds, folds_source = read_folds(run.folds), str(run.folds)
    else:
        folds = _folds_for(cfg, table)
        folds_source = str(cfg.split.folds_file) if cfg.split.folds_file is not None else "the new split"
    table = attach_folds(table, folds, cfg.split.folds, source=folds_source)
    pseudo_record = None
    if cfg.data.pseudo is not None:
        table, pseudo_record = _add_pseudo_labels(cfg, table)
    expert = len(cfg.data.mask_codes()) < len(MASK_NAMES)
    train_rows, val_rows = split_rows(
        table, cfg.split.fold, cfg.data.age.drop_bands, cfg.data.mask_codes() if expert else None, cfg.split.holdout
    )
    if cfg.split.holdout:
        logger.info("fold %d: %d train images, %d validation images", cfg.split.fold, len(train_rows), len(val_rows))
    else:
        logger.info("split.holdout=false: %d train images (every person), none held out", len(train_rows))
    return TrainData(table, folds, train_rows, val_rows, pseudo_record, run, resume_state)


@dataclass
class TrainParts:
    """What the loop works with: the data sets and loaders, the model (and its EMA), loss and optimisation."""

    cache: ImageCache
    raw_model: torch.nn.Module  # the module itself: state dicts, EMA updates
    model: _FabricModule  # the same module as set up by Fabric: forward and backward
    ema: ModelEmaV3 | None
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: EpochScheduler
    frozen: FrozenStages
    train_set: FaceDataset
    train_loader: DataLoader
    train_sampler: Any
    val_loader: DataLoader | None  # None without a held-out fold (split.holdout=false)

    @property
    def eval_model(self) -> torch.nn.Module:
        # With EMA, the averaged weights are the ones validated, kept as best and used to predict.
        return self.ema.module if self.ema is not None else self.model


def _fill_cache(fabric: Fabric, cfg: Config, table: pd.DataFrame, prepare: Prepare | None) -> ImageCache:
    cache = ImageCache(
        table["image_path"].tolist(),
        size=cfg.cache.size,
        mode=cfg.cache.mode,
        cache_dir=cfg.cache.dir,
        # Nothing else runs while the cache fills: a decoding thread per core (shared by the processes of DDP).
        threads=max(cfg.cache.decode_threads, available_cores() // fabric.world_size),
        progress=cfg.train.progress and fabric.is_global_zero,
        **cache_loader(cfg.data.face_crop, cfg.cache.size),
        prepare=prepare,
    )
    # Rank 0 fills a disk cache first so the other ranks only open it.
    if fabric.is_global_zero:
        cache.fill()
    fabric.barrier()
    cache.fill()
    return cache


def check_tensor_shapes(cache: ImageCache, loaders: dict[str, tuple[np.ndarray, Any]]) -> None:
    """Refuse images whose tensors would not stack with the others', naming every one, before the run folder exists.

    Only a filled cache without ``cache.size`` holds images of several sizes; the batch collate would
    otherwise find them one batch at a time, after the run folder is made. ``loaders`` maps a name to
    the rows it reads and the pipeline it reads them through.
    """
    if cache.item_shape is not None or cache.mode == "none":  # one size, or nothing decoded to look at
        return
    problems: list[Problem] = []
    for name, (rows, pipeline) in loaders.items():
        by_size: dict[tuple[int, int], list[int]] = {}
        for row in rows:
            by_size.setdefault(tuple(np.asarray(cache[int(row)]).shape[:2]), []).append(int(row))
        if len(by_size) < 2:
            continue
        shapes = {hw: _tensor_shape(pipeline, hw) for hw in by_size}
        counts: dict[str, int] = {}
        for hw, shape in shapes.items():
            counts[shape] = counts.get(shape, 0) + len(by_size[hw])
        common = max(counts, key=counts.__getitem__)
        problems += [
            Problem(cache.paths[row], f"{hw[0]}x{hw[1]} image makes a {shape} {name} tensor, not {common}")
            for hw, shape in shapes.items()
            if shape != common
            for row in by_size[hw]
        ]
    if problems:
        raise DataError(
            problems,
            f"{len(cache)} images",
            note="images of different sizes: set cache.size=[height, "
            "width] or end transforms.train and transforms.eval "
            "with a Resize",
        )


def _tensor_shape(pipeline: Any, hw: tuple[int, int]) -> str:
    try:
        return "x".join(str(n) for n in output_shape(pipeline, hw)[-2:])
    except Exception as exc:  # e.g. a fixed crop larger than the image: albumentations raises ValueError
        return f"no tensor ({type(exc).__name__}: {exc})"


def _build(fabric: Fabric, cfg: Config, data: TrainData) -> TrainParts:
    """Cache, model, data sets, loss, optimizer and schedule; the order keeps the seeded draws of earlier versions."""
    table, train_rows = data.table, data.train_rows
    # The crops and resizes both pipelines start with run once, as the cache is filled.
    prepare, train_specs, eval_specs = split_prepare(cfg.transforms.train, cfg.transforms.eval, cfg.cache.precompute)
    cache = _fill_cache(fabric, cfg, table, prepare)
    model = create_model(cfg.model)
    if cfg.predict.group_people:  # a grouping layer the backbone lacks fails now, not after the first epoch
        g = cfg.predict.grouping
        FeatureCapture(model, g.layer, g.upper_fraction, g.columns)
    norm = model_data_config(model)
    hw = cache.item_shape[:2] if cache.item_shape else np.asarray(cache[0]).shape[:2]
    input_hw = (int(hw[0]), int(hw[1]))
    defer = normalize_on_device(cfg.train.normalize_on, fabric)
    train_tf, eval_tf = build_train_eval(train_specs, eval_specs, norm["mean"], norm["std"], input_hw, defer)
    check_tensor_shapes(cache, {"training": (train_rows, train_tf), "validation": (data.val_rows, eval_tf)})
    train_targets = table_targets(table, cfg.data.age.train_thresholds())
    if cfg.loss.distill is not None:
        train_targets.update(teacher_targets(cfg.loss.distill.teacher, table, train_rows, data.val_rows))
    train_norm = batch_normalizer(train_specs, norm["mean"], norm["std"], defer)
    eval_norm = batch_normalizer(eval_specs, norm["mean"], norm["std"], defer)
    train_set = FaceDataset(cache, train_rows, train_tf, train_targets, seed=cfg.seed, normalize=train_norm)
    val_set = FaceDataset(cache, data.val_rows, eval_tf, table_targets(table), seed=cfg.seed, normalize=eval_norm)
    train_loader, train_sampler = _train_loader(train_set, cfg, fabric)
    val_loader = (
        eval_loader(val_set, cfg.train.eval_batch_size, cfg.train.num_workers, fabric) if len(val_set) else None
    )

    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_cfg = cfg.loss
    if loss_cfg.class_weights != "none":
        weights = class_weights(
            {k: v[train_rows] for k, v in train_targets.items()}, model.output_keys, loss_cfg.class_weights
        )
        loss_cfg = with_class_weights(loss_cfg, weights)
    loss_fn = build_loss(loss_cfg, model.output_keys)
    # The optimizer sees every parameter, frozen ones included, so unfreezing later needs no rebuild
    # (a parameter without a gradient is skipped by the optimizer step).
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.epochs)
    frozen = freeze_stages(model.backbone, cfg.train.freeze_stages)
    if frozen and cfg.train.unfreeze_epoch is not None and fabric.world_size > 1:
        raise ConfigError(
            "train.unfreeze_epoch is not supported with more than one process (DDP fixes the "
            "trained parameters when it wraps the model); freeze without unfreezing, or use one device"
        )
    raw_model = model  # state dicts and EMA updates read the plain module, never the compiled one
    to_set_up: torch.nn.Module = model
    if cfg.train.compile:
        compiled = torch.compile(model)
        assert isinstance(compiled, torch.nn.Module)  # a compiled module is an OptimizedModule
        to_set_up = compiled
    fabric_model, optimizer = fabric.setup(to_set_up, optimizer)
    # Without warmup, decay 0.999 over a few hundred steps keeps most of the initial weights (0.999^700 ~ 0.5).
    ema = (
        ModelEmaV3(raw_model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup)
        if cfg.train.ema_decay
        else None
    )
    return TrainParts(
        cache,
        raw_model,
        fabric_model,
        ema,
        loss_fn,
        optimizer,
        scheduler,
        frozen,
        train_set,
        train_loader,
        train_sampler,
        val_loader,
    )


def _open_run(fabric: Fabric, cfg: Config, data: TrainData) -> RunDir:
    """The run folder (a new one unless resuming), with the config, folds and pseudo labels it trains with."""
    run = data.run
    if run is None:
        root = fabric.broadcast(str(new_run_dir(cfg.output_dir, cfg.name).root) if fabric.is_global_zero else None)
        assert root is not None  # rank 0 sends its path to every rank
        run = RunDir(Path(root))
        if fabric.is_global_zero:
            atomic_write_csv(data.folds, run.folds)
    elif fabric.is_global_zero:
        log_removed_temp_files(run.root)
    if fabric.is_global_zero:
        save_config(cfg, run.config)
        if data.pseudo_record is not None:  # the run records exactly which images it trained on, with which labels
            atomic_write_csv(data.pseudo_record, run.root / "pseudo.csv")
    fabric.barrier()
    return run


def log_removed_temp_files(folder: Path) -> None:
    """Remove (and name) the temp files of saves a kill interrupted in a run or CV folder being resumed."""
    removed = remove_stale_temp_files(folder)
    if removed:
        logger.warning(
            "removed %d temp file(s) of interrupted saves in %s: %s",
            len(removed),
            folder,
            ", ".join(str(p.relative_to(folder)) for p in removed),
        )


@dataclass
class Progress:
    """Epochs done, their history and the best score so far (early stopping counts the stale epochs)."""

    start_epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0

    def record(self, row: dict[str, Any]) -> bool:
        """Append an epoch's row; True when its validation score is the best so far.

        Without a held-out fold (no score) every epoch is kept: the last one's weights become best.pt.
        """
        self.history.append(row)
        if "val_score" not in row:
            self.best_epoch, self.stale = row["epoch"], 0
            return True
        score = row["val_score"]
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, row["epoch"], 0
            return True
        self.stale += 1
        return False


def _restore(cfg: Config, parts: TrainParts, data: TrainData, run: RunDir) -> Progress:
    """A resumed run's weights, optimizer, schedule, random state and history; a new run starts empty."""
    state = data.resume_state
    if state is None:
        return Progress()
    start = state["epoch"] + 1
    progress = Progress(
        start, state["best_f1"], state["best_epoch"], [h for h in state["history"] if h["epoch"] < start]
    )
    progress.stale = 0 if progress.best_epoch < 0 else max(0, start - 1 - progress.best_epoch)
    parts.raw_model.load_state_dict(state["model"])
    _resume_schedule(parts.scheduler, parts.optimizer, state, progress.history, cfg.train.epochs)
    _set_rng_state(state["rng"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(state["ema"])
    logger.info(
        "resuming %s at epoch %d (best F1 %.4f at epoch %d)", run.root, start, progress.best_score, progress.best_epoch
    )
    return progress


@dataclass
class Validation:
    rows: np.ndarray
    probs: np.ndarray
    loss: float
    years: np.ndarray | None
    metrics: dict[str, float]


def _validate(fabric: Fabric, parts: TrainParts, cfg: Config, table: pd.DataFrame, epoch: int) -> Validation:
    assert parts.val_loader is not None, "validation runs only with a held-out fold"
    # Validation predicts the way the run will predict (its TTA and grouping included), so OOF scores measure that.
    rows, probs, loss, years = infer(
        fabric,
        parts.eval_model,
        parts.val_loader,
        parts.loss_fn,
        cfg.train.limit_val_batches,
        cfg.train.progress,
        desc=f"val {epoch}",
        tta=cfg.predict.tta,
        age_cuts=thresholds_cuts(cfg.data.age.thresholds()),
        grouping=cfg.predict.grouping if cfg.predict.group_people else None,
    )
    metrics = model_metrics(probs, table["label"].to_numpy()[rows], cfg.model.tasks, cfg.data.mask_codes())
    return Validation(rows, probs, loss, years, metrics)


class EpochSaver:
    """What each epoch leaves in the run folder, written by rank 0 (the role of timm's CheckpointSaver).

    Every epoch: metrics.csv, the epoch's row on the tracking backends (TensorBoard by default) and last.pt
    (everything a resume needs). On a new best score: best.pt (the validated weights only), the held-out
    predictions and the confusion plot. At the end: the curves, and the final score and pictures on the backends.
    """

    def __init__(self, fabric: Fabric, run: RunDir, cfg: Config, table: pd.DataFrame, resumed: bool = False) -> None:
        self.fabric, self.run, self.cfg, self.table = fabric, run, cfg, table
        tracker = fabric.logger
        assert isinstance(tracker, RunTracker), "train() gives Fabric the run's tracker"
        self.tracker = tracker
        tracker.open(cfg, run, resumed, fabric.is_global_zero)

    def save(self, epoch: int, parts: TrainParts, progress: Progress, val: Validation | None, improved: bool) -> None:
        if not self.fabric.is_global_zero:
            return
        self.fabric.log_dict(progress.history[-1], step=epoch)
        atomic_write_csv(pd.DataFrame(progress.history), self.run.metrics)
        state = self._state(epoch, parts, progress)
        if improved:
            best_weights = state["ema"] if parts.ema is not None else state["model"]
            atomic_save_torch(
                {
                    "model": best_weights,
                    "epoch": epoch,
                    "metrics": val.metrics if val else {},
                    "config": state["config"],
                },
                self.run.best,
            )
            if val is not None:
                self._save_best_predictions(val)
        atomic_save_torch(state, self.run.last)

    def abort(self) -> None:
        """Close the tracking runs as failed, keeping the epochs saved, on the way out of a failed or interrupted run."""
        self.tracker.finalize("failed")

    def close(self, progress: Progress) -> None:
        if not self.fabric.is_global_zero:
            return
        if progress.history:
            plot_curves(self.run.metrics, self.run.plots / "curves.png")
            self.tracker.log_final(self.run, progress.best_epoch, progress.best_score, progress.history[-1]["epoch"])
        self.tracker.finalize("success")

    def _state(self, epoch: int, parts: TrainParts, progress: Progress) -> dict[str, Any]:
        state = {
            "model": parts.raw_model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "epoch": epoch,
            "best_f1": progress.best_score,
            "best_epoch": progress.best_epoch,
            "history": progress.history,
            "rng": _rng_state(),
            "config": config_to_dict(self.cfg),
        }
        if parts.ema is not None:
            state["ema"] = parts.ema.module.state_dict()
        return state

    def _save_best_predictions(self, val: Validation) -> None:
        cfg, table = self.cfg, self.table
        _write_oof(self.run, table, val.rows, val.probs, val.years)
        labels = table["label"].to_numpy()[val.rows]
        scored = np.isin(table["mask"].to_numpy()[val.rows], cfg.data.mask_codes())
        plot_confusion(
            confusion(val.probs[scored], labels[scored]),
            self.run.plots / "confusion.png",
            class_names(cfg.data.age.thresholds()),
        )


def _train_epoch(fabric: Fabric, parts: TrainParts, cfg: Config, epoch: int) -> tuple[float, int]:
    """One pass over the training loader; returns the mean loss and the images seen (all ranks)."""
    model, loader, optimizer = parts.model, parts.train_loader, parts.optimizer
    model.train()
    parts.frozen.hold_norms()
    total, seen = torch.zeros((), device=fabric.device), 0
    # The first batch whose loss is not finite, kept on the device: checked where the loop syncs anyway.
    first_bad = torch.full((), -1, device=fabric.device, dtype=torch.long)
    bad_loss = torch.zeros((), device=fabric.device)
    limit = cfg.train.limit_train_batches
    steps = len(loader) if limit is None else min(limit, len(loader))
    accumulate = cfg.train.accumulate
    # Optimizer steps before this epoch, counted the same way on a resume, for the EMA's warmup.
    steps_before = epoch * math.ceil(steps / accumulate)
    batches = iter(loader)
    # Dropout draws from the global RNG; reseed it per (seed, epoch, rank) after the loader has taken its
    # own draws, so the result depends neither on num_workers nor on whether the run was resumed.
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, fabric.global_rank]).generate_state(1)[0]))
    mix_rng = np.random.default_rng([cfg.seed, epoch, fabric.global_rank, 1])
    bar = tqdm(
        batches,
        total=steps,
        desc=f"train {epoch}",
        disable=not (cfg.train.progress and fabric.is_global_zero),
        leave=False,
    )
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        if i >= steps:
            break
        batch = fabric.to_device(batch)
        images = parts.train_set.model_input(batch["image"])
        mixed = mix_batch(images, cfg.train.mix, mix_rng)
        if mixed is not None:
            images = mixed.images
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        step_now = (i + 1) % accumulate == 0 or i + 1 == steps
        # Gradients of the batches in between are summed locally; DDP syncs only on the stepping batch.
        with fabric.no_backward_sync(model, enabled=not step_now):
            with fabric.autocast():
                outputs = model(images)
            outputs = {k: v.float() for k, v in outputs.items()}
            loss, _ = (
                mixed_loss(parts.loss_fn, outputs, batch, mixed) if mixed is not None else parts.loss_fn(outputs, batch)
            )
            fabric.backward(loss / accumulate)
        if step_now:
            if cfg.train.grad_clip:
                fabric.clip_gradients(model, optimizer, max_norm=cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if parts.ema is not None:
                parts.ema.update(parts.raw_model, step=steps_before + i // accumulate + 1)
        n = len(images)
        total += loss.detach() * n
        seen += n
        new_bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
        first_bad, bad_loss = torch.where(new_bad, i, first_bad), torch.where(new_bad, loss.detach(), bad_loss)
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            # One process may stop at once; with several, each stops after the epoch's all-reduce, together.
            if fabric.world_size == 1 and first_bad >= 0:
                break
    total = sum_tensor(fabric, total) if fabric.world_size > 1 else total
    if not torch.isfinite(total) or first_bad >= 0:
        raise NonFiniteLoss(
            epoch,
            int(first_bad),
            f"the training loss is {float(bad_loss)}"
            if first_bad >= 0
            else "the training loss of another process is not finite",
        )
    _check_finite_weights(parts, epoch, steps - 1)
    seen_all = seen * fabric.world_size
    return float(total) / max(seen_all, 1), seen_all


def _check_finite_weights(parts: TrainParts, epoch: int, last_batch: int) -> None:
    """The last optimizer step of an epoch can make the weights non-finite with a finite loss: never save those."""
    models = [parts.raw_model] + ([parts.ema.module] if parts.ema is not None else [])
    if not bool(torch.stack([torch.isfinite(p).all() for m in models for p in m.parameters()]).all()):
        raise NonFiniteLoss(epoch, last_batch, "the weights are no longer finite after the optimizer step")
