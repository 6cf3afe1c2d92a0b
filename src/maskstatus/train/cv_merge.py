"""Join CV folders whose folds were trained apart (other machines, other calls) into one CV folder.

Folds of one CV can be trained on several machines from one shared folds.csv (``maskstatus cv --write-folds``,
then ``maskstatus cv --folds 0,1 split.folds_file=folds.csv`` on each); each call makes its own CV folder.
``merge_cvs`` checks that they belong together and writes one CV folder as ``run_cv`` would have: the config,
folds.csv, the fold runs (copied, or moved) and the pooled oof.csv and cv_metrics.json, so that predict,
ensemble, find-label-errors, tune-age and report take it like any CV folder.

They belong together when their folds.csv are the same table, their configs agree but for ``MAY_DIFFER``, each
fold run finished and no fold finished in two of them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, flat_config, load_config
from ..errors import RunError, UsageError
from ..outputs import check_writable
from ..runs import CV_CONFIG, FOLDS, RunDir
from .cv import CVResult, finished_state, fold_run, load_cv_config, pool_folds, sorted_folds

logger = logging.getLogger(__name__)

# The config keys that may differ between the CV folders merged: where things are on each machine and how fast it
# trains, never what is trained. train.devices and train.strategy are not here: batch_size is per device, so more
# devices train on larger batches (and DistributedSampler shards the epoch); nor is train.precision (bf16 trains
# another model than float32). The merged cv_config.yaml is the first folder's.
MAY_DIFFER: dict[str, str] = {
    "name": "the CV folder's name",
    "output_dir": "where that machine wrote its CV folder",
    "data.root": "where that machine keeps the images (folds.csv and the OOF rows pin which images)",
    "split.folds_file": "where that machine read the shared folds.csv (the folds.csv themselves must be equal)",
    "cache.dir": "where decoded images are kept: the same pixels",
    "cache.mode": "how decoded images are kept: the same pixels",
    "cache.decode_threads": "decoding speed",
    "train.accelerator": "CPU or GPU: the same model up to float rounding",
    "train.num_workers": "loading speed",
    "train.progress": "progress bars",
    "train.compile": "speed: the same model up to float rounding",
    "train.channels_last": "speed: the same model up to float rounding",
    "train.normalize_on": "where images are normalised: the same floats",
    "tracking": "where each machine logs its runs (every key of the section): not what is trained",
}
# A fold run's config.yaml differs from its CV's in these by design (cv._fold_config; tracking.group names the CV).
_PER_FOLD = ("split.fold", "split.folds_file", "output_dir", "name", "tracking.group")


def config_differences(a: Config, b: Config, ignore: Sequence[str] = tuple(MAY_DIFFER)) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key whose values differ, but those of ``ignore``.

    A key of ``ignore`` that names a section ignores every key under it.
    """
    flat_a, flat_b = flat_config(a.model_dump(mode="json")), flat_config(b.model_dump(mode="json"))
    sections = tuple(f"{key}." for key in ignore)
    return [
        (key, flat_a.get(key), flat_b.get(key))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if key not in ignore and not key.startswith(sections) and flat_a.get(key) != flat_b.get(key)
    ]


def _describe(differences: list[tuple[str, Any, Any]], first: Path, other: Path) -> str:
    shown = "; ".join(f"{key}: {va!r} in {first}, {vb!r} in {other}" for key, va, vb in differences[:5])
    more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
    return shown + more


def _check_same_folds(first: Path, other: Path) -> None:
    a, b = sorted_folds(first / FOLDS), sorted_folds(other / FOLDS)
    if a.equals(b):
        return
    key = a.columns[0]
    joined = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    odd = joined[(joined["_merge"] != "both") | (joined["fold_a"] != joined["fold_b"])]
    if odd.empty:  # same rows and folds, other columns
        detail = f"columns {list(a.columns)} against {list(b.columns)}"
    else:
        row = odd.iloc[0]
        fold = {"left_only": (row["fold_a"], "absent"), "right_only": ("absent", row["fold_b"])}.get(
            str(row["_merge"]), (row["fold_a"], row["fold_b"])
        )
        detail = f"{len(odd)} {key}s differ, e.g. {key} {row[key]}: fold {_fold(fold[0])} against {_fold(fold[1])}"
    raise RunError(
        f"{other / FOLDS} is not {first / FOLDS} ({detail}): these folders were trained on other folds; "
        "train every fold from one shared folds.csv (split.folds_file=...)"
    )


