"""Learning curve on one held-out fold: the same recipe trained on fewer people, scored on the same people.

    python benchmarks/learning_curve.py --config configs/best-cpu.yaml --folds-file FOLDS_CSV \
        --drop 1 --drop 1,2 --work /tmp/curve --out benchmarks/results/learning-curve-fold0.json \
        [--run-for all=RUN --run-for 1=RUN ...] [key=value ...]

Would a final model trained on every person (``split.holdout=false``) gain much
over a fold model? That cannot be scored out of fold, but its slope can: each
``--drop`` set of folds is left out of training entirely (a data root under
``--work`` whose train.csv lacks those people; images and eval are symlinks),
the model is trained on the rest except the held-out ``--fold``, and every size
is scored on that same fold, paired against the model trained on all the other
folds ("all"): F1 with its 90 % person-bootstrap interval, and the paired
difference with its interval. ``--run-for NAME=RUN`` reports a run already
trained with exactly that set-up instead of training it (NAME: ``all`` or a
drop set such as ``1,2``). Tens of minutes on a CPU; not run by CI.
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
from common import commit, provenance, resolved_config, write_report  # noqa: E402
from cv_ensemble import paired_gain, summary  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.folds import read_folds  # noqa: E402
from maskstatus.scoring.oof import KEY_COLUMNS, read_oof  # noqa: E402
from maskstatus.scoring.score import oof_interval  # noqa: E402
from maskstatus.train.trainer import train  # noqa: E402
from maskstatus.runs import open_run_dir  # noqa: E402

logger = logging.getLogger("learning_curve")
ALL = "all"

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


def subset_root(data_root: Path, folds: pd.DataFrame, drop: list[int], out: Path) -> Path:
    """A data root like ``data_root`` without the people of the ``drop`` folds (images and eval linked, not copied)."""
    keep = set(folds.loc[~folds["fold"].isin(drop), "person_id"])
    (out / "train").mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(data_root / "train" / "train.csv", dtype=str)
    table[table["id"].isin(keep)].to_csv(out / "train" / "train.csv", index=False)
    folds[folds["person_id"].isin(keep)].to_csv(out / "folds.csv", index=False)
    for link, target in (("train/images", data_root / "train" / "images"), ("eval", data_root / "eval")):
        if target.exists() and not (out / link).exists():
            (out / link).symlink_to(target.resolve())
    return out


def parse_drop(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",")})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--folds-file", type=Path, required=True, help="the person folds every size shares")
    p.add_argument("--fold", type=int, default=0, help="the held-out fold every size is scored on")
    p.add_argument("--drop", action="append", type=parse_drop, required=True, metavar="K[,K...]",
                   help="folds left out of training entirely (repeat for several sizes)")
    p.add_argument("--work", type=Path, required=True, help="where the subset data roots and runs go")
    p.add_argument("--run-for", action="append", default=[], metavar="NAME=RUN",
                   help="a run already trained for 'all' or a drop set (e.g. 1,2=RUN): reported, not trained")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, code_version = time.perf_counter(), commit()
    given = {}
    for item in args.run_for:
        name, _, run = item.partition("=")
        given[ALL if name == ALL else ",".join(map(str, parse_drop(name)))] = Path(run)
    for drop in args.drop:
        if args.fold in drop:
            p.error(f"--drop {drop} holds the scored fold {args.fold}")
    unknown = set(given) - {ALL, *(",".join(map(str, d)) for d in args.drop)}
    if unknown:
        p.error(f"--run-for names no size of this curve: {', '.join(sorted(unknown))} (use {ALL} or a --drop set)")

    base = load_config(args.config, [*args.overrides, f"split.folds_file={args.folds_file}", f"split.fold={args.fold}"])
    folds = read_folds(args.folds_file)
    sizes: dict[str, dict] = {}
    for drop in [[], *args.drop]:
        name = ",".join(map(str, drop)) if drop else ALL
        root = Path(base.data.root) if not drop else subset_root(Path(base.data.root), folds, drop,
                                                                  args.work / f"drop-{name.replace(',', '-')}")
        folds_file = root / "folds.csv" if drop else args.folds_file
        run = given.get(name)
        if run is None:
            cfg = load_config(args.config, [*args.overrides, f"data.root={root}", f"split.folds_file={folds_file}",
                                            f"split.fold={args.fold}", f"output_dir={args.work / 'runs'}",
                                            f"name=curve-{name.replace(',', '-')}"])
            t0 = time.perf_counter()
            run = train(cfg).run_dir
            logger.info("%s: trained in %.0f s (%s)", name, time.perf_counter() - t0, run)
        people = int((~folds["fold"].isin([args.fold, *drop])).sum())
        sizes[name] = {"dropped_folds": drop, "training_people": people, "run": str(open_run_dir(run).root)}

    oofs = {name: read_oof(s["run"]) for name, s in sizes.items()}
    keys = pd.MultiIndex.from_frame(oofs[ALL][KEY_COLUMNS])
    intervals = {name: oof_interval(oof.set_index(KEY_COLUMNS).loc[keys].reset_index(), n_boot=args.boot)
                 for name, oof in oofs.items()}
    for name, size in sizes.items():
        size.update(summary(intervals[name]))
        if name != ALL:
            size["against_all"] = paired_gain(intervals[name], intervals[ALL])
    report = {
        "config": str(args.config),
        "overrides": args.overrides,
        "folds_file": str(args.folds_file),
        "fold": args.fold,
        "scored_people": intervals[ALL].people,
        "sizes": list(sizes.values()),
        "wall_s": round(time.perf_counter() - started, 1),
        **provenance(code_version),
        # The "all" size's settings; each smaller size differs only in its data root, folds file and run name.
        "resolved_config": resolved_config(base),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
