"""Thin command line over the library: parse arguments, call one function, print its result.

Each command is two functions side by side: ``_add_<command>`` declares its options (defaults and choices are the
library's, from ``defaults`` and ``choices``) and ``_cmd_<command>`` runs it. ``build_parser`` lists the commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Only torch-free modules at the top: each command checks its config and arguments, then imports the library's heavy
# modules (torch, timm, albumentations: seconds), so a typo is answered at once (tests/test_cli_fast.py). Option
# defaults and choices are the library's constants, from ``defaults`` and ``choices``, which import nothing heavy.
from . import defaults
from .choices import (
    ACCELERATORS,
    BACKENDS,
    CHECKPOINTS,
    LABEL_ERROR_RANKERS,
    PREDICT_PRECISIONS,
    PRUNERS,
    TTA_NAMES,
    VOTES,
)

if TYPE_CHECKING:
    from .config import Config
    from .train.cv import CVResult

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

logger = logging.getLogger("maskstatus")


def _add_demo_data(sub: Subparsers) -> None:
    s = sub.add_parser("demo-data", help="draw a small synthetic data set in the competition layout")
    s.add_argument("out_dir", metavar="OUT_DIR", help="writes OUT_DIR/train, OUT_DIR/eval and OUT_DIR/eval_truth.csv")
    s.add_argument(
        "--people", type=int, default=defaults.DEMO_PEOPLE, help="training people, 7 images each (default %(default)s)"
    )
    s.add_argument("--eval-people", type=int, default=None, help="eval people (default: half of --people)")
    s.add_argument(
        "--seed", type=int, default=defaults.DEFAULT_SEED, help="random seed; the same seed draws the same data"
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR's train/, eval/ and eval_truth.csv if they exist (default: refuse)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=defaults.DEMO_WORKERS,
        help="processes drawing the photos (default %(default)s); any number draws the same bytes",
    )
    s.set_defaults(fn=_cmd_demo_data)


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from .data.synthetic import make_demo_data
    from .errors import UsageError

    try:
        data = make_demo_data(
            Path(args.out_dir),
            people=args.people,
            eval_people=args.eval_people,
            seed=args.seed,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    except FileExistsError:
        raise UsageError(
            f"{args.out_dir} already holds a data set (train/, eval/ or eval_truth.csv); "
            "add --overwrite to replace them, or give another OUT_DIR"
        ) from None
    print(f"train: {data.train_dir}")
    print(f"eval:  {data.eval_dir}")
    print(f"eval ground truth: {data.truth_csv}")
    return 0


def _add_validate_data(sub: Subparsers) -> None:
    s = sub.add_parser("validate-data", help="check a data folder; print a summary; exit 1 on any problem")
    s.add_argument("data_dir", metavar="DATA_DIR", help="folder holding train/ and optionally eval/")
    s.add_argument("--relabel", default=None, help="relabel CSV to apply, or 'competition' for the shipped fixes")
    _add_age_groups(s)
    s.add_argument("--no-check-images", action="store_true", help="skip decoding every image (faster)")
    s.add_argument(
        "--skip-bad",
        action="store_true",
        help="report problems as warnings and summarise what is left (exit 0 unless nothing is left)",
    )
    s.set_defaults(fn=_cmd_validate_data)


def _add_age_groups(s: argparse.ArgumentParser) -> None:
    """--young-below and --old-from: shared by validate-data and eda."""
    s.add_argument(
        "--young-below", type=int, default=defaults.YOUNG_BELOW, help="age group 0 is age < this (default %(default)s)"
    )
    s.add_argument(
        "--old-from", type=int, default=defaults.OLD_FROM, help="age group 2 is age >= this (default %(default)s)"
    )


def _cmd_validate_data(args: argparse.Namespace) -> int:
    import pandas as pd

    from .data.relabel import read_relabel, resolve_relabel
    from .data.tables import eval_table, train_table
    from .data.validate import summarize
    from .errors import DataError
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


def _add_train(sub: Subparsers) -> None:
    s = sub.add_parser("train", help="train one fold; prints the run folder")
    s.add_argument("--config", type=Path, default=None, help="YAML config (see configs/)")
    _add_config_or_resume(
        s,
        "RUN_DIR",
        "continue RUN_DIR from its last checkpoint, with its saved config (train.epochs=N extends it)",
        "data.root=DIR train.epochs=3 model.backbone=resnet18",
    )
    s.set_defaults(fn=_cmd_train)


def _add_config_or_resume(s: argparse.ArgumentParser, folder: str, resume_help: str, example: str) -> None:
    """train's and cv's way to a config: --config FILE or --resume FOLDER, --skip-bad, then key=value overrides."""
    s.add_argument("--resume", type=Path, default=None, metavar=folder, help=resume_help)
    s.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave bad files and rows out with a warning instead of stopping (data.skip_bad=true)",
    )
    s.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")


def _config_or_resume(
    args: argparse.Namespace, folder: str, config_file: str, check_folder: Callable[[Path], object] | None = None
) -> Config:
    """The config train or cv runs with: --config FILE with the overrides, or the ``config_file`` saved in the
    folder --resume names (``check_folder`` refuses a folder that is not one), whose train section alone the
    overrides may change."""
    from .config import load_config

    if (args.resume is None) == (args.config is None):
        raise SystemExit(f"{args.command}: give either --config FILE or --resume {folder}")
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else [])]
    if args.resume is None:
        return load_config(args.config, overrides)
    saved = args.resume / config_file
    _check_resume_overrides(overrides, str(saved))  # first: a wrong override is the mistake to name
    if check_folder is not None:
        check_folder(args.resume)
    return load_config(saved, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from .runs import RUN_CONFIG, open_run_dir

    cfg = _config_or_resume(args, "RUN_DIR", RUN_CONFIG, open_run_dir)
    from .train.trainer import train  # after the config is checked (see the top of this file)

    result = train(cfg, resume=args.resume)
    if result is not None and result.is_global_zero:
        if cfg.split.holdout:
            print(f"best val macro F1 {result.best_f1:.4f} at epoch {result.best_epoch}")
        else:
            print(f"trained on every person (split.holdout=false): best.pt holds epoch {result.best_epoch}")
        print(f"run folder: {result.run_dir}")
    return 0


def _check_resume_overrides(overrides: Sequence[str], saved_config: str) -> None:
    """A resume keeps the saved config but its train section: refuse overrides it would silently ignore."""
    from .config import ConfigError, parse_override

    ignored = [".".join(key) for key, _ in map(parse_override, overrides) if key[0] != "train"]
    if ignored:
        raise ConfigError(
            f"--resume continues with the saved config ({saved_config}) and takes overrides of train.* keys only "
            f"(e.g. train.epochs=N to extend it); these would be ignored: {', '.join(ignored)}. To change them, "
            f"start a new run: --config {saved_config} KEY=VALUE ..."
        )


def _fold_list_arg(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold numbers like 0,1,2, got {text!r}") from None


def _positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of workers (0 or more) or 'auto', got {text!r}")
    return value


def _add_cv(sub: Subparsers) -> None:
    s = sub.add_parser(
        "cv",
        help="train every fold on one shared split; prints per-fold and out-of-fold F1 and the CV folder",
        description="Make the person -> fold split once, train one run per fold on it, pool the held-out "
        "predictions into CV_DIR/oof.csv and score them (CV_DIR/cv_metrics.json). The CV folder works as "
        "predict --run CV_DIR (its fold runs are soft-voted). Folds trained apart (other machines) from one "
        "folds.csv (--write-folds) are joined by maskstatus cv merge.",
    )
    s.add_argument("--config", type=Path, default=None, help="YAML config (see configs/); split.folds sets K")
    s.add_argument(
        "--folds",
        type=_fold_list_arg,
        default=None,
        metavar="0,1,...",
        help="train only these folds (default: all of split.folds); the OOF pools every finished fold",
    )
    _add_fold_sharing(s)
    _add_config_or_resume(
        s,
        "CV_DIR",
        "continue CV_DIR with its saved config and split: finished folds are skipped, an interrupted "
        "fold continues from its last checkpoint (train.epochs=N extends every fold)",
        "data.root=DIR split.folds=5 train.epochs=3",
    )
    s.set_defaults(fn=_cmd_cv)


def _add_fold_sharing(s: argparse.ArgumentParser) -> None:
    """cv's ways to train folds apart: at once on one machine, or on several from one written split."""
    s.add_argument(
        "--parallel-folds",
        type=_positive_int_arg,
        default=None,
        metavar="N",
        help="train N folds at once into the one CV folder, each by its own worker process on its own GPU "
        "(on CPU they share the cores); each fold's output goes to CV_DIR/logs/fold<K>.log",
    )
    s.add_argument(
        "--write-folds",
        type=Path,
        default=None,
        metavar="FILE",
        help="only write the person -> fold split of --config to FILE (a new file) and stop: train folds of "
        "it on several machines with --folds ... split.folds_file=FILE, then merge them with cv merge",
    )


