"""What the benchmark scripts share: the machine and commit a result was measured on, writing its JSON, the
resolved config it ran with, the model-only timing, OOF intervals and the arguments of one measured fold.

Each script in benchmarks/ runs as ``python benchmarks/<script>.py``, so this folder is on ``sys.path``
and they import it as ``common``. Importing it loads torch (the machine description names its version).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.age import AGE_YEARS  # noqa: E402
from maskstatus.config import Config, config_to_dict  # noqa: E402
from maskstatus.data.transforms import build_transforms, output_shape  # noqa: E402
from maskstatus.scoring.score import oof_interval  # noqa: E402
from maskstatus.losses import build_loss  # noqa: E402
from maskstatus.models import create_model, model_data_config  # noqa: E402
from maskstatus.optim import build_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "maskproxy"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def bare_model(cfg: Config) -> tuple[Fabric, torch.nn.Module, tuple[int, int]]:
    """The config's device, its model from random weights (speed does not depend on them) and its input size."""
    fabric = Fabric(accelerator=cfg.train.accelerator, devices=1, precision=cfg.train.precision)
    model = create_model(cfg.model.model_copy(update={"pretrained": False, "pretrained_path": None}))
    norm = model_data_config(model)
    hw = output_shape(build_transforms(cfg.transforms.eval, norm["mean"], norm["std"]), tuple(cfg.cache.size))[1:]
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return fabric, model, hw


def model_only_throughput(cfg: Config, steps: int = 20, warmup: int = 3) -> float:
    """Forward + backward + step of the same model on in-memory tensors of the training batch shape."""
    fabric, model, hw = bare_model(cfg)
    model.train()
    loss_fn = build_loss(cfg.loss, model.output_keys)
    optimizer = build_optimizer(model, cfg.optimizer)
    if cfg.train.compile:  # as train() does; the warmup steps pay for compiling
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)
    bs = cfg.train.batch_size
    x = torch.randn(bs, 3, *hw, device=fabric.device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    targets = {k: torch.zeros(bs, dtype=torch.long, device=fabric.device) for k in ("class", "mask", "gender", "age")}
    targets[AGE_YEARS] = torch.full((bs,), 40.0, device=fabric.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with fabric.autocast():
            out = model(x)
        loss, _ = loss_fn({k: v.float() for k, v in out.items()}, targets)
        fabric.backward(loss)
        optimizer.step()

    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0)


def oof_intervals(oof: pd.DataFrame, tasks=("mask", "gender", "age"), mask_states=(0, 1, 2)) -> dict:
    """The report's interval keys: 90 % person-bootstrap intervals of an OOF table's F1s.

    Each is [lo, hi], or None where the table has no such F1.
    """
    interval = oof_interval(oof, tasks, mask_states).to_dict()
    out = {f"oof_{prefix}f1_ci": interval["ci"][f"{prefix}f1"] for prefix in ("", "mask_", "gender_", "age_")}
    out["oof_ci"] = {k: interval[k] for k in ("level", "n_boot", "seed", "people")}
    return out


def peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux; DataLoader workers are children, count the larger.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def provenance(code_version: str, **machine_extra) -> dict:
    """The keys every benchmark JSON ends with: the machine, the commit measured and the command to rerun it."""
    return {"machine": {**machine(), **machine_extra}, "commit": code_version,
            "command": shlex.join([Path(sys.executable).name, *sys.argv])}


def write_report(report: dict, out: Path) -> None:
    """Write a benchmark's JSON (creating its folder) and print it: every benchmark script ends this way."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def add_fold_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of one measured fold, shared by the benchmarks that end in :func:`main`."""
    p.add_argument("--config", required=True, type=Path, help="maskstatus YAML config")
    p.add_argument("--fold", required=True, type=int, help="held-out fold")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--submission", required=True, type=Path, help="eval submission CSV to write")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="maskproxy folder holding train/ and eval/ (default ../shared/data/maskproxy)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "proxy", help="where the run folders go")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")


def fold_argv(args: argparse.Namespace, *overrides: str) -> list[str]:
    """:func:`main`'s command line for the fold that ``args`` (from :func:`add_fold_arguments`) describe."""
    epochs = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    return ["--config", str(args.config), "--fold", str(args.fold), "--out", str(args.out), "--submission",
            str(args.submission), "--data", str(args.data), "--runs", str(args.runs), *epochs, *args.overrides,
            *overrides]


def resolved_config(cfg: Config) -> dict[str, Any]:
    """The validated config as a plain dict, after every override: a result must name the exact settings it
    measured, since a config file's path holds another recipe once the file is edited."""
    return config_to_dict(cfg)


def run_configs(path: Path | str) -> dict[str, dict[str, Any]]:
    """The resolved config of every run that a run or CV folder stands for (its saved config.yaml), by run name.

    A result that predicts from trained runs names the exact settings they were trained with, as
    :func:`resolved_config` does for a result that trains from a config.
    """
    from maskstatus.config import load_config
    from maskstatus.runs import expand_runs
    from maskstatus.runs import RunDir

    return {run.name: resolved_config(load_config(RunDir(run).config)) for run in expand_runs([path])}
