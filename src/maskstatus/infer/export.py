"""Export trained runs to ONNX, each checked against PyTorch on real images before it is kept.

Per run (every fold run of a CV folder) ``export_run`` writes
``<checkpoint>.onnx`` (the model's forward pass, a dynamic batch axis, input
``image``, one output per key of the model's output dict) and ``<checkpoint>.json``
beside it: the input size and normalisation, what each output means, the age
cut points, the run's test-time augmentation, the result of the check, and the
sha256 digests of the ONNX file, of the checkpoint and of the sidecar itself, so
``--backend onnx`` refuses a file replaced, edited or left stale by retraining.
Only the network is exported; softmax, age groups, TTA and voting stay in the
library (``infer.tta``, ``infer.ensemble``), shared with the PyTorch backend.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..age import AGE_YEARS, Cuts, read_cuts
from ..config import Config
from ..data.tables import folder_table
from ..defaults import EXPORT_TOLERANCE
from ..errors import RunError
from ..extras import require
from ..labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES, NUM_CLASSES
from ..models.heads import SINGLE_KEY, outputs_to_probs
from ..outputs import check_output
from ..runs import AGE_CUTS, RunDir, atomic_write_text, expand_runs
from .onnx_model import INPUT_NAME, SIDECAR_FORMAT, OnnxModel, file_sha256, onnx_path, seal_sidecar, sidecar_path
from .pipeline import LoadedRun, fixed_input_size, load_run, model_inputs

logger = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = EXPORT_TOLERANCE  # largest allowed difference to PyTorch (see defaults)
CHECK_IMAGES = 64


@dataclass
class ExportResult:
    run: Path
    onnx: Path
    sidecar: Path
    check: dict[str, Any]  # images compared, where they came from, largest differences
    seconds: float  # export and check, without loading the run


class _OutputTuple(nn.Module):
    """The model with its output dict as a tuple in a fixed key order (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[k] for k in self.keys)


def output_meanings(cfg: Config, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What each output of the exported graph holds, for the sidecar."""
    ages = cfg.data.age.thresholds().names()
    meaning = {
        SINGLE_KEY: (
            NUM_CLASSES,
            "logits over the 18 classes, class = mask*6 + gender*3 + age; softmax for probabilities",
        ),
        "mask": (len(MASK_NAMES), f"logits over mask states {list(MASK_NAMES)} (codes 0..2)"),
        "gender": (len(GENDER_NAMES), f"logits over genders {list(GENDER_NAMES)} (codes 0..1)"),
        "age": (len(AGE_NAMES), f"logits over age groups {list(ages)} (codes 0..2)"),
        AGE_YEARS: (
            2,
            (
                "predicted age in years as a normal distribution: column 0 the mean, column 1 the spread "
                "(standard deviation); the age-group probabilities are its mass between the age cut points"
            ),
        ),
    }
    return {k: {"shape": ["batch", meaning[k][0]], "meaning": meaning[k][1]} for k in keys}


def check_image_paths(run_dir: Path, images: Path | str | Sequence[str] | None, count: int) -> tuple[list[str], str]:
    """Up to ``count`` images to compare the backends on, and where they came from.

    The run's own data first (the paths in its predictions/oof.csv that still exist
    here), else ``images`` (a folder, or a list of files).
    """
    oof = RunDir(run_dir).oof
    paths: list[str] = []
    source = ""
    if oof.is_file():
        try:
            listed = pd.read_csv(oof, usecols=["image_path"], dtype=str)["image_path"].tolist()
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            logger.warning("%s: cannot read image paths (%s); checking on the given images", oof, exc)
            listed = []
        # Evenly spread over the table, so every mask state and several people are covered.
        step = max(1, len(listed) // (count * 4))
        paths = [p for p in listed[::step] if os.path.isfile(p)][:count]
        source = str(oof)
    if not paths and images is not None:
        if isinstance(images, (str, Path)):
            paths = folder_table(Path(images))["image_path"].tolist()[:count]
            source = str(images)
        else:
            paths = [str(p) for p in images][:count]
            source = "given image files"
    if not paths:
        raise RunError(
            f"no images to check the export of {run_dir} with: its predictions/oof.csv is missing or lists no "
            "image found here; give some with --images DIR"
        )
    return paths, source


def _batches(inputs: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Stacks of up to ``size`` images of one shape, in order (images of another shape start a new stack)."""
    out: list[list[torch.Tensor]] = []
    for x in inputs:
        if out and len(out[-1]) < size and out[-1][0].shape == x.shape:
            out[-1].append(x)
        else:
            out.append([x])
    return [torch.stack(b) for b in out]


