"""Proxy benchmark: train one fold of a config on the maskproxy data, predict its eval set, report.

    python benchmarks/proxy.py --config configs/proxy-cpu.yaml --fold 0 \
        --out benchmarks/results/proxy-cpu-fold0.json --submission /tmp/proxy-submission.csv

Writes a JSON with the held-out macro F1 (overall and per task, each with its 90 %
person-bootstrap interval from the run's predictions/oof.csv), training and
prediction throughput, the same model's throughput on in-memory tensors (so the
input pipeline's overhead shows), peak memory, wall time, the machine, the commit
and the command. Not run by CI: one fold takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.age import AGE_YEARS  # noqa: E402
from maskstatus.config import Config, config_to_dict, load_config  # noqa: E402
from maskstatus.data.transforms import build_transforms, output_shape  # noqa: E402
from maskstatus.scoring.oof import oof_path, read_oof  # noqa: E402
from maskstatus.infer.predict import predict  # noqa: E402
from maskstatus.scoring.score import oof_interval  # noqa: E402
from maskstatus.train.trainer import train  # noqa: E402
from maskstatus.losses import build_loss  # noqa: E402
from maskstatus.models import create_model, model_data_config  # noqa: E402
from maskstatus.optim import build_optimizer  # noqa: E402
from maskstatus.runs import RunDir, load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "maskproxy"
logger = logging.getLogger("proxy")


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
    """The report's interval keys: 90 % person-bootstrap intervals of an OOF table's F1s ([lo, hi], None if no such F1)."""
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


def add_from_run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-run", type=Path, default=None,
                   help="report on this finished run (e.g. a fold of a CV folder trained with the same config, "
                        "overrides and fold) instead of training one; the model alone is then not timed")


def fold_argv(args: argparse.Namespace, *overrides: str) -> list[str]:
    """:func:`main`'s command line for the fold that ``args`` (from :func:`add_fold_arguments`) describe."""
    epochs = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    return ["--config", str(args.config), "--fold", str(args.fold), "--out", str(args.out), "--submission",
            str(args.submission), "--data", str(args.data), "--runs", str(args.runs), *epochs, *args.overrides,
            *overrides]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_run(cfg: Config, run: RunDir) -> None:
    """Refuse to report a run trained with another config than the one named: the row would lie."""
    mine, theirs = _flat(config_to_dict(cfg)), _flat(config_to_dict(load_config(run.config)))
    # Where the data, runs and cache live, and the name, do not change what is measured.
    ignored = {"data.root", "output_dir", "cache.dir", "name", "train.progress"}
    differ = sorted(k for k in (set(mine) | set(theirs)) - ignored if mine.get(k) != theirs.get(k))
    folds = [d.get("split.folds_file") for d in (mine, theirs)]
    if "split.folds_file" in differ and all(folds) and Path(folds[0]).read_bytes() == Path(folds[1]).read_bytes():
        differ.remove("split.folds_file")  # a CV copies the folds file into its folder: the same folds
    if differ:
        raise SystemExit(f"--from-run {run.root}: trained with other settings in {differ} than "
                         f"--config and the overrides give")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fold_arguments(p)
    add_from_run_argument(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = [f"data.root={args.data}", f"split.fold={args.fold}", f"output_dir={args.runs}", *args.overrides]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.config, overrides)
    started = time.perf_counter()
    code_version = commit()  # read now: the tree may change while a long run goes on

    if args.from_run is None:
        model_only = model_only_throughput(cfg)
        logger.info("model only: %.1f images/s", model_only)
        run = RunDir(train(cfg).run_dir)
    else:
        model_only, run = None, RunDir(args.from_run)
        check_same_run(cfg, run)
    state = load_checkpoint(run.best)
    best = state["metrics"]
    history = pd.read_csv(run.metrics)

    # The CSV itself: a later tune-age on the run must not change what this report scored.
    intervals = oof_intervals(read_oof(oof_path(run.root)), cfg.model.tasks, cfg.data.mask_codes())

    t0 = time.perf_counter()
    predict([run.root], args.data / "eval", args.submission, progress=cfg.train.progress)
    predict_s = time.perf_counter() - t0
    n_eval = len(pd.read_csv(args.data / "eval" / "info.csv"))

    report = {
        "config": str(args.config),
        "fold": args.fold,
        "epochs": int(len(history)),
        "best_epoch": int(state["epoch"]),  # best.pt holds the best epoch's weights
        "oof_f1": best["f1"],
        "oof_acc": best["acc"],
        "oof_mask_f1": best["mask_f1"],
        "oof_gender_f1": best["gender_f1"],
        "oof_age_f1": best["age_f1"],
        **intervals,
        "overrides": list(args.overrides),
        "train_s": float(history["train_time_s"].sum()),
        "train_images_per_s": float(history["train_images"].sum() / history["train_time_s"].sum()),
        "model_only_train_images_per_s": model_only,
        "predict_images_per_s": n_eval / predict_s,
        "peak_memory_mb": peak_memory_mb(),
        # Above the core count, something else shared the CPU and the timings are low.
        "load_average_1m_at_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - started,
        **provenance(code_version),
        "run_dir": str(run.root),
    }
    if args.from_run is not None:
        report["reported_from_run"] = True  # trained elsewhere (e.g. by maskstatus cv); wall_s covers the report
    if torch.cuda.is_available():
        report["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
