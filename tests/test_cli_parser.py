"""The parser's shape: every command keeps its options, defaults and choices; build_parser stays a table of contents."""

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_snapshot import snapshot

from maskstatus import cli, defaults
from maskstatus.choices import VOTES
from maskstatus.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "cli_options.json"


def test_every_command_keeps_its_options_defaults_and_choices():
    """tests/fixtures/cli_options.json was taken from the parser before it was split into one function per command."""
    expected = json.loads(FIXTURE.read_text())
    # Through JSON, as the fixture was written: tuples become lists on both sides.
    actual = json.loads(json.dumps(snapshot(build_parser())))
    assert sorted(actual) == sorted(expected), "commands added or removed"
    for command in expected:
        assert actual[command] == expected[command], f"options of {command or 'maskstatus'} changed"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _option(command: str, option: str) -> argparse.Action:
    parser = _subparsers(build_parser())[command]
    return next(a for a in parser._actions if option in a.option_strings)


def _lines(function) -> int:
    return len(inspect.getsource(function).splitlines())


def test_build_parser_is_one_small_function_per_command():
    assert _lines(cli.build_parser) <= 25
    for name in _subparsers(build_parser()):
        function = f"_add_{name.replace('-', '_').replace(' ', '_')}"  # cv merge: _add_cv_merge
        assert callable(getattr(cli, function, None)), f"no _add_ function for {name}"
    adders = {name: fn for name, fn in vars(cli).items() if name.startswith("_add_") and inspect.isfunction(fn)}
    too_long = {name: _lines(fn) for name, fn in adders.items() if _lines(fn) > 40}
    assert not too_long, f"split these option functions: {too_long}"


# (command, option, the library's constant): every literal default of the CLI has one home.
DEFAULTS = [
    ("demo-data", "--people", defaults.DEMO_PEOPLE), ("demo-data", "--seed", defaults.DEFAULT_SEED),
    ("demo-data", "--workers", defaults.DEMO_WORKERS),
    ("validate-data", "--young-below", defaults.YOUNG_BELOW), ("validate-data", "--old-from", defaults.OLD_FROM),
    ("eda", "--young-below", defaults.YOUNG_BELOW), ("eda", "--old-from", defaults.OLD_FROM),
    ("eda", "--out", defaults.EDA_PAGE),
    ("demo", "--out", defaults.DEMO_DIR), ("demo", "--people", defaults.DEMO_PEOPLE),
    ("demo", "--seed", defaults.DEFAULT_SEED),
    *[(cmd, "--checkpoint", defaults.DEFAULT_CHECKPOINT) for cmd in ("predict", "ensemble", "pseudo-label", "export",
                                                                      "serve")],
    *[(cmd, "--accelerator", defaults.DEFAULT_ACCELERATOR) for cmd in ("predict", "ensemble", "pseudo-label", "serve")],
    *[(cmd, "--backend", defaults.DEFAULT_BACKEND) for cmd in ("predict", "ensemble", "pseudo-label", "serve")],
    *[(cmd, "--num-workers", defaults.DEFAULT_NUM_WORKERS) for cmd in ("predict", "ensemble", "pseudo-label")],
    ("ensemble", "--vote", defaults.DEFAULT_VOTE),
    ("export", "--tolerance", defaults.EXPORT_TOLERANCE),
    ("score", "--boot", defaults.DEFAULT_BOOT), ("score", "--level", defaults.DEFAULT_LEVEL),
    ("score", "--seed", defaults.DEFAULT_SEED),
    ("find-label-errors", "--top", defaults.LABEL_ERRORS_TOP),
    ("find-label-errors", "--min-score", defaults.LABEL_ERRORS_MIN_SCORE),
    ("find-label-errors", "--ranker", defaults.LABEL_ERRORS_RANKER),
    ("tune-age", "--step", defaults.AGE_CUT_STEP),
    ("serve", "--host", defaults.DEFAULT_HOST), ("serve", "--port", defaults.DEFAULT_PORT),
    ("serve", "--max-upload-mb", defaults.DEFAULT_MAX_UPLOAD_MB), ("serve", "--max-files", defaults.DEFAULT_MAX_FILES),
    ("serve", "--max-pixels", defaults.DEFAULT_MAX_PIXELS),
    ("serve", "--read-timeout", defaults.DEFAULT_READ_TIMEOUT_S),
    ("review", "--host", defaults.DEFAULT_HOST), ("review", "--port", defaults.REVIEW_PORT),
    ("review", "--top", defaults.LABEL_ERRORS_TOP), ("review", "--min-score", defaults.LABEL_ERRORS_MIN_SCORE),
    ("sweep", "--trials", defaults.SWEEP_TRIALS), ("sweep", "--pruner", defaults.SWEEP_PRUNER),
    ("sweep", "--prune-startup", defaults.SWEEP_PRUNE_STARTUP), ("sweep", "--prune-warmup", defaults.SWEEP_PRUNE_WARMUP),
    ("sweep", "--sampler-startup", defaults.SWEEP_SAMPLER_STARTUP),
]


@pytest.mark.parametrize("command, option, constant", DEFAULTS)
def test_option_defaults_are_the_library_constants(command, option, constant):
    assert _option(command, option).default == constant


def test_every_literal_default_is_checked():
    """A new option with a default of its own must be added to DEFAULTS (None and False mean: not given)."""
    checked = {(command, option) for command, option, _ in DEFAULTS}
    for command, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert (command, action.option_strings[-1]) in checked, f"{command} {action.option_strings[-1]}"