def _fold(value: Any) -> str:
    return value if isinstance(value, str) else str(int(value))


def _finished_fold_runs(cv_dir: Path, cfg: Config) -> dict[int, tuple[Path, Config]]:
    """fold -> (its run, the run's own config) for every fold run in the CV folder; refuses an unfinished one."""
    runs: dict[int, tuple[Path, Config]] = {}
    for k in range(cfg.split.folds):
        run = fold_run(cv_dir, k)
        if run is None:
            continue
        run_cfg = load_config(RunDir(run).config)
        if finished_state(run, run_cfg) is None:
            raise RunError(
                f"fold {k} run {run} has not finished its {run_cfg.train.epochs} epochs: finish it with "
                f"maskstatus cv --resume {cv_dir} --folds {k}, or delete that run folder to leave the fold out"
            )
        runs[k] = (run, run_cfg)
    if not runs:
        raise RunError(f"no fold run in {cv_dir}: nothing to merge from it")
    return runs


def merge_cvs(cv_dirs: Sequence[Path | str], out: Path | str, move: bool = False) -> CVResult:
    """Merge CV folders trained on the same folds.csv and config into the new CV folder ``out``.

    Each fold run is copied (``move``: moved, leaving its old CV folder without it; its oof.csv and cv_metrics.json
    are then stale) into ``out``, which then pools them as ``cv --resume`` does. Refuses, naming the folder and the
    difference: a folder that is not a CV folder, folds.csv that differ, config keys that differ (but
    ``MAY_DIFFER``), a fold run that has not finished, a fold finished in two folders, an ``out`` that exists.
    """
    dirs = [Path(d) for d in cv_dirs]
    out = Path(out)
    if not dirs:
        raise UsageError("cv merge needs at least one CV folder")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise UsageError(f"a CV folder is named twice: {[str(d) for d in dirs]}")
    if out.exists():
        raise UsageError(f"--out {out}: already exists; cv merge writes a new CV folder")
    check_writable(out, "--out")
    inside = [d for d, r in zip(dirs, resolved, strict=True) if out.resolve().is_relative_to(r)]
    if inside:
        raise UsageError(f"--out {out} lies inside the CV folder {inside[0]}: give a folder outside the inputs")

    configs = [load_cv_config(d) for d in dirs]  # a folder without cv_config.yaml is not a CV folder
    for d in dirs:
        if not (d / FOLDS).is_file():
            raise RunError(f"{d} has a {CV_CONFIG} but no {FOLDS}: not a CV folder its folds can be checked in")
    first, base = dirs[0], configs[0]
    for d, cfg in zip(dirs[1:], configs[1:], strict=True):
        _check_same_folds(first, d)
        differences = config_differences(base, cfg)
        if differences:
            raise ConfigError(
                f"{d / CV_CONFIG} differs from {first / CV_CONFIG}: {_describe(differences, first, d)}. Only "
                f"{', '.join(MAY_DIFFER)} may differ between the CV folders merged"
            )

    chosen: dict[int, Path] = {}
    first_run: tuple[Path, Config] | None = None
    for d, cfg in zip(dirs, configs, strict=True):
        for k, (run, run_cfg) in _finished_fold_runs(d, cfg).items():
            if k in chosen:
                raise RunError(f"fold {k} finished in two of the folders: {chosen[k]} and {run}; keep one of them")
            # A resume may have trained one folder's folds longer (train.* of cv_config.yaml stays as first saved).
            if first_run is None:
                first_run = (run, run_cfg)
            differences = config_differences(first_run[1], run_cfg, (*MAY_DIFFER, *_PER_FOLD))
            if differences:
                raise ConfigError(
                    f"{RunDir(run).config} differs from {RunDir(first_run[0]).config}: "
                    f"{_describe(differences, first_run[0], run)}"
                )
            chosen[k] = run

    out.mkdir(parents=True)
    try:
        shutil.copyfile(first / CV_CONFIG, out / CV_CONFIG)
        shutil.copyfile(first / FOLDS, out / FOLDS)
        for k in sorted(chosen):
            target = out / chosen[k].name
            if move:
                shutil.move(chosen[k], target)
            else:
                shutil.copytree(chosen[k], target)
            logger.info("fold %d: %s %s -> %s", k, "moved" if move else "copied", chosen[k], target)
    except BaseException:
        if move:  # what was moved stays in out: removing it would lose the only copy
            logger.error("merge stopped; the fold runs moved so far are in %s", out)
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return pool_folds(base, out)
