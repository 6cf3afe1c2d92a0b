"""Inference: class probabilities for a table of images, test-time augmentation, voting over runs, submission files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from lightning_fabric import Fabric

from .. import outputs
from ..age import AGE_MEAN, AGE_SIGMA, Cuts, read_cuts, thresholds_cuts
from ..config import Config, GroupingConfig, config_to_dict, load_config
from ..data.cache import ImageCache, available_cores
from ..data.dataset import FaceDataset
from ..data.faces import cache_loader
from ..data.tables import eval_table, folder_table
from ..data.transforms import BatchNormalize, batch_normalizer, build_transforms, split_prepare
# The argument checks live where they need no torch (the command line runs them first); importers find them here too.
from ..choices import BACKENDS, check_accelerator_available, check_backend  # noqa: F401
from ..choices import PREDICT_PRECISIONS as PRECISIONS  # noqa: F401
from ..errors import DataError, RunError, UsageError
from ..labels import PROB_COLUMNS, decode
from ..models import create_model, model_data_config
from ..outputs import check_prediction_output as check_output
from ..outputs import probs_path_for
from ..runs import atomic_write_csv, load_checkpoint, open_run_dir
from .ensemble import Vote, check_vote, combine_probs, expand_runs, normalize_weights
from .evaluate import Model, eval_loader, infer, normalize_on_device
from .tta import tta_views

logger = logging.getLogger(__name__)

# The PyTorch model, or its ONNX export run by ONNX Runtime (infer.onnx_model.OnnxModel); see evaluate.Model.
Backend = Literal["torch", "onnx"]


def read_images(data: Path) -> tuple[pd.DataFrame, bool]:
    """A competition eval folder (info.csv + images/, or a parent holding eval/), else any image folder.

    Returns the table and whether it is a competition eval set (submission rows keep info.csv order).
    Images are not decoded here: the image cache decodes each once and names every file it cannot decode.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    for candidate in (data, data / "eval"):
        if (candidate / "info.csv").is_file():
            logger.info("%s: competition eval folder (%s found): the submission has ImageID,ans in info.csv order",
                        data, candidate / "info.csv")
            return eval_table(candidate, check_images=False), True
    if (data.parent / "info.csv").is_file():
        # The images/ folder of an eval set: the plain format would not be a valid submission.
        logger.warning("%s sits beside %s: predicting it as a plain image folder (image,ans,mask,gender,age); "
                       "for a competition submission (ImageID,ans) pass --data %s", data, data.parent / "info.csv",
                       data.parent)
    else:
        logger.info("%s: plain image folder (no info.csv in it or in %s/eval): the output has "
                    "image,ans,mask,gender,age", data, data)
    return folder_table(data), False


@dataclass
class LoadedRun:
    cfg: Config
    model: Model  # a torch.nn.Module, or an OnnxModel for the ONNX backend
    checkpoint: Path
    age_cuts: Cuts  # where a regression head's predicted years split into age groups


# What predictions depend on: editing these in config.yaml after training would predict differently from
# how the weights were trained (the weights files are set aside by load_run and may be edited).
_PREDICT_KEYS = ("model", "cache.size", "transforms.eval", "data.face_crop", "data.age.young_below", "data.age.old_from",
                 "data.mask_states")
_FREE_KEYS = ("model.pretrained", "model.pretrained_path")


def _check_trained_config(cfg: Config, trained: Optional[dict], config_path: Path, ckpt_path: Path) -> None:
    """Refuse a config.yaml that differs from the config stored in the checkpoint where predictions depend on it."""
    if trained is None:  # checkpoints from before the config was stored in them
        return
    current = config_to_dict(cfg)
    changed = []
    for key in _PREDICT_KEYS:
        if _dotted(trained, key) is _MISSING:  # a key added since that checkpoint was written
            continue
        for path, (now, then) in _leaf_diff(_dotted(current, key), _dotted(trained, key), key).items():
            if not path.startswith(_FREE_KEYS):
                changed.append(f"{path}: {then!r} in the checkpoint, {now!r} in config.yaml")
    if changed:
        raise RunError(
            f"{config_path} was edited after {ckpt_path} was trained; predicting with the edited config would "
            "not match the weights:\n  " + "\n  ".join(changed) + "\nrestore these keys in config.yaml"
        )


_MISSING = object()


def _dotted(tree: Optional[dict], key: str):
    for part in key.split("."):
        tree = tree.get(part, _MISSING) if isinstance(tree, dict) else _MISSING
    return tree