def _cmd_cv(args: argparse.Namespace) -> int:
    from .runs import CV_CONFIG

    if args.write_folds is not None:
        return _write_folds(args)
    cfg = _config_or_resume(args, "CV_DIR", CV_CONFIG)
    if args.parallel_folds is not None:
        from .train.parallel import run_cv_parallel  # after the config is checked (see the top of this file)

        # A resume's train.* overrides are not saved in cv_config.yaml: every worker needs them too.
        overrides = args.overrides if args.resume is not None else ()
        result = run_cv_parallel(cfg, args.parallel_folds, args.folds, args.resume, overrides)
    else:
        from .train.cv import run_cv

        result = run_cv(cfg, folds=args.folds, resume=args.resume)
    _print_cv(result)
    return 0


def _write_folds(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import UsageError

    if args.config is None or args.resume is not None or args.folds is not None or args.parallel_folds is not None:
        raise UsageError("cv --write-folds FILE takes --config (and overrides) only: it writes the split and stops")
    if args.write_folds.exists():
        raise UsageError(f"--write-folds {args.write_folds}: already exists (folds trained from it would change)")
    cfg = load_config(args.config, [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else [])])
    from .runs import atomic_write_csv
    from .train.cv import make_cv_folds

    folds = make_cv_folds(cfg)
    atomic_write_csv(folds, args.write_folds)
    print(f"wrote {args.write_folds}: {len(folds)} {folds.columns[0]}s in {cfg.split.folds} folds")
    again = f"maskstatus cv --config {args.config} --folds 0,1 split.folds_file={args.write_folds}"
    print(f"train folds of it with: {again}")
    return 0


def _print_cv(result: CVResult) -> None:
    if not result.is_global_zero:  # one process of several (DDP): rank 0 prints the result
        return
    for f in result.per_fold:
        print(f"fold {f['fold']}: best val macro F1 {f['best_f1']:.4f} at epoch {f['best_epoch']} ({f['run']})")
    m = result.metrics
    done = "" if result.complete else f" (folds {[f['fold'] for f in result.per_fold]} only)"
    ci = result.ci

    def with_ci(key: str) -> str:
        return f"{m[key]:.4f}" + (f" [{ci[key][0]:.4f}, {ci[key][1]:.4f}]" if ci.get(key) else "")

    print(f"OOF macro F1 {with_ci('f1')}  accuracy {with_ci('acc')}{done}")
    print(f"OOF per task F1: mask {with_ci('mask_f1')}  gender {with_ci('gender_f1')}  age {with_ci('age_f1')}")
    if ci:
        print(
            f"(in brackets: {ci['level']:.0%} intervals over {ci['people']} people resampled, {ci['n_boot']} replicates)"
        )
    if m["score"] != m["f1"]:
        print(f"OOF score (mean F1 of the tasks this model predicts, on its mask states): {m['score']:.4f}")
    print(f"cv folder: {result.cv_dir}")


def _add_cv_merge(sub: Subparsers) -> None:
    # Named "cv merge", two words on the command line (see _Parser): cv's key=value overrides take any word, so a
    # subcommand nested under cv could not be told from an override, and one level of commands keeps the parser,
    # its snapshot and its reference flat.
    s = sub.add_parser(
        "cv merge",
        help="join CV folders whose folds were trained apart (other machines) into one CV folder",
        description="Check that the CV folders were trained on the same folds.csv and config (but the keys that "
        "may differ between machines: where files are and how fast they train), that each fold run finished and "
        "no fold finished twice; then write --out as one CV folder (config, folds.csv, the fold runs, the pooled "
        "oof.csv and cv_metrics.json) that predict, ensemble, find-label-errors, tune-age and report take.",
    )
    s.add_argument("cv_dirs", nargs="+", type=Path, metavar="CV_DIR", help="CV folders to merge")
    s.add_argument("--out", type=Path, required=True, metavar="MERGED", help="the new CV folder to write")
    s.add_argument(
        "--move",
        action="store_true",
        help="move the fold runs instead of copying them (default: copy, leaving the CV folders as they were)",
    )
    s.set_defaults(fn=_cmd_cv_merge)


