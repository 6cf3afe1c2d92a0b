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
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    add_fold_arguments,
    commit,
    model_only_throughput,
    oof_intervals,
    peak_memory_mb,
    provenance,
    resolved_config,
    write_report,
)

from maskstatus.config import Config, config_to_dict, load_config  # noqa: E402
from maskstatus.scoring.oof import oof_path, read_oof  # noqa: E402
from maskstatus.infer.predict import predict  # noqa: E402
from maskstatus.train.trainer import train  # noqa: E402
from maskstatus.runs import RunDir, load_checkpoint  # noqa: E402

logger = logging.getLogger("proxy")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def add_from_run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-run", type=Path, default=None,
                   help="report on this finished run (e.g. a fold of a CV folder trained with the same config, "
                        "overrides and fold) instead of training one; the model alone is then not timed")


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
    # Where the data, runs and cache live, the name, and where the run was logged (tracking: a CV names
    # its group) do not change what is measured.
    ignored = {"data.root", "output_dir", "cache.dir", "name", "train.progress"}
    differ = sorted(
        k
        for k in (set(mine) | set(theirs)) - ignored
        if not k.startswith("tracking.") and mine.get(k) != theirs.get(k)
    )
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
        "resolved_config": resolved_config(cfg),
    }
    if args.from_run is not None:
        report["reported_from_run"] = True  # trained elsewhere (e.g. by maskstatus cv); wall_s covers the report
    if torch.cuda.is_available():
        report["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