@torch.no_grad()
def compare_backends(
    model: nn.Module, onnx_model: OnnxModel, inputs: list[torch.Tensor], cuts: Cuts, batch: int = 24
) -> dict[str, Any]:
    """Largest differences between the backends' outputs and 18-class probabilities on ``inputs``.

    Batches of ``batch`` leave a smaller last one, so a fixed batch size would fail here.
    """
    model.eval()
    worst: dict[str, float] = {}
    worst_relative = 0.0
    prob_diff, agree, total = 0.0, 0, 0
    for x in _batches(inputs, batch):
        got = onnx_model(x)
        ref = {k: v.float() for k, v in model(x).items() if k in got}  # what the graph serves
        for key, value in ref.items():
            diff = (got[key] - value).abs()
            worst[key] = max(worst.get(key, 0.0), float(diff.max()))
            worst_relative = max(worst_relative, float((diff / (1 + value.abs())).max()))
        p_ref, p_got = outputs_to_probs(ref, cuts), outputs_to_probs(got, cuts)
        prob_diff = max(prob_diff, float((p_ref - p_got).abs().max()))
        agree += int((p_ref.argmax(1) == p_got.argmax(1)).sum())
        total += len(x)
    return {
        "max_abs_diff": worst,
        "max_relative_diff": worst_relative,
        "max_prob_diff": prob_diff,
        "class_agreement": agree / total,
    }


def _export_graph(model: nn.Module, example: torch.Tensor, file: Path, keys: Sequence[str], fixed_size: bool) -> bool:
    """The model's forward pass as ONNX in ``file``; True when the graph was simplified (``_simplify``)."""
    axes = {0: "batch"} if fixed_size else {0: "batch", 2: "height", 3: "width"}
    # The TorchScript exporter (dynamo=False): these models are plain feed-forward nets, it needs no extra
    # packages and exports in about a second; the torch.export-based one needs onnxscript and much longer.
    with warnings.catch_warnings():
        # Chosen on purpose (above); its deprecation notices would only worry users.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _OutputTuple(model, keys).eval(),
            (example,),
            str(file),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(keys),
            dynamic_axes={INPUT_NAME: axes, **{k: {0: "batch"} for k in keys}},
        )
    return _simplify(file)


def _simplify(file: Path) -> bool:
    """Fold what the graph computes from the input's shape into constants, in place; True when it did.

    The TF-style EfficientNets pad "same" from the input's shape at run time: traced, that is shape
    arithmetic feeding a Pad before every strided convolution. Each Pad stops ONNX Runtime's blocked-layout
    convolutions and costs two layout reorders; with a fixed image size onnxsim turns the arithmetic into
    constants and the Pads into the convolutions' own padding (measured 1.5x faster on 2 CPU cores, the same
    outputs). It is a speed-up only, so a graph it cannot simplify is kept as exported; the check against
    PyTorch that follows covers either.
    """
    import onnx
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(onnx.load(str(file)))
    except Exception as exc:  # onnxsim raises many kinds (its own checker, onnx's); any of them means "keep"
        logger.warning("ONNX graph kept as exported: onnxsim could not simplify %s (%s)", file, exc)
        return False
    if not ok:
        logger.warning("ONNX graph kept as exported: onnxsim's own check of the simplified %s failed", file)
        return False
    onnx.save(simplified, str(file))
    return True