def test_choices_are_the_library_names():
    from maskstatus.choices import ACCELERATORS, BACKENDS, CHECKPOINTS, PREDICT_PRECISIONS, TTA_NAMES, VOTES

    for command in ("predict", "ensemble", "pseudo-label", "serve"):
        assert tuple(_option(command, "--accelerator").choices) == ACCELERATORS
        assert tuple(_option(command, "--backend").choices) == BACKENDS
        assert tuple(_option(command, "--tta").choices) == (*TTA_NAMES, "none")
    for command in ("predict", "ensemble", "pseudo-label", "export", "serve"):
        assert tuple(_option(command, "--checkpoint").choices) == CHECKPOINTS
    assert tuple(_option("predict", "--precision").choices) == PREDICT_PRECISIONS
    assert tuple(_option("ensemble", "--vote").choices) == VOTES


def test_help_texts_say_the_constants():
    serve = _subparsers(build_parser())["serve"].format_help()
    assert f"hold {defaults.REQUEST_PIXELS_IMAGES} such images, the server {defaults.SERVER_PIXELS_IMAGES} at once" \
        in " ".join(serve.split())
    score = _subparsers(build_parser())["score"].format_help()
    assert f"the {defaults.DEFAULT_LEVEL:.0%} interval" in " ".join(score.split())


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


@pytest.mark.slow  # imports torch and the models: seconds
def test_library_functions_default_to_the_same_constants():
    """The CLI's defaults are what the library does when a caller says nothing."""
    from typing import get_args

    from maskstatus.data.synthetic import make_demo_data
    from maskstatus.infer.ensemble import Vote, ensemble_oof
    from maskstatus.infer.export import export
    from maskstatus.infer.predict import predict
    from maskstatus.labels import DEFAULT_AGE_THRESHOLDS
    from maskstatus.scoring.age_cuts import tune_age_cuts
    from maskstatus.scoring.label_errors import find_label_errors
    from maskstatus.scoring.score import score_oof
    from maskstatus.train.demo import run_demo

    assert (DEFAULT_AGE_THRESHOLDS.young_below, DEFAULT_AGE_THRESHOLDS.old_from) == (defaults.YOUNG_BELOW,
                                                                                    defaults.OLD_FROM)
    assert [_default(make_demo_data, k) for k in ("people", "seed", "workers")] == [
        defaults.DEMO_PEOPLE, defaults.DEFAULT_SEED, defaults.DEMO_WORKERS]
    assert [_default(run_demo, k) for k in ("out_dir", "people", "seed")] == [
        defaults.DEMO_DIR, defaults.DEMO_PEOPLE, defaults.DEFAULT_SEED]
    assert [_default(predict, k) for k in ("checkpoint", "accelerator", "num_workers", "backend", "vote")] == [
        defaults.DEFAULT_CHECKPOINT, defaults.DEFAULT_ACCELERATOR, defaults.DEFAULT_NUM_WORKERS,
        defaults.DEFAULT_BACKEND, defaults.DEFAULT_VOTE]
    assert _default(ensemble_oof, "vote") == defaults.DEFAULT_VOTE and get_args(Vote) == VOTES
    assert [_default(export, k) for k in ("checkpoint", "tolerance")] == [defaults.DEFAULT_CHECKPOINT,
                                                                          defaults.EXPORT_TOLERANCE]
    assert [_default(score_oof, k) for k in ("n_boot", "level", "seed")] == [
        defaults.DEFAULT_BOOT, defaults.DEFAULT_LEVEL, defaults.DEFAULT_SEED]
    assert [_default(find_label_errors, k) for k in ("top", "min_score")] == [
        defaults.LABEL_ERRORS_TOP, defaults.LABEL_ERRORS_MIN_SCORE]
    assert _default(tune_age_cuts, "step") == defaults.AGE_CUT_STEP


@pytest.mark.slow  # imports torch and the models: seconds
def test_serve_defaults_to_the_same_constants():
    pytest.importorskip("fastapi")
    from maskstatus.serve.app import create_app, serve
    from maskstatus.serve.predictor import Predictor

    assert [_default(serve, k) for k in ("host", "port")] == [defaults.DEFAULT_HOST, defaults.DEFAULT_PORT]
    assert _default(create_app, "max_upload_bytes") == int(defaults.DEFAULT_MAX_UPLOAD_MB * 2**20)
    assert [_default(create_app, k) for k in ("max_files", "read_timeout", "min_side")] == [
        defaults.DEFAULT_MAX_FILES, defaults.DEFAULT_READ_TIMEOUT_S, defaults.DECODE_MIN_SIDE]
    assert [_default(Predictor, k) for k in ("checkpoint", "accelerator", "max_pixels", "backend")] == [
        defaults.DEFAULT_CHECKPOINT, defaults.DEFAULT_ACCELERATOR, defaults.DEFAULT_MAX_PIXELS,
        defaults.DEFAULT_BACKEND]


def test_the_cli_imports_neither_torch_nor_numpy():
    """Building the parser takes every default from torch-free, numpy-free modules: --help answers at once."""
    code = ("import sys; from maskstatus.cli import build_parser; build_parser(); "
            "heavy = {'torch', 'numpy', 'sklearn'} & set(sys.modules); assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
