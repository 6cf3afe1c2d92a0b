"""Pooled K-fold benchmark: `maskstatus cv` of a config on the maskproxy data, its eval submission, a report.

    python benchmarks/proxy_cv.py --config configs/best-cpu.yaml \
        --out benchmarks/results/proxy-cv-best-cpu.json --submission /tmp/proxy-cv-submission.csv

Trains every fold through `run_cv` (the code path of `maskstatus cv`), or with
`--resume CV_DIR` finishes and reports a CV folder trained before (finished folds
are not trained again). Writes a JSON with the pooled out-of-fold macro F1
(overall and per task, each with its 90 % person-bootstrap interval), every
fold's best F1 and epoch, the cross-fitted F1 with age cut points tuned out of
fold (regression heads; nothing is written to the CV folder), with `--tta` the
pooled OOF predicted again with test-time augmentation (same weights), the soft-voted
eval submission's throughput, training time, the machine, the commit and the
command. Not run by CI: five folds take hours on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.age import AGE_MEAN, AGE_SIGMA  # noqa: E402
from maskstatus.config import Config, load_config  # noqa: E402
from maskstatus.scoring.age_cuts import cross_fitted_metrics, tune_age_cuts  # noqa: E402
from maskstatus.train.cv import CVResult, run_cv  # noqa: E402
from maskstatus.scoring.oof import read_oof  # noqa: E402
from maskstatus.infer.pipeline import Pipeline, load_run  # noqa: E402
from maskstatus.infer.predict import predict  # noqa: E402
from maskstatus.labels import PROB_COLUMNS  # noqa: E402
from maskstatus.scoring.metrics import model_metrics  # noqa: E402
from maskstatus.runs import RunDir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_DATA,
    REPO,
    commit,
    oof_intervals,
    peak_memory_mb,
    provenance,
    resolved_config,
    write_report,
)

logger = logging.getLogger("proxy_cv")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def fold_summaries(result: CVResult) -> tuple[list[dict], float, int]:
    """Per fold: its run folder, best score and epoch (as ``run_cv`` read them), epochs, training seconds; totals."""
    rows, train_s, images = [], 0.0, 0
    for fold, run_dir in zip(result.per_fold, result.fold_runs):
        history = pd.read_csv(RunDir(run_dir).metrics)  # for the timings, which the checkpoint does not hold
        rows.append({"fold": fold["fold"], "run_dir": str(run_dir), "epochs": fold["epochs_run"],
                     "best_epoch": fold["best_epoch"], "best_f1": fold["best_f1"],
                     "train_s": float(history["train_time_s"].sum())})
        train_s += rows[-1]["train_s"]
        images += int(history["train_images"].sum())
    return rows, train_s, images


def pooled_with_tta(result: CVResult, cfg: Config, views: list[str]) -> dict:
    """Every fold run's held-out images predicted again with TTA ``views``, pooled and scored like the plain OOF.

    The fold runs' weights are those of the plain OOF, so the difference is the TTA's alone.
    """
    parts, seconds = [], 0.0
    for run_dir in result.fold_runs:
        run = load_run(run_dir)
        oof = read_oof(run_dir)
        fabric = Fabric(accelerator="auto", devices=1, precision=run.cfg.train.precision)
        t0 = time.perf_counter()
        pipeline = Pipeline.of_runs([run], fabric)
        probs, years = pipeline.predict_files(oof["image_path"].tolist(), progress=False, tta=views)
        seconds += time.perf_counter() - t0
        oof = oof.assign(**dict(zip(PROB_COLUMNS, probs.T)))
        if years is not None:
            oof[AGE_MEAN], oof[AGE_SIGMA] = years[:, 0], years[:, 1]
        parts.append(oof)
    pooled = pd.concat(parts, ignore_index=True)
    metrics = model_metrics(pooled[PROB_COLUMNS].to_numpy(), pooled["label"].to_numpy(), cfg.model.tasks,
                            cfg.data.mask_codes())
    out = {"tta": views, "predict_s": seconds, "oof_f1": metrics["f1"], "oof_age_f1": metrics["age_f1"],
           "oof_gender_f1": metrics["gender_f1"], **oof_intervals(pooled, cfg.model.tasks, cfg.data.mask_codes())}
    if AGE_MEAN in pooled:
        out["oof_f1_tuned_cuts_cross_fitted"] = cross_fitted_metrics(pooled, cfg.data.age.thresholds())["f1"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="maskstatus YAML config")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--submission", required=True, type=Path, help="eval submission CSV to write")
    p.add_argument("--resume", type=Path, default=None, metavar="CV_DIR",
                   help="finish and report this CV folder (trained with the same config and overrides)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="maskproxy folder (train/ and eval/; default ../shared/data/maskproxy)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "proxy", help="where the CV folder goes")
    p.add_argument("--tta", action="append", default=None, metavar="NAME",
                   help="also score the pooled OOF predicted again with these TTA views (repeat for more)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, [f"data.root={args.data}", f"output_dir={args.runs}", *args.overrides])
    started = time.perf_counter()
    code_version = commit()  # read now: the tree may change while a long run goes on

    result = run_cv(cfg, resume=args.resume)
    cv_dir = result.cv_dir
    folds, train_s, train_images = fold_summaries(result)
    oof = read_oof(cv_dir)
    intervals = oof_intervals(oof, cfg.model.tasks, cfg.data.mask_codes())
    pooled = result.metrics
    tuned = None
    if cfg.model.age_output != "groups":
        t = tune_age_cuts(cv_dir, write=False)
        tuned = {"cuts": t["cuts"], "oof_f1_in_sample": t["oof_f1_tuned"],
                 "oof_f1_cross_fitted": t["oof_f1_cross_fitted"]}

    with_tta = pooled_with_tta(result, cfg, args.tta) if args.tta else None

    t0 = time.perf_counter()
    predict([cv_dir], args.data / "eval", args.submission, progress=cfg.train.progress)
    predict_s = time.perf_counter() - t0
    n_eval = len(pd.read_csv(args.data / "eval" / "info.csv"))

    report = {
        "config": str(args.config),
        "folds": folds,
        "complete": result.complete,
        "oof_images": int(len(oof)),
        "oof_f1": pooled["f1"],
        "oof_acc": pooled["acc"],
        "oof_mask_f1": pooled["mask_f1"],
        "oof_gender_f1": pooled["gender_f1"],
        "oof_age_f1": pooled["age_f1"],
        **intervals,
        "tuned_age_cuts": tuned,
        "with_tta": with_tta,
        "overrides": list(args.overrides),
        "train_s": train_s,
        "train_images_per_s": train_images / train_s if train_s else None,
        "predict_images_per_s": n_eval / predict_s,
        "predict_members": len(folds),
        "peak_memory_mb": peak_memory_mb(),
        # Above the core count, something else shared the CPU and the timings are low.
        "load_average_1m_at_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - started,
        **provenance(code_version),
        "cv_dir": str(cv_dir),
        "resolved_config": resolved_config(cfg),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
