"""Thin command line over the library: parse arguments, call one function, print its result."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

logger = logging.getLogger("maskstatus")


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from .data.synthetic import make_demo_data

    data = make_demo_data(Path(args.out_dir), people=args.people, eval_people=args.eval_people, seed=args.seed)
    print(f"train: {data.train_dir}")
    print(f"eval:  {data.eval_dir}")
    print(f"eval ground truth: {data.truth_csv}")
    return 0


def _cmd_validate_data(args: argparse.Namespace) -> int:
    import pandas as pd

    from .data.layout import eval_table, train_table
    from .data.relabel import read_relabel, resolve_relabel
    from .data.validate import DataError, summarize
    from .labels import AgeThresholds

    root = Path(args.data_dir)
    relabel_path = resolve_relabel(args.relabel)
    relabel = read_relabel(relabel_path) if relabel_path else None
    failed = False
    try:
        table = train_table(
            root / "train",
            thresholds=AgeThresholds(args.young_below, args.old_from),
            relabel=relabel,
            skip_bad=args.skip_bad,
            check_images=not args.no_check_images,
        )
    except DataError as err:
        print(err, file=sys.stderr)
        failed = True
    else:
        summary = summarize(table, AgeThresholds(args.young_below, args.old_from))
        with pd.option_context("display.max_rows", 100, "display.width", 120):
            print(summary.to_string(index=False))
        print(f"train: {summary.attrs['people']} people, {summary.attrs['images']} images")
    if (root / "eval").exists():
        try:
            ev = eval_table(root / "eval", skip_bad=args.skip_bad, check_images=not args.no_check_images)
        except DataError as err:
            print(err, file=sys.stderr)
            failed = True
        else:
            print(f"eval: {len(ev)} images")
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.train import train

    from .runs import open_run_dir

    if (args.resume is None) == (args.config is None):
        raise SystemExit("train: give either --config FILE or --resume RUN_DIR")
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else [])]
    # A resumed run starts from its own saved config; overrides then change its train section (e.g. epochs).
    cfg = load_config(args.config if args.resume is None else open_run_dir(args.resume).config, overrides)
    result = train(cfg, resume=args.resume)
    if result is not None and result.is_global_zero:
        print(f"best val macro F1 {result.best_f1:.4f} at epoch {result.best_epoch}")
        print(f"run folder: {result.run_dir}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import predict

    sub, probs = predict(
        args.run,
        Path(args.data),
        Path(args.out),
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        num_workers=args.num_workers,
    )
    print(f"submission: {sub}")
    print(f"probabilities: {probs}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    result = run_demo(Path(args.out), people=args.people, seed=args.seed, overrides=args.overrides)
    print(f"validation macro F1: {result.val_f1:.4f}")
    print(f"eval macro F1 (against the demo ground truth): {result.eval_f1:.4f}  accuracy {result.eval_acc:.4f}")
    print(f"submission: {result.submission}")
    print(f"run folder: {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskstatus",
        description="Mask-wearing status, gender and age group from face photos (18 classes, macro F1).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo-data", help="draw a small synthetic data set in the competition layout")
    s.add_argument("out_dir", metavar="OUT_DIR", help="writes OUT_DIR/train, OUT_DIR/eval and OUT_DIR/eval_truth.csv")
    s.add_argument("--people", type=int, default=120, help="training people, 7 images each (default 120)")
    s.add_argument("--eval-people", type=int, default=None, help="eval people (default: half of --people)")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed draws the same data")
    s.set_defaults(fn=_cmd_demo_data)

    s = sub.add_parser("validate-data", help="check a data folder; print a summary; exit 1 on any problem")
    s.add_argument("data_dir", metavar="DATA_DIR", help="folder holding train/ and optionally eval/")
    s.add_argument("--relabel", default=None, help="relabel CSV to apply, or 'competition' for the shipped fixes")
    s.add_argument("--young-below", type=int, default=30, help="age group 0 is age < this (default 30)")
    s.add_argument("--old-from", type=int, default=60, help="age group 2 is age >= this (default 60)")
    s.add_argument("--no-check-images", action="store_true", help="skip decoding every image (faster)")
    s.add_argument("--skip-bad", action="store_true",
                   help="report problems as warnings and summarise what is left (exit 0 unless nothing is left)")
    s.set_defaults(fn=_cmd_validate_data)

    s = sub.add_parser("train", help="train one fold; prints the run folder")
    s.add_argument("--config", type=Path, default=None, help="YAML config (see configs/)")
    s.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint, with its saved config (train.epochs=N extends it)")
    s.add_argument("--skip-bad", action="store_true",
                   help="leave bad files and rows out with a warning instead of stopping (data.skip_bad=true)")
    s.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. data.root=DIR train.epochs=3 model.backbone=resnet18")
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("predict", help="predict eval images (or any image folder) with one or more runs")
    s.add_argument("--run", action="append", required=True, metavar="RUN_DIR",
                   help="run folder; repeat to soft-vote several runs")
    s.add_argument("--data", required=True, metavar="EVAL_DIR",
                   help="competition eval folder (info.csv + images/) or any folder of images")
    s.add_argument("--out", required=True, metavar="FILE.csv",
                   help="submission file; the 18 class probabilities go to FILE.probs.csv beside it")
    s.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    s.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
    s.add_argument("--accelerator", default="auto", help="cpu, cuda, auto (default auto)")
    s.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("demo", help="demo data -> train -> predict -> score, on CPU in a few minutes")
    s.add_argument("--out", default="demo", help="folder for the demo data, run and submission (default ./demo)")
    s.add_argument("--people", type=int, default=120, help="training people in the demo data (default 120)")
    s.add_argument("--seed", type=int, default=0, help="demo data seed")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for the demo run")
    s.set_defaults(fn=_cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .config import ConfigError
    from .data.validate import DataError

    try:
        return args.fn(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