def _leaf_diff(a, b, prefix: str) -> dict[str, tuple]:
    """Dotted key -> (a, b) for every leaf where the two nested dicts differ (lists compare whole).

    Keys only one side has are skipped: a checkpoint from an older version lacks keys added since.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple] = {}
        for k in sorted(set(a) & set(b)):
            out.update(_leaf_diff(a.get(k), b.get(k), f"{prefix}.{k}"))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return {} if a == b else {prefix: (a, b)}


def load_run(
    run_dir: Path | str,
    which: str = "best",
    age_cuts: Optional[Cuts] = None,
    backend: Backend = "torch",
    onnx_dir: Optional[Path | str] = None,
) -> LoadedRun:
    """A run's config and model with its best (or last) weights.

    ``age_cuts`` default to the ones tuned for this run (its age_cuts.json), else the scoring thresholds.
    ``backend="onnx"`` loads the run's export (``<run>/onnx/``, or ``<onnx_dir>/<run name>/``) made by
    ``maskstatus export`` instead of building the PyTorch model.
    """
    run = open_run_dir(run_dir)
    cfg = load_config(run.config)
    if age_cuts is None:
        age_cuts = read_cuts(run.root) or thresholds_cuts(cfg.data.age.thresholds())
    ckpt_path = run.best if which == "best" else run.last
    if backend == "onnx":
        from .onnx_model import OnnxModel, onnx_path

        if not ckpt_path.is_file():
            raise RunError(f"checkpoint not found: {ckpt_path}")
        return LoadedRun(cfg, OnnxModel(onnx_path(run.root, which, onnx_dir), ckpt_path), ckpt_path, age_cuts)
    if backend != "torch":
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    state = load_checkpoint(ckpt_path)
    _check_trained_config(cfg, state.get("config"), run.config, ckpt_path)
    # Weights come from the checkpoint: never fetch or load pretrained ones again.
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_path": None})
    model = create_model(model_cfg)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, model.eval(), ckpt_path, age_cuts)


def predict_outputs(
    runs: Sequence[Union[LoadedRun, Sequence[LoadedRun]]],
    table: pd.DataFrame,
    fabric: Fabric,
    batch_size: Optional[int] = None,
    num_workers: Union[int, str] = 0,
    progress: bool = True,
    tta: Optional[Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    vote: Vote = "soft",
    group_people: Optional[bool] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Ensemble 18-class probabilities in table order, and the predicted age in years (N, 2: mean, spread) or None.

    Each member of ``runs`` is a run, or a list of runs (the folds of a CV folder)
    whose probabilities are averaged into one member. Members are combined by
    ``vote`` with ``weights`` (default equal; soft: the weighted mean). ``tta``
    overrides every run's ``predict.tta`` (``[]``: none); None keeps each run's own.
    ``group_people`` likewise overrides every run's ``predict.group_people``.
    The years are the plain mean over every run that predicts them (TTA views already
    averaged); they let pseudo labels carry an age in years for a regression head.
    """
    members = [[m] if isinstance(m, LoadedRun) else list(m) for m in runs]
    caches: dict = {}
    return vote_members(
        members,
        lambda run: _run_probs(run, table, fabric, caches, batch_size, num_workers, progress, tta, group_people),
        weights,
        vote,
    )