def _cmd_cv_merge(args: argparse.Namespace) -> int:
    from .train.cv_merge import merge_cvs

    result = merge_cvs(args.cv_dirs, args.out, move=args.move)
    _print_cv(result)
    return 0


def _add_sweep(sub: Subparsers) -> None:
    s = sub.add_parser(
        "sweep",
        help="search hyperparameters with Optuna: every trial a run folder, pruned on the per-epoch F1",
        description="Draw values of config keys from a search-space YAML (float, log-float, int or categorical per "
        "dotted key), train each trial as `maskstatus train` would (a run folder under SWEEP_DIR/trials/), score it "
        "by its best validation macro F1 on the held-out fold (--cv: a CV's pooled OOF F1) and prune poor trials "
        "epoch by epoch. Workers that name the same --storage and --study share one study; rerunning the command "
        "resumes it. Writes SWEEP_DIR/sweep.json, the page SWEEP_DIR/index.html and SWEEP_DIR/best.yaml "
        "(for maskstatus cv --config).",
    )
    s.add_argument("--config", type=Path, default=None, help="base YAML config (see configs/), as train takes it")
    s.add_argument("--space", type=Path, default=None, metavar="FILE.yaml", help="search space (see configs/sweeps/)")
    s.add_argument(
        "--out", type=Path, default=None, metavar="SWEEP_DIR", help="sweep folder (default sweeps/<study name>)"
    )
    s.add_argument("--study", default=None, help="study name, shared by its workers (default: the space file's name)")
    s.add_argument(
        "--storage",
        default=None,
        help="where the study lives: journal:FILE (a shared filesystem; also any path ending in .log or .jsonl), "
        "sqlite:///FILE, or a postgresql:// or mysql:// URL (several machines) (default: SWEEP_DIR/study.db)",
    )
    _add_sweep_budget(s)
    _add_sweep_pruning(s)
    s.add_argument(
        "--page",
        type=Path,
        default=None,
        metavar="SWEEP_DIR",
        help="only write SWEEP_DIR's sweep.json, best.yaml and page again from its study (and --storage, --study)",
    )
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the base config")
    s.set_defaults(fn=_cmd_sweep)


def _add_sweep_budget(s: argparse.ArgumentParser) -> None:
    """How many trials, how long, scored how, and where the sampler starts."""
    s.add_argument(
        "--trials",
        type=_positive_int_arg,
        default=defaults.SWEEP_TRIALS,
        help="trials in the study, counting every worker's and failed ones (default %(default)s)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after this long (default: none)",
    )
    s.add_argument(
        "--cv",
        action="store_true",
        help="score each trial by a CV of all split.folds (pooled OOF F1; "
        "pruned between folds) instead of one held-out fold",
    )
    s.add_argument(
        "--seed", type=int, default=None, help="seed of the sampler (default: random; give each worker its own)"
    )
    s.add_argument(
        "--enqueue-base",
        action="store_true",
        help="make the base config's own values the first trial: the baseline at the sweep's budget",
    )


def _add_sweep_pruning(s: argparse.ArgumentParser) -> None:
    """Which trials stop early, and when TPE takes over from random draws."""
    s.add_argument(
        "--pruner",
        choices=PRUNERS,
        default=defaults.SWEEP_PRUNER,
        help="median: stop a trial whose epoch's F1 is below the median of earlier trials at that epoch; "
        "hyperband; none (default %(default)s)",
    )
    s.add_argument(
        "--prune-startup",
        type=_workers_arg_int,
        default=defaults.SWEEP_PRUNE_STARTUP,
        help="trials that finish before any is pruned (median; default %(default)s)",
    )
    s.add_argument(
        "--prune-warmup",
        type=_workers_arg_int,
        default=defaults.SWEEP_PRUNE_WARMUP,
        help="epochs every trial trains before it can be pruned (default %(default)s)",
    )
    s.add_argument(
        "--sampler-startup",
        type=_workers_arg_int,
        default=defaults.SWEEP_SAMPLER_STARTUP,
        help="trials drawn at random before TPE models the results (default %(default)s)",
    )


def _workers_arg_int(text: str) -> int:
    """A count of 0 or more."""
    value = _workers_arg(text)
    if not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return value


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .extras import require

    require("sweep", "maskstatus sweep", ["optuna"])  # psycopg2 only for a PostgreSQL --storage
    if args.storage and args.storage.startswith("postgres"):
        require("sweep", "maskstatus sweep --storage postgresql://", ["psycopg2"])
    if args.page is not None:
        if args.config or args.space or args.overrides:
            raise SystemExit("sweep --page takes a sweep folder (and --storage/--study) only")
        from .runs import SweepDir
        from .sweep.study import load_study, write_outputs

        sweep_dir = SweepDir(args.page)
        data = write_outputs(load_study(args.page, args.storage, args.study), sweep_dir)
        _print_sweep(data, sweep_dir)
        return 0
    if args.config is None or args.space is None:
        raise SystemExit("sweep: give --config FILE and --space FILE (or --page SWEEP_DIR)")
    from .sweep.space import check_space, read_space

    # The space and every value it reaches are checked before optuna and torch are imported.
    check_space(read_space(args.space), args.config, args.overrides)
    from .runs import SweepDir
    from .sweep.study import SweepSettings, sweep

    study = args.study or args.space.stem
    settings = SweepSettings(
        out=args.out or Path("sweeps") / study,
        study=study,
        n_trials=args.trials,
        storage=args.storage,
        timeout=args.timeout,
        cv=args.cv,
        pruner=args.pruner,
        prune_startup=args.prune_startup,
        prune_warmup=args.prune_warmup,
        sampler_startup=args.sampler_startup,
        seed=args.seed,
    )
    result = sweep(args.space, args.config, args.overrides, settings, enqueue_base=args.enqueue_base)
    print(f"this worker ran {result.ran} trial(s)")
    from .sweep.study import write_outputs

    _print_sweep(write_outputs(result.study, SweepDir(result.sweep_dir)), SweepDir(result.sweep_dir))
    return 0


def _print_sweep(data: dict, sweep_dir) -> None:
    c = data["counts"]
    print(
        f"study {data['study']}: {len(data['trials'])} trials, {c['COMPLETE']} finished, {c['PRUNED']} pruned, "
        f"{c['FAIL']} failed, {c['RUNNING']} running"
    )
    best = data["best"]
    if best is not None:
        print(f"best: trial {best['number']} {best['value']:.4f} ({' '.join(best['param_overrides'])})")
        print(f"best config: {sweep_dir.best}  (maskstatus cv --config {sweep_dir.best})")
    print(f"sweep page: {sweep_dir.page}")


