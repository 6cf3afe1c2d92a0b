"""A mistake on the command line is answered at once, in one line, before torch is imported (issue 23, 9 and 11)."""

import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from maskstatus.choices import ACCELERATORS, PRECISIONS, TTA_NAMES, check_accelerator_available, check_backend
from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.errors import UsageError
from maskstatus.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
DEMO_YAML = str(ROOT / "configs" / "demo.yaml")
PREDICT = ["predict", "--run", "no-such-run", "--data", "no-such-data", "--out", "no-such-dir/sub.csv"]
# Lenient for a loaded machine: importing torch and the models alone takes 5-13 s here, the check 0.1-0.4 s.
FAST_S = 2.0

# Runs `maskstatus ARGS` in this fresh interpreter and reports its exit code and whether torch got imported.
_PROBE = """
import json, sys
from maskstatus.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _probe(args: list[str], cwd: Path) -> tuple[dict, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    seconds = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr, seconds


def test_light_modules_do_not_import_torch():
    code = ("import sys; import maskstatus.cli, maskstatus.config, maskstatus.errors, maskstatus.labels, "
            "maskstatus.runs, maskstatus.choices, maskstatus.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _run_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder and a CV folder holding only their saved config (all --resume reads before torch)."""
    run, cv = tmp_path / "run", tmp_path / "cv"
    run.mkdir()
    cv.mkdir()
    (run / "config.yaml").write_text(Path(DEMO_YAML).read_text())
    (cv / "cv_config.yaml").write_text(Path(DEMO_YAML).read_text())
    return run, cv


@pytest.mark.parametrize("args, says", [
    (["train", "--config", DEMO_YAML, "train.epoch=3"], "train.epoch"),
    (["cv", "--config", DEMO_YAML, "train.epoch=3"], "train.epoch"),
    (["train", "--resume", "{run}", "train.epoch=3"], "train.epoch"),
    (["cv", "--resume", "{cv}", "train.epoch=3"], "train.epoch"),
    (["train", "--config", DEMO_YAML, "train.precision=float7"], "train.precision"),
    (["train", "--config", DEMO_YAML, "train.accelerator=tpu9"], "train.accelerator"),
    ([*PREDICT, "--batch-size", "-3"], "--batch-size"),
    ([*PREDICT, "--tta", "bogus"], "--tta"),
    ([*PREDICT, "--accelerator", "tpu9"], "--accelerator"),
    ([*PREDICT, "--backend", "onnx", "--accelerator", "cuda"], "onnx backend runs on the CPU"),
    (["predict", "--run", "{run}", "--data", "{tmp}/data", "--out", "{run}/config.yaml"], "input folder"),
    (["ensemble", "--run", "no-such-run", "--batch-size", "0"], "--batch-size"),
    (["pseudo-label", "--teacher", "x", "--data", "y", "--out", "z", "--tta", "vflip"], "--tta"),
    (["demo", "--out", "{tmp}/demo", "train.epoch=3"], "train.epoch"),
])
def test_config_and_argument_errors_answer_before_torch(tmp_path, args, says):
    run, cv = _run_folders(tmp_path)
    args = [a.format(run=run, cv=cv, tmp=tmp_path) for a in args]
    result, err, seconds = _probe(args, tmp_path)
    assert result["code"] == 2 and says in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv", "run"], "work was done before the check"
    assert not result["torch"], "torch was imported before the mistake was answered"
    assert seconds < FAST_S, f"{seconds:.1f} s to answer {args}"


@pytest.mark.parametrize("command", [PREDICT, ["ensemble", "--run", "r"], ["pseudo-label", "--teacher", "t",
                                                                              "--data", "d", "--out", "o"]])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_batch_size_must_be_positive(command, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--batch-size", value])
    assert e.value.code == 2
    assert f"--batch-size: expected a whole number of 1 or more, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [PREDICT, ["serve", "some-run"]])
def test_tta_and_accelerator_names_are_checked_with_their_choices(command, capsys):
    for option, value, choices in (("--tta", "bogus", ("hflip", "shift", "none")),
                                   ("--accelerator", "tpu9", ("cpu", "cuda", "auto"))):
        with pytest.raises(SystemExit) as e:
            main([*command, option, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{option}: invalid choice: '{value}'" in err
        assert all(f"'{c}'" in err for c in choices)


def test_precision_and_accelerator_keys_name_the_allowed_values():
    with pytest.raises(ConfigError, match=r"(?s)train\.precision:.*'bf16-mixed'"):
        load_config(DEMO_YAML, ["train.precision=float7"])
    with pytest.raises(ConfigError, match=r"(?s)train\.accelerator:.*'cuda'"):
        load_config(DEMO_YAML, ["train.accelerator=tpu9"])
    # What Fabric took before stays valid, YAML's number 32 included.
    assert load_config(DEMO_YAML, ["train.precision=32"]).train.precision == "32"
    assert load_config(DEMO_YAML, ["train.precision=bf16-mixed"]).train.precision == "bf16-mixed"


@pytest.fixture
def no_gpu(monkeypatch):
    import torch
    import torch._dynamo  # noqa: F401  (it records the functions patched below when imported: before them)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
def test_predict_on_a_missing_gpu_is_one_line(no_gpu, tmp_path, accelerator, capsys):
    assert main([*PREDICT, "--accelerator", accelerator]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --accelerator={accelerator} but no GPU is visible")
    assert len(err.strip().splitlines()) == 1


def test_serve_on_a_missing_gpu_is_one_line(no_gpu, tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--accelerator", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --accelerator=cuda but no GPU is visible")
    assert len(err.strip().splitlines()) == 1


def test_train_and_cv_on_a_missing_gpu_name_the_key_and_leave_nothing(no_gpu, tmp_path):
    from maskstatus.train.cv import run_cv
    from maskstatus.train.trainer import train

    cfg = load_config(DEMO_YAML, ["train.accelerator=cuda", f"output_dir={tmp_path / 'runs'}",
                                  f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match="train.accelerator=cuda but no GPU is visible"):
        train(cfg)
    with pytest.raises(ConfigError, match="train.accelerator=cuda but no GPU is visible"):
        run_cv(cfg)
    assert not (tmp_path / "runs").exists()


def test_check_accelerator_available_passes_cpu_and_auto(no_gpu):
    for name in ("cpu", "auto"):
        check_accelerator_available(name)
    with pytest.raises(UsageError, match="'tpu9' is not an accelerator"):
        check_accelerator_available("tpu9")
    with pytest.raises(UsageError, match="accelerator must be one of"):
        check_backend("torch", "tpu9")


def test_static_lists_match_their_sources():
    """The torch-free lists must name exactly what Fabric and the TTA registry take."""
    from lightning_fabric.accelerators import ACCELERATOR_REGISTRY
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from maskstatus.infer.tta import TTA

    assert set(ACCELERATORS) == {"auto", "gpu", *ACCELERATOR_REGISTRY}
    assert set(PRECISIONS) == {*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert TTA.names() == sorted(TTA_NAMES)


def test_registry_refuses_an_undeclared_name():
    reg = Registry("thing", declared=("a",))
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'b' is not among the declared names"):
        reg.register("b")(lambda: 2)