def vote_members(
    members: Sequence[Sequence[LoadedRun]],
    run_outputs: Callable[[LoadedRun], tuple[np.ndarray, Optional[np.ndarray]]],
    weights: Optional[Sequence[float]] = None,
    vote: Vote = "soft",
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The ensemble rule ``predict`` and ``serve`` share: runs of a member averaged, members voted.

    ``run_outputs(run)`` gives one run's probabilities (N, 18) and years (N, 2) or None.
    """
    if not members or any(not m for m in members):
        raise ValueError("an ensemble needs at least one run in every member")
    member_probs, years = [], []
    for member in members:
        outputs = [run_outputs(run) for run in member]
        member_probs.append(np.mean([probs for probs, _ in outputs], axis=0))
        years += [y for _, y in outputs if y is not None]
    # The folds of one member share a config, so its first run tells which tasks it predicts.
    probs = combine_probs(member_probs, weights, vote, [m[0].cfg.model.tasks for m in members],
                          [m[0].cfg.data.mask_states for m in members])
    return probs, (np.mean(years, axis=0) if years else None)


def decode_images(cfg: Config, paths: Sequence[str], progress: bool = False) -> ImageCache:
    """The images as a run of ``cfg`` predicts from: decoded, sized, face-cropped, and through the
    leading crops and resizes of ``transforms.eval`` (run once here, not per batch).

    Decoding releases the GIL: one thread per core. Undecodable files fail here, all named at once.
    """
    size = tuple(cfg.cache.size) if cfg.cache.size else None
    prepare, _, _ = split_prepare(cfg.transforms.eval, cfg.transforms.eval, cfg.cache.precompute)
    threads = max(cfg.cache.decode_threads, available_cores())
    return ImageCache(list(paths), size=size, mode="memory", threads=threads, progress=progress,
                      **cache_loader(cfg.data.face_crop, cfg.cache.size), prepare=prepare).fill()


def _run_probs(
    run: LoadedRun,
    table: pd.DataFrame,
    fabric: Fabric,
    caches: dict,
    batch_size: Optional[int],
    num_workers: Union[int, str],
    progress: bool,
    tta: Optional[Sequence[str]],
    group_people: Optional[bool] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One run's probabilities (N, 18) as float64 and its predicted years (N, 2) or None.

    ``caches`` holds decoded images shared between runs.
    """
    cfg = run.cfg
    prepare, _, eval_specs = split_prepare(cfg.transforms.eval, cfg.transforms.eval, cfg.cache.precompute)
    key = (tuple(cfg.cache.size) if cfg.cache.size else None, cfg.data.face_crop, prepare.variant if prepare else "")
    if key not in caches:  # runs sharing an image size, face cropping and prepare steps share one decode
        caches[key] = decode_images(cfg, table["image_path"].tolist(), progress)
    is_torch = isinstance(run.model, torch.nn.Module)  # else an OnnxModel, which knows its normalisation
    norm = model_data_config(run.model) if is_torch else run.model.data_config
    defer = normalize_on_device(cfg.train.normalize_on, fabric)
    transform = build_transforms(eval_specs, norm["mean"], norm["std"], "transforms.eval", defer)
    normalize = batch_normalizer(eval_specs, norm["mean"], norm["std"], defer)
    model = run.model
    if is_torch and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if is_torch:
        model = fabric.setup_module(model)
    grouping = cfg.predict.grouping if (cfg.predict.group_people if group_people is None else group_people) else None
    if grouping is not None and not is_torch:
        # The embeddings come from a hook on a backbone layer, which an ONNX graph does not expose.
        raise UsageError(f"{run.checkpoint}: predict.group_people needs the torch backend (use --backend torch)")
    return cache_probs(run, model, transform, caches[key], fabric, batch_size, num_workers, progress, tta, grouping,
                       normalize)


def cache_probs(
    run: LoadedRun,
    model: Model,
    transform,
    cache: ImageCache,
    fabric: Fabric,
    batch_size: Optional[int] = None,
    num_workers: Union[int, str] = 0,
    progress: bool = False,
    tta: Optional[Sequence[str]] = None,
    grouping: Optional[GroupingConfig] = None,
    normalize: Optional[BatchNormalize] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Every image of a filled ``cache`` through ``run``'s ready ``model``: probabilities (N, 18) and years or None.

    The step ``predict`` (images from files) and ``serve`` (images from uploads) share, so both answer alike.
    ``tta`` None keeps the run's own ``predict.tta``. ``normalize`` goes with a ``transform`` built with
    ``defer_normalize``.
    """
    dataset = FaceDataset(cache, np.arange(len(cache)), transform, normalize=normalize)
    loader = eval_loader(dataset, batch_size or run.cfg.train.eval_batch_size, num_workers, fabric)
    rows, probs, _, years = infer(
        fabric,
        model,
        loader,
        progress=progress,
        desc=f"predict {run.checkpoint.parent.parent.name}",
        tta=run.cfg.predict.tta if tta is None else tta,
        age_cuts=run.age_cuts,
        grouping=grouping,
    )
    if not np.array_equal(rows, np.arange(len(cache))):
        raise RuntimeError("inference lost rows; this is a bug")
    check_finite_probs(run, probs)
    return probs.astype(np.float64), (None if years is None else years.astype(np.float64))


def check_finite_probs(run: LoadedRun, probs: np.ndarray) -> None:
    """Refuse NaN or inf probabilities (weights of a diverged run): their argmax would be a submission of class 0."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise RunError(f"{run.checkpoint} gives non-finite probabilities for {int(bad.sum())} of {len(probs)} images: "
                       "its weights are not finite (a diverged run); retrain it, e.g. with a lower optimizer.lr")


def output_bytes(table: pd.DataFrame) -> int:
    """About what ``write_predictions`` writes for ``table``, with room for the temp files (to check disk space)."""
    per_row = 2 * table["image_id"].astype(str).str.len().mean() + len(PROB_COLUMNS) * 9 + 64
    return int(2 * len(table) * per_row) + 2 * outputs.PROBE_BYTES


def write_predictions(table: pd.DataFrame, probs: np.ndarray, out: Path, competition: bool,
                      years: Optional[np.ndarray] = None) -> tuple[Path, Path]:
    """submission (ImageID,ans in table order) and a probabilities file beside it; both written atomically.

    With ``years`` (N, 2) the probabilities file also holds the predicted age in years (age_mean, age_sigma).
    """
    out = Path(out)
    ans = probs.argmax(axis=1)
    if competition:
        submission = pd.DataFrame({"ImageID": table["image_id"].to_numpy(), "ans": ans})
    else:
        mask, gender, age = decode(ans)
        submission = pd.DataFrame(
            {"image": table["image_id"].to_numpy(), "ans": ans, "mask": mask, "gender": gender, "age": age}
        )
    probs_path = probs_path_for(out)
    prob_df = pd.DataFrame(probs, columns=PROB_COLUMNS)
    prob_df.insert(0, "ImageID" if competition else "image", table["image_id"].to_numpy())
    if years is not None:
        prob_df[AGE_MEAN], prob_df[AGE_SIGMA] = years[:, 0], years[:, 1]
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
    num_workers: Union[int, str] = 0,
    progress: bool = True,
    tta: Optional[Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    vote: Vote = "soft",
    backend: Backend = "torch",
    onnx_dir: Optional[Path | str] = None,
    group_people: Optional[bool] = None,
    precision: Optional[str] = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Predict with one or more runs and write the submission and probabilities.

    Each of ``run_dirs`` is an ensemble member: a run folder, or a CV folder whose
    fold runs are averaged into one member (see ``ensemble.expand_runs``).
    ``weights`` (one per member) and ``vote`` combine the members (default: the
    plain mean). ``tta`` overrides the runs' ``predict.tta``; None keeps each run's own, and so for
    ``group_people`` and ``predict.group_people``.
    ``backend="onnx"`` predicts on the CPU with ONNX Runtime from the files ``maskstatus export``
    wrote (in each run's ``onnx/`` folder, or under ``onnx_dir``); a run not exported is an error.
    ``precision`` (a Fabric precision of ``PRECISIONS``) overrides the first run's ``train.precision``
    for the torch backend; ``bf16-mixed`` is faster on CPUs with bf16 instructions and on GPUs, at the
    cost of answers that differ from float32 on about 1 % of images (``benchmarks/predict_cpu.py``).
    ``out`` may not be an input nor lie in a run or data folder; an existing file other than an earlier
    prediction is replaced only with ``overwrite`` (``check_output``).
    """
    check_backend(backend, accelerator, precision)
    check_accelerator_available(accelerator)
    if not run_dirs:
        raise UsageError("predict needs at least one run folder")
    check_output(out, [*run_dirs, data], overwrite)
    groups = [expand_runs([r]) for r in run_dirs]
    # A bad weight list or vote fails here, before any model is loaded or image decoded.
    normalize_weights(weights, len(groups))
    check_vote(vote)
    if tta is not None:
        tta_views(tta)  # unknown names fail now too
    # Cut points tuned for a CV folder as a whole hold for each of its fold runs.
    runs = [[load_run(r, checkpoint, read_cuts(member), backend, onnx_dir) for r in group]
            for member, group in zip(run_dirs, groups)]
    table, competition = read_images(Path(data))
    if table.empty:
        raise DataError.one(data, "no images found")
    outputs.check_space(Path(out).parent, output_bytes(table), name=out)  # before the images are decoded
    if backend == "onnx":  # ONNX Runtime computes in float32 on the CPU; Fabric only moves the batches
        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    else:
        fabric = Fabric(accelerator=accelerator, devices=1, precision=precision or runs[0][0].cfg.train.precision)
    probs, years = predict_outputs(runs, table, fabric, batch_size, num_workers, progress, tta, weights, vote,
                                   group_people)
    return write_predictions(table, probs, Path(out), competition, years)