def _add_predict(sub: Subparsers) -> None:
    s = sub.add_parser("predict", help="predict eval images (or any image folder) with one or more runs")
    s.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="RUN_DIR",
        help="run folder, or CV folder (the mean of its fold runs); repeat to soft-vote several",
    )
    s.add_argument(
        "--data",
        required=True,
        metavar="EVAL_DIR",
        help="competition eval folder (info.csv + images/) or any folder of images",
    )
    s.add_argument(
        "--out",
        required=True,
        metavar="FILE.csv",
        help="submission file; the 18 class probabilities go to FILE.probs.csv beside it",
    )
    _add_overwrite(s, "FILE.csv and FILE.probs.csv")
    _add_prediction_options(s)
    s.set_defaults(fn=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .outputs import check_prediction_output

    options = _prediction_options(args)
    # Here too, not only in predict(): a refused --out is answered before torch is imported.
    check_prediction_output(args.out, [*args.run, args.data], args.overwrite)
    from .infer.predict import predict  # after the arguments are checked (see the top of this file)

    sub, probs = predict(
        args.run,
        Path(args.data),
        Path(args.out),
        overwrite=args.overwrite,
        **options,
    )
    print(f"submission: {sub}")
    print(f"probabilities: {probs}")
    return 0


def _add_export(sub: Subparsers) -> None:
    s = sub.add_parser(
        "export",
        help="export a run (or every fold run of a CV folder) to ONNX, checked against PyTorch",
        description="Write <checkpoint>.onnx (dynamic batch axis) and a <checkpoint>.json sidecar (input size, "
        "normalisation, outputs and their meaning, age cut points, the run's TTA, the check) into "
        "RUN/onnx/ of each run. Each export is compared with PyTorch on images of the run's data "
        "(the paths in its predictions/oof.csv), else on --images, and refused if they differ beyond "
        "--tolerance. predict --backend onnx then uses these files.",
    )
    s.add_argument("run", metavar="RUN_OR_CV_DIR", help="run folder, or CV folder (every fold run is exported)")
    s.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write to DIR/<run name>/ instead of each run's onnx/ folder (then predict --backend onnx --onnx-dir DIR)",
    )
    _add_checkpoint(s)
    s.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="images to check the export on when the run's predictions/oof.csv lists none found here",
    )
    s.add_argument(
        "--tolerance",
        type=float,
        default=defaults.EXPORT_TOLERANCE,
        help="largest allowed difference to PyTorch in probabilities and (relative) outputs "
        f"(default {defaults.EXPORT_TOLERANCE:g})",
    )
    _add_overwrite(s, "the files under --out DIR")
    s.set_defaults(fn=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .extras import require

    require("onnx", "maskstatus export")  # before torch is imported (see the top of this file)
    from .infer.export import export

    for result in export(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        images=args.images,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    ):
        c = result.check
        print(
            f"{result.onnx} ({result.seconds:.1f} s): {c['images']} check images, largest difference to PyTorch "
            f"{c['max_prob_diff']:.2g} in probabilities, same class on {c['class_agreement']:.1%}"
        )
        print(f"  sidecar: {result.sidecar}")
    return 0


def _prediction_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``predict`` that ``_add_prediction_options`` parsed, checked (without torch)."""
    from .choices import check_backend

    check_backend(args.backend, args.accelerator, args.precision)
    if args.data is not None:  # ensemble predicts (and uses the backend) only with --data
        _require_backend(args)
    return {
        "checkpoint": args.checkpoint,
        "batch_size": args.batch_size,
        "accelerator": args.accelerator,
        "num_workers": args.num_workers,
        "tta": _tta_arg(args.tta),
        "backend": args.backend,
        "onnx_dir": args.onnx_dir,
        "group_people": args.group_people,
        "precision": args.precision,
    }


def _require_backend(args: argparse.Namespace) -> None:
    """--backend onnx needs ONNX Runtime, from the onnx extra: say so before torch is imported."""
    from .extras import require

    if args.backend == "onnx":
        require("onnx", f"maskstatus {args.command} --backend onnx", ["onnxruntime"])


def _tta_arg(values: list[str] | None) -> list[str] | None:
    """--tta given repeatedly -> list; not given -> None (each run's predict.tta); 'none' -> no TTA."""
    if values is None:
        return None
    if "none" in values:
        if len(values) > 1:
            raise SystemExit("--tta none cannot be combined with other --tta values")
        return []
    return values


def _weights_arg(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2,1, got {text!r}") from None


def _add_ensemble_outputs(s: argparse.ArgumentParser) -> None:
    """ensemble's outputs: its OOF file, and a submission when it also predicts a folder."""
    s.add_argument(
        "--out-oof",
        default=None,
        metavar="FILE.csv",
        help="write the ensemble's OOF probabilities (the columns of a run's oof.csv)",
    )
    s.add_argument(
        "--data",
        default=None,
        metavar="EVAL_DIR",
        help="also predict this eval folder (or any folder of images), as predict does; needs --out",
    )
    s.add_argument(
        "--out",
        default=None,
        metavar="FILE.csv",
        help="submission file for --data; the probabilities go to FILE.probs.csv beside it",
    )


def _add_ensemble(sub: Subparsers) -> None:
    s = sub.add_parser("ensemble", help="score an ensemble of runs out of fold; optionally predict eval images with it")
    s.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="DIR",
        help="run folder or CV folder (its oof.csv out of fold, the mean of its fold runs on eval); "
        "repeat for each member",
    )
    s.add_argument(
        "--weights",
        type=_weights_arg,
        default=None,
        metavar="W1,W2,...",
        help="one weight >= 0 per --run, in order (default: equal)",
    )
    s.add_argument(
        "--vote",
        choices=VOTES,
        default=defaults.DEFAULT_VOTE,
        help="soft: weighted mean of probabilities; hard: weighted majority of argmax classes, "
        "ties to the larger summed probability (default %(default)s)",
    )
    _add_ensemble_outputs(s)
    _add_overwrite(s, "the --out and --out-oof files")
    _add_prediction_options(s, only_with="--data")
    s.set_defaults(fn=_cmd_ensemble)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    if (args.data is None) != (args.out is None):
        raise SystemExit("ensemble: give --data and --out together")
    options = _prediction_options(args)
    # After the arguments are checked (see the top of this file).
    from .infer.ensemble import ensemble_oof
    from .infer.predict import predict
    from .outputs import check_distinct, check_output, check_prediction_output, probs_path_for
    from .runs import OOF, PREDICTIONS, atomic_write_csv
    from .scoring.oof import is_oof_csv, oof_path
    from .scoring.score import oof_interval

    # Every output is checked before the OOF is scored or an image predicted.
    inputs = [*args.run, *([args.data] if args.data is not None else [])]
    if args.out_oof:
        check_output(
            args.out_oof,
            command="ensemble",
            option="--out-oof",
            inputs=inputs,
            previous=is_oof_csv,
            overwrite=args.overwrite,
        )
    if args.out is not None:
        check_prediction_output(args.out, inputs, args.overwrite, command="ensemble")
        if args.out_oof:
            check_distinct(
                [
                    ("--out-oof", args.out_oof),
                    ("--out", args.out),
                    (f"--out {args.out}: its probabilities file", probs_path_for(args.out)),
                ]
            )
    missing = []
    for run in args.run:
        try:
            oof_path(run)
        except FileNotFoundError:
            missing.append(run)
    if missing and (args.out_oof or args.data is None):
        raise FileNotFoundError(f"no out-of-fold predictions ({OOF} or {PREDICTIONS}/{OOF}) in: {', '.join(missing)}")
    if missing:
        print(f"no OOF score: no out-of-fold predictions in {', '.join(missing)}")
    else:
        oof, _ = ensemble_oof(args.run, args.weights, args.vote)
        scores = oof_interval(oof)  # scored as score, cv and report score: the same F1 and default level
        m, ci = scores.point, scores.ci

        def with_ci(key: str) -> str:
            return f"{m[key]:.4f} [{ci[key][0]:.4f}, {ci[key][1]:.4f}]"

        print(f"OOF images scored: {len(oof)}")
        print(f"OOF macro F1 {with_ci('f1')}  accuracy {with_ci('acc')}")
        print(f"OOF per task F1: mask {with_ci('mask_f1')}  gender {with_ci('gender_f1')}  age {with_ci('age_f1')}")
        print(
            f"(in brackets: {scores.level:.0%} intervals over {scores.people} people resampled, "
            f"{scores.n_boot} replicates)"
        )
        if args.out_oof:
            atomic_write_csv(oof, Path(args.out_oof), float_format="%.6f")
            print(f"OOF probabilities: {args.out_oof}")
    if args.data is not None:
        sub, probs = predict(
            args.run,
            Path(args.data),
            Path(args.out),
            weights=args.weights,
            vote=args.vote,
            overwrite=args.overwrite,
            **options,
        )
        print(f"submission: {sub}")
        print(f"probabilities: {probs}")
    return 0


def _add_pseudo_label(sub: Subparsers) -> None:
    s = sub.add_parser(
        "pseudo-label",
        help="eval predictions per fold from teacher CV folders, for a CV with pseudo labels "
        "(data.pseudo.probs=DIR/fold{fold}.probs.csv) that never leaks held-out people",
    )
    s.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="CV_DIR",
        help="a CV folder; repeat to soft-vote several (they must share one fold assignment)",
    )
    s.add_argument("--data", required=True, metavar="EVAL_DIR", help="the eval folder to predict")
    s.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes DIR/fold<k>.csv, DIR/fold<k>.probs.csv and DIR/folds.csv (the teachers' folds)",
    )
    s.add_argument("--folds", type=_fold_list_arg, default=None, metavar="0,1,...", help="default: every fold")
    _add_overwrite(s, "the files in DIR")
    _add_prediction_options(s)
    s.set_defaults(fn=_cmd_pseudo_label)


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    options = _prediction_options(args)
    from .train.pseudo_label import FOLDS_COPY, fold_teacher_probs  # after the arguments are checked

    files = fold_teacher_probs(
        args.teacher, Path(args.data), Path(args.out), folds=args.folds, overwrite=args.overwrite, **options
    )
    for f in files:
        print(f"teacher probabilities: {f}")
    out = Path(args.out)
    print("train the student CV on them with:")
    print(f"  data.pseudo.probs={out / 'fold{fold}.probs.csv'} split.folds_file={out / FOLDS_COPY}")
    return 0


def _add_demo(sub: Subparsers) -> None:
    s = sub.add_parser("demo", help="demo data -> train -> predict -> score, on CPU in a few minutes")
    s.add_argument(
        "--out", default=defaults.DEMO_DIR, help="folder for the demo data, run and submission (default ./%(default)s)"
    )
    s.add_argument(
        "--people",
        type=int,
        default=defaults.DEMO_PEOPLE,
        help="training people in the demo data (default %(default)s)",
    )
    s.add_argument("--seed", type=int, default=defaults.DEFAULT_SEED, help="demo data seed")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for the demo run")
    s.set_defaults(fn=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .train.demo import run_demo

    result = run_demo(Path(args.out), people=args.people, seed=args.seed, overrides=args.overrides)
    print(f"validation macro F1: {result.val_f1:.4f}")
    print(f"eval macro F1 (against the demo ground truth): {result.eval_f1:.4f}  accuracy {result.eval_acc:.4f}")
    print(f"submission: {result.submission}")
    print(f"run folder: {result.run_dir}")
    print(f"serve it: maskstatus serve {result.run_dir}")
    return 0


def _add_find_label_errors(sub: Subparsers) -> None:
    s = sub.add_parser(
        "find-label-errors", help="rank training people whose labels disagree with out-of-fold predictions"
    )
    s.add_argument("run", metavar="RUN", help="CV folder (oof.csv), run folder (predictions/oof.csv) or an oof CSV")
    s.add_argument("--out", default=None, metavar="DIR", help="review folder (default RUN/label_review)")
    s.add_argument(
        "--top", type=int, default=defaults.LABEL_ERRORS_TOP, help="most suspects kept per task (default %(default)s)"
    )
    s.add_argument(
        "--min-score",
        type=float,
        default=defaults.LABEL_ERRORS_MIN_SCORE,
        help="keep suspects whose label is at least this likely wrong, 0..1 (default %(default)s)",
    )
    s.add_argument(
        "--ranker",
        choices=LABEL_ERROR_RANKERS,
        default=defaults.LABEL_ERRORS_RANKER,
        help="confidence: the model's own probability of the label; cleanlab: confident learning (each class "
        "against its own threshold); combined: the mean of the two scores (default %(default)s)",
    )
    _add_overwrite(s, "the review files in DIR")
    s.set_defaults(fn=_cmd_find_label_errors)


def _cmd_find_label_errors(args: argparse.Namespace) -> int:
    from .scoring.label_errors import TASK_NAMES, check_review_output, find_label_errors, load_oof, write_review

    source = Path(args.run)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "label_review"
    check_review_output(out, source, args.overwrite)
    suspects = find_label_errors(load_oof(source), top=args.top, min_score=args.min_score, ranker=args.ranker)
    paths = write_review(suspects, out)
    counts = suspects["task"].value_counts()
    listed = ", ".join(f"{task}: {int(counts.get(task, 0))}" for task in TASK_NAMES)
    print(f"suspects (ranker {args.ranker}): {listed}")
    for path in paths.values():
        print(path)
    return 0


def _add_tune_age(sub: Subparsers) -> None:
    s = sub.add_parser(
        "tune-age",
        help="tune an age-regression run's age cut points on its out-of-fold predictions",
        description="Grid-search the two cut points on predicted years that maximise the OOF macro F1 "
        "and write RUN/age_cuts.json, which predict, ensemble and find-label-errors then "
        "use for RUN. For runs trained with model.age_output=years.",
    )
    s.add_argument("run", metavar="RUN", help="run folder or CV folder (tune a CV folder: its OOF covers every fold)")
    s.add_argument("--step", type=float, default=defaults.AGE_CUT_STEP, help="grid step in years (default %(default)s)")
    s.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    s.set_defaults(fn=_cmd_tune_age)


def _cmd_tune_age(args: argparse.Namespace) -> int:
    from .scoring.age_cuts import tune_age_cuts

    result = tune_age_cuts(args.run, write=not args.dry_run, step=args.step)
    print(f"age cut points {result['default_cuts']} -> {result['cuts']} on {result['images']} OOF images")
    print(
        f"OOF macro F1 {result['oof_f1_default']:.4f} -> {result['oof_f1_tuned']:.4f} "
        f"(age F1 {result['oof_age_f1_default']:.4f} -> {result['oof_age_f1_tuned']:.4f}; "
        "tuned on these predictions, so optimistic)"
    )
    print(
        f"cross-fitted OOF macro F1 (cuts tuned on half of the people, scored on the other half): "
        f"{result['oof_f1_cross_fitted']:.4f}"
    )
    if "file" in result:
        print(result["file"])
    return 0


def _format_interval(point, ci) -> str:
    if point is None:
        return "—"
    return f"{point:.4f}" + (f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else "")


def _add_score(sub: Subparsers) -> None:
    s = sub.add_parser(
        "score",
        help="OOF macro F1 and per-task F1 with person-bootstrap intervals",
        description="Score out-of-fold predictions with their uncertainty: the "
        f"{defaults.DEFAULT_LEVEL:.0%} interval of each metric over people resampled with "
        "replacement (each with all their photos). A folder's tuned age cut points "
        "(age_cuts.json) apply, as in predict.",
    )
    s.add_argument("path", metavar="PATH", help="run folder (predictions/oof.csv), CV folder (oof.csv) or an OOF CSV")
    s.add_argument("--boot", type=int, default=defaults.DEFAULT_BOOT, help="bootstrap replicates (default %(default)s)")
    s.add_argument(
        "--level",
        type=float,
        default=defaults.DEFAULT_LEVEL,
        help="interval level, between 0 and 1 (default %(default)s)",
    )
    s.add_argument(
        "--seed", type=int, default=defaults.DEFAULT_SEED, help="seed of the resampling (default %(default)s)"
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(fn=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    import json

    from .scoring.score import score_oof

    result = score_oof(args.path, n_boot=args.boot, level=args.level, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cuts = f"; age cut points {result['age_cuts']} (age_cuts.json)" if result["age_cuts"] else ""
    print(
        f"{result['source']}: {result['images']} images, {result['people']} people, "
        f"fold(s) {', '.join(map(str, result['folds']))}{cuts}"
    )
    print(f"{'':<11}value   {result['level']:.0%} person-bootstrap interval ({result['n_boot']} replicates)")
    point, ci = result["point"], result["ci"]
    for key, name in (
        ("f1", "macro F1"),
        ("acc", "accuracy"),
        ("mask_f1", "mask F1"),
        ("gender_f1", "gender F1"),
        ("age_f1", "age F1"),
    ):
        print(f"{name:<11}{_format_interval(point[key], ci[key])}")
    return 0


def _add_serve(sub: Subparsers) -> None:
    s = sub.add_parser(
        "serve",
        help="serve a run or CV folder over HTTP: JSON API and a web page",
        description="Load the model(s) once and answer POST /predict (multipart field 'file', "
        "repeatable), POST /explain (one image, with Grad-CAM heatmaps), GET /health "
        "and GET / (web page). Answers equal `maskstatus predict` on face crops.",
    )
    s.add_argument("run", nargs="+", metavar="RUN_OR_CV_DIR", help="run folder or CV folder; several: soft vote")
    s.add_argument(
        "--host", default=defaults.DEFAULT_HOST, help="address to listen on (default %(default)s: this machine only)"
    )
    s.add_argument(
        "--port",
        type=_serve_number(int, 1, 65535, "a port"),
        default=defaults.DEFAULT_PORT,
        help="port (default %(default)s)",
    )
    _add_checkpoint(s)
    s.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default=defaults.DEFAULT_ACCELERATOR,
        help="device (default %(default)s: a GPU if there is one)",
    )
    s.add_argument(
        "--tta",
        action="append",
        choices=(*TTA_NAMES, "none"),
        default=None,
        metavar="NAME",
        help="test-time augmentation (repeatable; 'none' for none; default: each run's predict.tta)",
    )
    _add_backend_options(s, note=" (several times faster on a CPU; /explain's heatmaps still use PyTorch)")
    s.add_argument("--no-face-crop", action="store_true", help="never look for a face; use every photo whole")
    _add_serve_limits(s)
    s.set_defaults(fn=_cmd_serve)


def _add_serve_limits(s: argparse.ArgumentParser) -> None:
    """What one request may cost the server: bytes, files, pixels and waiting."""
    s.add_argument(
        "--max-upload-mb",
        type=_serve_number(float, 0.001, None, "a size in MB"),
        default=defaults.DEFAULT_MAX_UPLOAD_MB,
        help=f"largest request body in MB (default {defaults.DEFAULT_MAX_UPLOAD_MB:g})",
    )
    s.add_argument(
        "--max-pixels",
        type=_serve_pixels,
        default=defaults.DEFAULT_MAX_PIXELS,
        help=f"most pixels one image may decode to, up to {_mega(defaults.MAX_IMAGE_PIXELS)} (default "
        f"{_mega(defaults.DEFAULT_MAX_PIXELS)}; JPEGs larger than {2 * defaults.DECODE_MIN_SIDE} px "
        "decode at 1/2, 1/4 or 1/8 size, so a 48 MP phone photo counts as 3 MP); a request may hold "
        f"{defaults.REQUEST_PIXELS_IMAGES} such images, the server {defaults.SERVER_PIXELS_IMAGES} "
        "at once (413, or 503 to retry when busy)",
    )
    s.add_argument(
        "--max-files",
        type=_serve_number(int, 1, None, "a number of files"),
        default=defaults.DEFAULT_MAX_FILES,
        help="most images per request (default %(default)s)",
    )
    s.add_argument(
        "--read-timeout",
        type=_serve_number(float, 0.1, 3600, "seconds"),
        default=defaults.DEFAULT_READ_TIMEOUT_S,
        help="seconds a client may send nothing while its upload is awaited before it gets 408 "
        f"(default {defaults.DEFAULT_READ_TIMEOUT_S:g})",
    )


def _mega(pixels: int) -> str:
    """16000000 -> '16e6', as the help has always written pixel counts."""
    return f"{pixels / 1e6:g}e6"


def _cmd_serve(args: argparse.Namespace) -> int:
    from .extras import require

    require("serve", "maskstatus serve")  # the whole extra: a user who installed it has every part
    _require_backend(args)
    from .serve.app import create_app, serve
    from .serve.predictor import Predictor

    predictor = Predictor(
        args.run,
        checkpoint=args.checkpoint,
        accelerator=args.accelerator,
        tta=_tta_arg(args.tta),
        face_crop=not args.no_face_crop,
        max_pixels=args.max_pixels,
        backend=args.backend,
        onnx_dir=args.onnx_dir,
    )
    app = create_app(
        predictor,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_files=args.max_files,
        read_timeout=args.read_timeout,
    )
    print(f"serving {predictor.model_count} model(s) on http://{args.host}:{args.port}/ (Ctrl+C stops)")
    serve(app, host=args.host, port=args.port)
    return 0


def _serve_number(kind: type, low: float, high: float | None = None, what: str = "a number") -> Callable:
    """An argparse type for serve's limits: a ``kind`` in [low, high], else one line naming the range (exit 2)."""
    import math

    def show(x: float) -> str:
        return f"{int(x):,}" if kind is int and x >= 1e5 else f"{x:g}"

    def parse(text: str):
        try:
            number = float(text.replace("_", ""))  # 16e6 and 16_000_000 are pixel counts too
            value = kind(number) if math.isfinite(number) and (kind is not int or number.is_integer()) else None
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bounds = f"from {show(low)} to {show(high)}" if high is not None else f"of at least {show(low)}"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text!r}")
        return value

    return parse


def _serve_pixels(text: str) -> int:
    from .data.images import MAX_IMAGE_PIXELS  # only when given: the parser stays quick to build

    return _serve_number(int, 1, MAX_IMAGE_PIXELS, "a number of pixels")(text)


def _add_review(sub: Subparsers) -> None:
    s = sub.add_parser(
        "review",
        help="go through a CV's label suspects on a local web page and export the fixes as a relabel CSV",
        description="Serve a page listing the suspects find-label-errors ranks on a CV's pooled oof.csv, most "
        "suspicious first, with each person's photos, given labels and what the fold models believe. Decide by "
        "keyboard (accept, keep, set, skip, undo); every decision is saved at once to the review folder, and "
        "the export writes the relabel CSV that `maskstatus cv --config CV/cv_config.yaml data.relabel=FILE` reads.",
    )
    s.add_argument("cv", metavar="CV_DIR", help="CV folder (cv_config.yaml and its pooled oof.csv)")
    s.add_argument(
        "--host", default=defaults.DEFAULT_HOST, help="address to listen on (default %(default)s: this machine only)"
    )
    s.add_argument(
        "--port",
        type=_serve_number(int, 1, 65535, "a port"),
        default=defaults.REVIEW_PORT,
        help="port (default %(default)s)",
    )
    s.add_argument("--out", default=None, metavar="REVIEW_DIR", help="review folder (default CV_DIR/review)")
    s.add_argument(
        "--data-root", default=None, metavar="DIR", help="the data folder holding train/ (default: the CV's data.root)"
    )
    s.add_argument(
        "--top", type=int, default=defaults.LABEL_ERRORS_TOP, help="most suspects listed per task (default %(default)s)"
    )
    s.add_argument(
        "--min-score",
        type=float,
        default=defaults.LABEL_ERRORS_MIN_SCORE,
        help="list suspects whose label is at least this likely wrong, 0..1 (default %(default)s)",
    )
    s.set_defaults(fn=_cmd_review)


def _cmd_review(args: argparse.Namespace) -> int:
    from .extras import require

    require("serve", "maskstatus review", ("fastapi", "uvicorn"))  # the page needs neither Grad-CAM nor dlib
    from .review.app import open_review
    from .review.suspects import REVIEW_TASKS
    from .serve.app import serve

    app, review, out = open_review(args.cv, args.out, args.data_root, args.top, args.min_score)
    counts = ", ".join(f"{t}: {sum(s.task == t for s in review.suspects)}" for t in REVIEW_TASKS)
    print(f"{len(review.suspects)} suspects ({counts}); decisions are saved in {out}")
    print(f"review on http://{args.host}:{args.port}/ (Ctrl+C stops; nothing decided is lost)")
    serve(app, host=args.host, port=args.port)
    return 0


# ---- reports (eda, report): one self-contained HTML page each
def _add_eda(sub: Subparsers) -> None:
    s = sub.add_parser(
        "eda",
        help="write a self-contained HTML page exploring a data folder",
        description="Counts per class and task, age and race, image files, sample photos per class, "
        "duplicates across people, every validation problem and, with --run, suspected "
        "label errors: one HTML file that opens offline.",
    )
    s.add_argument("data_dir", metavar="DATA_DIR", help="folder holding train/ and/or eval/")
    s.add_argument("--out", default=defaults.EDA_PAGE, metavar="FILE.html", help="page to write (default %(default)s)")
    s.add_argument(
        "--run",
        default=None,
        metavar="CV_DIR",
        help="CV folder (or run folder, or oof CSV) whose out-of-fold predictions find suspected label errors",
    )
    _add_age_groups(s)
    _add_overwrite(s, "the --out file")
    s.set_defaults(fn=_cmd_eda)


def _cmd_eda(args: argparse.Namespace) -> int:
    from .analysis.eda import write_eda
    from .labels import AgeThresholds

    out, result = write_eda(
        Path(args.data_dir),
        Path(args.out),
        run=args.run,
        thresholds=AgeThresholds(args.young_below, args.old_from),
        overwrite=args.overwrite,
    )
    print(
        f"train: {result.train['person_id'].nunique()} people, {len(result.train)} images; "
        f"eval: {len(result.eval)} images"
    )
    print(f"problems: {len(result.problems)}; cross-person duplicate pairs: {len(result.duplicates)}")
    if result.suspects is not None:
        print(f"suspected label errors: {len(result.suspects)}")
    print(f"eda page: {out}")
    return 0


def _add_report(sub: Subparsers) -> None:
    s = sub.add_parser(
        "report",
        help="write a self-contained HTML page about a run or CV folder",
        description="Config, learning curves, confusion matrices, per-class precision/recall/F1 with "
        "person-bootstrap intervals, calibration, the most confident wrong out-of-fold "
        "predictions and, for a CV folder, the fold-to-fold spread.",
    )
    s.add_argument("run", metavar="RUN_OR_CV_DIR", help="run folder or CV folder")
    s.add_argument("--out", default=None, metavar="FILE.html", help="page to write (default RUN_OR_CV_DIR/report.html)")
    _add_overwrite(s, "the --out file")
    s.set_defaults(fn=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report

    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    out, result = write_report(Path(args.run), out, overwrite=args.overwrite)
    scores = result.interval.to_dict()  # as score prints them: the same numbers, the same default level
    print(
        f"OOF images {result.images}, {scores['people']} people ({scores['level']:.0%} person-bootstrap intervals, "
        f"{scores['n_boot']} replicates)"
    )
    for key, name in (("f1", "macro F1"), ("acc", "accuracy")):
        print(f"{name:<11}{_format_interval(scores['point'][key], scores['ci'][key])}")
    print(f"report page: {out}")
    return 0


def _add_overwrite(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} even when it exists and is not an earlier output of this command (an input, "
        "or a file in a run, CV or data folder, is never replaced)",
    )


def _add_checkpoint(s: argparse.ArgumentParser, pre: str = "") -> None:
    s.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default=defaults.DEFAULT_CHECKPOINT,
        help=f"{pre}which checkpoint (default %(default)s)",
    )


def _add_backend_options(s: argparse.ArgumentParser, pre: str = "", note: str = "") -> None:
    """--backend and --onnx-dir: shared by the prediction options and serve."""
    s.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.DEFAULT_BACKEND,
        help=f"{pre}torch (default), or onnx: ONNX Runtime on the CPU with the files `maskstatus export` "
        f"wrote; export every run first, a run without its export is an error{note}",
    )
    s.add_argument(
        "--onnx-dir",
        default=None,
        metavar="DIR",
        help="with --backend onnx: the --out folder given to export (default: each run's onnx/ folder)",
    )


def _add_prediction_options(s: argparse.ArgumentParser, only_with: str | None = None) -> None:
    """How images are predicted: shared by predict and ensemble (where they apply to ``only_with``)."""
    pre = f"for {only_with}: " if only_with else ""
    _add_checkpoint(s, pre)
    s.add_argument(
        "--batch-size",
        type=_positive_int_arg,
        default=None,
        help=f"{pre}images per batch, 1 or more (default: each run's train.eval_batch_size)",
    )
    s.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default=defaults.DEFAULT_ACCELERATOR,
        help=f"{pre}device to predict on (default %(default)s: a GPU if there is one)",
    )
    s.add_argument(
        "--num-workers",
        type=_workers_arg,
        default=defaults.DEFAULT_NUM_WORKERS,
        help=f"{pre}DataLoader workers, or auto: one per core less one (default %(default)s)",
    )
    _add_backend_options(s, pre)
    s.add_argument(
        "--precision",
        choices=PREDICT_PRECISIONS,
        default=None,
        help=f"{pre}torch backend: bf16-mixed is faster on GPUs and on CPUs with bf16 instructions, with "
        "answers that differ from float32 on about 1%% of images (default: the run's train.precision)",
    )
    _add_view_options(s, pre)


def _add_view_options(s: argparse.ArgumentParser, pre: str) -> None:
    """What each image is predicted from: test-time views, and grouping the photos of one person."""
    s.add_argument(
        "--tta",
        action="append",
        choices=(*TTA_NAMES, "none"),
        default=None,
        metavar="NAME",
        help=f"{pre}test-time augmentation averaged with the plain view: hflip, shift (4 shifted views); "
        "repeat to add more, 'none' for none (default: each run's predict.tta)",
    )
    s.add_argument(
        "--group-people",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{pre}group the photos of one person by face similarity and make their gender and age "
        "consistent (never reads names or order), or not (default: each run's predict.group_people)",
    )


# In the order `maskstatus --help` lists them: data, training, prediction, scoring, serving, reports.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_demo_data,
    _add_validate_data,
    _add_train,
    _add_cv,
    _add_cv_merge,
    _add_sweep,
    _add_predict,
    _add_export,
    _add_ensemble,
    _add_pseudo_label,
    _add_demo,
    _add_find_label_errors,
    _add_tune_age,
    _add_score,
    _add_serve,
    _add_review,
    _add_eda,
    _add_report,
)


class _Parser(argparse.ArgumentParser):
    """The top-level parser: reads the words ``cv merge`` as the one command named so (see ``_add_cv_merge``)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):  # type: ignore[override]
        words = list(sys.argv[1:] if args is None else args)
        # The command is the first word that is not an option (the top-level options take no value).
        i = next((i for i, w in enumerate(words) if not w.startswith("-")), len(words))
        if words[i : i + 2] == ["cv", "merge"]:
            words[i : i + 2] = ["cv merge"]
        return super().parse_known_args(words, namespace)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="maskstatus",
        description="Mask-wearing status, gender and age group from face photos (18 classes, macro F1).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    # The commands' own parsers are plain ones: only the top level reads "cv merge" as one word.
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)
    for add_command in COMMANDS:
        add_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .errors import MaskstatusError

    try:
        return args.fn(args)
    # Only what the user can fix gets one line; any other exception is a bug and keeps its traceback.
    except (MaskstatusError, FileNotFoundError) as err:
        if args.verbose:
            logger.debug("traceback of the error below", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl+C: one line (train and cv say how to continue), the shell's code 130
        if args.verbose:
            logger.debug("traceback of the interruption", exc_info=True)
        hint = getattr(exc, "hint", None)
        print(f"interrupted{' ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