def export_run(
    run_dir: Path | str,
    out_dir: Path | str | None = None,
    checkpoint: str = "best",
    images: Path | str | Sequence[str] | None = None,
    age_cuts: Cuts | None = None,
    tolerance: float = TOLERANCE,
    check_count: int = CHECK_IMAGES,
) -> ExportResult:
    """Export one run's ``checkpoint`` to ONNX and check it against PyTorch; returns what was written.

    Files go to ``<run>/onnx/`` (``out_dir``: ``<out_dir>/<run name>/``). They are
    written under temporary names and renamed only after the check passed, so a
    failed export leaves no file a later predict could pick up. ``age_cuts``
    default to the run's tuned cuts (age_cuts.json), else the scoring thresholds.
    """
    require("onnx", "ONNX export")
    run_dir = Path(run_dir)
    if age_cuts is None:
        age_cuts = read_cuts(run_dir)
    cuts_source = AGE_CUTS if age_cuts is not None else "scoring thresholds"
    run = load_run(run_dir, checkpoint, age_cuts)
    cfg, model = run.cfg, run.module.float()
    norm = run.norm
    keys = model.prediction_keys  # an age head's own logits stay inside: prediction reads the years
    target = onnx_path(run_dir, checkpoint, out_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write the ONNX export to {target.parent}: {exc}; give --out DIR") from None

    started = time.perf_counter()
    paths, source = check_image_paths(run_dir, images, check_count)
    inputs = model_inputs(run, paths)
    fixed_size = fixed_input_size(cfg)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".onnx.tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from other users of a shared run
    try:
        simplified = _export_graph(
            model, torch.stack(inputs[:2]) if fixed_size else inputs[0][None], tmp, keys, fixed_size
        )
        meta = _sidecar(cfg, run, norm, keys, inputs[0].shape, fixed_size, cuts_source, checkpoint)
        meta["export"]["simplified"] = simplified
        meta["onnx"] = {"file": target.name, "sha256": file_sha256(tmp)}  # the rename below keeps the bytes
        tmp_sidecar = sidecar_path(tmp)
        atomic_write_text(tmp_sidecar, json.dumps(seal_sidecar(meta), indent=2) + "\n")
        try:
            check = compare_backends(model, OnnxModel(tmp), inputs, run.age_cuts)
        finally:
            tmp_sidecar.unlink(missing_ok=True)
        check.update(images=len(inputs), source=source, tolerance=tolerance)
        if check["max_relative_diff"] > tolerance or check["max_prob_diff"] > tolerance:
            raise RunError(
                f"the ONNX export of {run_dir} differs from PyTorch beyond the tolerance {tolerance} on "
                f"{len(inputs)} images from {source}: outputs {check['max_abs_diff']} (relative "
                f"{check['max_relative_diff']:.3g}), probabilities {check['max_prob_diff']:.3g}; nothing written"
            )
        seconds = time.perf_counter() - started
        meta["check"] = check
        meta["export"]["seconds"] = round(seconds, 3)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(sidecar_path(target), json.dumps(seal_sidecar(meta), indent=2) + "\n")
    logger.info(
        "exported %s -> %s (max probability difference %.2g on %d images)",
        run_dir,
        target,
        check["max_prob_diff"],
        len(inputs),
    )
    return ExportResult(run_dir, target, sidecar_path(target), check, seconds)


def _sidecar(
    cfg: Config,
    run: LoadedRun,
    norm: dict,
    keys: Sequence[str],
    input_shape: torch.Size,
    fixed_size: bool,
    cuts_source: str,
    checkpoint: str,
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    _, h, w = input_shape
    meta: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "run": str(run.checkpoint.parent.parent.resolve()),
        "checkpoint": {
            "which": checkpoint,
            "path": str(run.checkpoint.resolve()),
            "sha256": file_sha256(run.checkpoint),
        },
        "model": {
            "backbone": cfg.model.backbone,
            "head": cfg.model.head,
            "tasks": list(cfg.model.tasks),
            "age_output": cfg.model.age_output,
            "mask_states": list(cfg.data.mask_states),
        },
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, h, w] if fixed_size else ["batch", 3, "height", "width"],
            "layout": "NCHW, RGB channels",
            "preprocessing": "decode to RGB (EXIF-upright), resize to resize_to [height, width] (cv2 INTER_AREA "
            "when shrinking), apply transforms_eval, then (pixel / 255 - mean) / std per channel",
            "resize_to": list(cfg.cache.size) if cfg.cache.size else None,
            "transforms_eval": cfg.transforms.eval,
        },
        "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"]), "max_pixel_value": 255.0},
        "outputs": output_meanings(cfg, keys),
        "classes": "class = mask*6 + gender*3 + age (mask: wear, incorrect, not_wear; gender: male, female; "
        f"age: {', '.join(cfg.data.age.thresholds().names())})",
        "tta": list(cfg.predict.tta),
        "export": {
            "opset": OPSET,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    if AGE_YEARS in keys:
        meta["age_cuts"] = {"cuts": list(run.age_cuts), "source": cuts_source}
    return meta


def export(
    path: Path | str,
    out_dir: Path | str | None = None,
    checkpoint: str = "best",
    images: Path | str | Sequence[str] | None = None,
    tolerance: float = TOLERANCE,
    check_count: int = CHECK_IMAGES,
    overwrite: bool = False,
) -> list[ExportResult]:
    """Export a run, or every fold run of a CV folder (which share the CV folder's tuned age cuts, if any).

    Every file is checked before the first export (``check_export_outputs``).
    """
    path = Path(path)
    cuts = read_cuts(path)
    runs = expand_runs([path])
    check_export_outputs(runs, out_dir, checkpoint, images, overwrite)
    return [export_run(r, out_dir, checkpoint, images, cuts, tolerance, check_count) for r in runs]


def is_previous_export(path: Path) -> bool:
    """An ONNX file or sidecar export wrote (the sidecar names its format), which a new export may replace."""
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT


def check_export_outputs(
    runs: Sequence[Path | str],
    out_dir: Path | str | None,
    checkpoint: str,
    images: Path | str | Sequence[str] | None = None,
    overwrite: bool = False,
) -> None:
    """Refuse export targets before any work (see ``maskstatus.outputs``): each run's own ``onnx/`` folder is
    its output; under ``--out DIR`` a file is replaced only if it is an earlier export, or with ``overwrite``."""
    inputs = [images] if isinstance(images, (str, Path)) else []
    for run in runs:
        target = onnx_path(run, checkpoint, out_dir)
        own = onnx_path(run, checkpoint)
        for path, default in ((target, own), (sidecar_path(target), sidecar_path(own))):
            check_output(
                path, command="export", inputs=inputs, own=[default], previous=is_previous_export, overwrite=overwrite
            )
