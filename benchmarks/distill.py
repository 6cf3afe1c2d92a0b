"""Knowledge distillation benchmark: a nested-CV teacher ensemble distilled into one model, scored out of fold.

    python benchmarks/distill.py --config configs/best-cpu.yaml --fold 0 \
        --folds-file runs/proxy/best-cpu-cv-.../folds.csv \
        --out benchmarks/results/distill-fold0-128px.json --submission /tmp/distill.csv 'cache.size=[128,128]'

The student is validated on fold ``--fold`` of the outer folds, so its teacher must never have
seen those people: the teacher is a CV over the other folds only (each of its models trains on
all but one of them and predicts that one out of fold), run on a copy of the data folder whose
train.csv lists only those people (the images are linked, not copied). The student then trains
on the same people as any fold-``--fold`` run, learning ``loss.distill.weight`` of its loss from
the teacher's out-of-fold probabilities (and years), and is scored by ``benchmarks/proxy.py``.
The JSON is proxy.py's, plus the teacher (its pooled OOF F1 with interval, training time) and
``train_s_whole``, the teachers' and the student's training together. ``--teacher CV_DIR`` reuses
a teacher trained before (its time is still counted). Not run by CI: it trains K models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.folds import read_folds  # noqa: E402
from maskstatus.train.cv import CVResult, run_cv  # noqa: E402
from maskstatus.scoring.oof import read_oof  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import proxy  # noqa: E402
from proxy_cv import fold_summaries  # noqa: E402

logger = logging.getLogger("distill")

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


def nested_data(data: Path, folds_file: Path, fold: int, out: Path) -> tuple[Path, Path, int]:
    """A data folder holding only the people outside ``fold``, and their folds renumbered 0..K-2.

    Returns (data root, folds file, number of folds). train.csv is filtered; the image folder is
    a link to the original (folders not listed in train.csv are ignored by the loader).
    """
    folds = read_folds(folds_file)
    key = folds.columns[0]
    kept = sorted(set(folds["fold"].astype(int)) - {fold})
    if fold not in set(folds["fold"].astype(int)) or len(kept) < 2:
        raise ValueError(f"{folds_file}: fold {fold} must be one of at least 3 folds, got {sorted(set(folds['fold']))}")
    inner = folds[folds["fold"].astype(int) != fold].copy()
    inner["fold"] = inner["fold"].astype(int).map({f: i for i, f in enumerate(kept)})
    train_csv = pd.read_csv(data / "train" / "train.csv", dtype=str, keep_default_na=False)
    train_csv = train_csv[train_csv["id"].isin(set(inner[key].astype(str)))]
    (out / "train").mkdir(parents=True, exist_ok=True)
    train_csv.to_csv(out / "train" / "train.csv", index=False)
    link = out / "train" / "images"
    if not link.exists():
        link.symlink_to((data / "train" / "images").resolve(), target_is_directory=True)
    inner_file = out / "folds.csv"
    inner.to_csv(inner_file, index=False)
    return out, inner_file, len(kept)


def teacher_summary(result: CVResult) -> dict:
    """The teacher's pooled OOF F1 (with its intervals), its folds and training time."""
    folds, train_s, _ = fold_summaries(result)
    return {"cv_dir": str(result.cv_dir), "oof_f1": result.metrics["f1"],
            **common.oof_intervals(read_oof(result.cv_dir)), "folds": folds, "train_s": train_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_fold_arguments(p)
    p.add_argument("--folds-file", required=True, type=Path, help="the outer person folds (a run's folds.csv)")
    p.add_argument("--weight", type=float, default=0.5, help="loss.distill.weight of the student (default 0.5)")
    p.add_argument("--teacher", type=Path, default=None, metavar="CV_DIR",
                   help="a nested teacher CV folder trained before (finished folds are not trained again)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    root, inner_folds, k = nested_data(args.data, args.folds_file, args.fold, args.runs / f"nested-fold{args.fold}")
    teacher_cfg = load_config(args.config, [
        f"data.root={root}", f"output_dir={args.runs}", *args.overrides,
        *([f"train.epochs={args.epochs}"] if args.epochs is not None else []), f"split.folds={k}",
        f"split.folds_file={inner_folds}", "name=teacher", "split.fold=0"])
    result = run_cv(teacher_cfg, resume=args.teacher)
    teacher = teacher_summary(result)
    logger.info("teacher %s: pooled OOF F1 %.4f", result.cv_dir, teacher["oof_f1"])

    proxy.main(common.fold_argv(args, f"split.folds_file={args.folds_file}", f"loss.distill.teacher={result.cv_dir}",
                               f"loss.distill.weight={args.weight}"))
    report = json.loads(args.out.read_text())
    report["teacher"] = teacher
    report["train_s_whole"] = report["train_s"] + teacher["train_s"]
    common.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
