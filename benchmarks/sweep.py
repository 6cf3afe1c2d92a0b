"""Does a small Optuna sweep on one proxy fold beat proxy-cpu.yaml at the same budget, and what does pruning save?

    python benchmarks/sweep.py --config configs/proxy-cpu.yaml --space configs/sweeps/proxy-cpu.yaml \
        --fold 0 --trials 8 --epochs 2 --limit-train-batches 60 --sweep-dir runs/sweeps/proxy-cpu-fold0 \
        --out benchmarks/results/sweep-proxy-fold0.json

Runs ``maskstatus sweep`` (the library's ``sweep``) on the maskproxy data: fold 0 held out, 96 px (the
config's), every trial ``--epochs`` epochs of at most ``--limit-train-batches`` batches (a few minutes each on
2 CPU cores), the median pruner on the per-epoch validation F1, and the config's own values of the space's keys
enqueued as trial 0: the baseline trained at the same budget. Writes the JSON (every trial's state, values and
score; epochs run against every trial run to the end; the best trial against the baseline, with a paired
person-bootstrap interval over the same held-out people; machine, command, commit, resolved configs) and copies
the sweep page with its PNGs and best.yaml into the folder named like the JSON without .json. The best trial is
chosen on the fold it is scored on, so its gain is optimistic: confirm it with ``maskstatus cv --config
best.yaml``. Rerunning the same command resumes the study in --sweep-dir. Not run by CI (tens of minutes).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd

from common import DEFAULT_DATA, REPO, commit, provenance, resolved_config, write_report
from cv_ensemble import paired_gain, summary
from maskstatus.config import load_config
from maskstatus.runs import RunDir, SweepDir
from maskstatus.scoring.oof import read_oof
from maskstatus.scoring.score import oof_interval, scored_scope
from maskstatus.sweep.results import best_config
from maskstatus.sweep.study import SweepSettings, sweep, write_outputs

logger = logging.getLogger("sweep")

KIND = "study"  # one question about one sweep; rerunning it trains the trials again

TRIAL_KEYS = ("number", "state", "params", "value", "last_reported", "intermediate", "epochs_run", "wall_s", "run_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "proxy-cpu.yaml", help="base config")
    p.add_argument("--space", type=Path, default=REPO / "configs" / "sweeps" / "proxy-cpu.yaml", help="search space")
    p.add_argument("--fold", type=int, default=0, help="held-out fold (default 0)")
    p.add_argument("--trials", type=int, default=8, help="trials in the study (default 8)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every trial (default 2)")
    p.add_argument(
        "--limit-train-batches", type=int, default=60, help="training batches per epoch, at most (default 60); 0: all"
    )
    p.add_argument("--pruner", default="median", help="median, hyperband or none (default median)")
    p.add_argument("--prune-startup", type=int, default=2, help="trials finished before any is pruned (default 2)")
    p.add_argument(
        "--sampler-startup",
        type=int,
        default=4,
        help="trials drawn at random before TPE (default 4, the baseline included)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="maskproxy folder holding train/ (default ../shared/data/maskproxy)",
    )
    p.add_argument(
        "--sweep-dir",
        type=Path,
        default=REPO / "runs" / "sweeps" / "proxy-cpu-fold0",
        help="the sweep folder (its study.db resumes a rerun)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "sweep-proxy-fold0.json",
        help="result JSON; the page, its PNGs and best.yaml go to the folder of the same name",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides of the base config")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace) -> list[str]:
    """The base config's overrides: the data, the fold and the per-trial budget, then the caller's."""
    limit = args.limit_train_batches or "null"
    # A disk cache in the sweep folder: the images are decoded once for all trials, not once per trial.
    return [
        f"data.root={args.data}",
        f"split.fold={args.fold}",
        f"train.epochs={args.epochs}",
        f"train.limit_train_batches={limit}",
        "train.progress=false",
        "cache.mode=disk",
        f"cache.dir={args.sweep_dir / 'cache'}",
        *args.overrides,
    ]


def _oof(run_dir: Path) -> pd.DataFrame:
    oof = read_oof(RunDir(run_dir).oof)
    return oof.sort_values("image_path", kind="stable").reset_index(drop=True)


def best_against_baseline(data: dict, sweep_dir: Path, scope: tuple, n_boot: int) -> dict:
    """Best trial minus the baseline (trial 0) on the held-out fold: both scored on the same people, the same
    bootstrap replicates (same seed, same people), so the interval of the difference is paired."""
    trials = {t["number"]: t for t in data["trials"]}
    baseline, best = trials.get(0), data["best"]
    if baseline is None or baseline["state"] != "COMPLETE" or best is None:
        return {"note": "no finished baseline (trial 0) or no finished trial: nothing to compare"}
    base_oof, best_oof = _oof(sweep_dir / baseline["run_dir"]), _oof(sweep_dir / best["run_dir"])
    if not base_oof["image_path"].equals(best_oof["image_path"]):
        raise SystemExit("the baseline and the best trial were scored on different images: not comparable")
    base_iv = oof_interval(base_oof, *scope, n_boot=n_boot)
    best_iv = oof_interval(best_oof, *scope, n_boot=n_boot)
    return {
        "baseline_trial": 0,
        "best_trial": best["number"],
        "baseline": summary(base_iv),
        "best": summary(best_iv),
        **paired_gain(best_iv, base_iv),
        "people": base_iv.people,
        "images": base_iv.images,
    }


def copy_outputs(sweep_dir: Path, dest: Path) -> list[str]:
    """The page, its PNGs and best.yaml, into ``dest`` (emptied first: a rerun leaves no stale picture)."""
    sweep = SweepDir(sweep_dir)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / sweep.plots.name).mkdir(parents=True)
    copied = []
    for path in [sweep.page, sweep.best, *sorted(sweep.plots.glob("*.png"))]:
        if path.is_file():
            target = dest / path.relative_to(sweep.root)
            shutil.copy2(path, target)
            copied.append(str(target.relative_to(dest)))
    return copied


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    overrides = base_overrides(args)
    base = load_config(args.config, overrides)
    settings = SweepSettings(
        out=args.sweep_dir,
        study=args.sweep_dir.name,
        n_trials=args.trials,
        pruner=args.pruner,
        prune_startup=args.prune_startup,
        sampler_startup=args.sampler_startup,
        seed=args.seed,
    )
    result = sweep(args.space, args.config, overrides, settings, enqueue_base=True)
    data = write_outputs(result.study, SweepDir(result.sweep_dir))
    comparison = best_against_baseline(data, result.sweep_dir, scored_scope(base), args.boot)
    best = best_config(result.study)
    copied = copy_outputs(result.sweep_dir, args.out.with_suffix(""))
    report = {
        "what": "an Optuna sweep of one held-out fold at a small budget, its baseline enqueued as trial 0",
        "config": str(args.config),
        "space": str(args.space),
        "space_text": args.space.read_text(encoding="utf-8"),
        "fold": args.fold,
        "trials_asked": args.trials,
        "epochs_per_trial": args.epochs,
        "limit_train_batches": args.limit_train_batches or None,
        "pruner": args.pruner,
        "prune_startup": args.prune_startup,
        "sampler_startup": args.sampler_startup,
        "objective": data["objective"],
        "counts": {k: v for k, v in data["counts"].items() if v},
        "trials": [{k: t[k] for k in TRIAL_KEYS} for t in data["trials"]],
        "epochs": data["epochs"],
        "importance": data["importance"],
        "best_vs_baseline": comparison,
        "note": "the best trial is chosen on the fold it is scored on (optimistic); the baseline is the config's "
        "own values at the sweep's budget, not the config's full training",
        "copied": copied,
        "sweep_dir": str(result.sweep_dir),
        "wall_s": time.perf_counter() - started,
        "resolved_config": resolved_config(base),
        "best_resolved_config": resolved_config(best) if best is not None else None,
        **provenance(commit()),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
