"""A command that needs an extra which is not installed stops with one line naming the pip install to run.

Nothing is uninstalled: ``sys.modules[name] = None`` makes Python treat the module as absent.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from maskstatus.cli import main
from maskstatus.extras import EXTRAS, MissingExtraError, missing_modules, require

ROOT = Path(__file__).resolve().parents[1]
PREDICT = ["predict", "--run", "no-such-run", "--data", "no-such-data", "--out", "no-such-dir/sub.csv"]
SERVE_LINE = "error: maskstatus serve needs the serve extra (no module named {}): pip install 'maskstatus[serve]'"
ONNX_LINE = "error: maskstatus {} needs the onnx extra (no module named {}): pip install 'maskstatus[onnx]'"


def _block(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    "args, absent, line",
    [
        (["serve", "no-such-run"], ["fastapi"], SERVE_LINE.format("fastapi")),
        (["serve", "no-such-run"], ["dlib", "pytorch_grad_cam"], SERVE_LINE.format("pytorch_grad_cam, dlib")),
        (
            ["review", "no-such-cv"],
            ["uvicorn"],
            "error: maskstatus review needs the serve extra (no module named uvicorn): pip install 'maskstatus[serve]'",
        ),
        (
            ["serve", "no-such-run", "--backend", "onnx"],
            ["onnxruntime"],
            ONNX_LINE.format("serve --backend onnx", "onnxruntime"),
        ),
        (["export", "no-such-run"], ["onnxsim"], ONNX_LINE.format("export", "onnxsim")),
        ([*PREDICT, "--backend", "onnx"], ["onnxruntime"], ONNX_LINE.format("predict --backend onnx", "onnxruntime")),
        (
            [
                "ensemble",
                "--run",
                "no-such-run",
                "--data",
                "no-such-data",
                "--out",
                "no-such-dir/sub.csv",
                "--backend",
                "onnx",
            ],
            ["onnxruntime"],
            ONNX_LINE.format("ensemble --backend onnx", "onnxruntime"),
        ),
    ],
)
def test_missing_extra_stops_the_command_with_one_line(monkeypatch, capsys, args, absent, line):
    _block(monkeypatch, *absent)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_missing_extra_is_answered_before_torch_is_imported(tmp_path):
    # A fresh interpreter: the check itself must not pull in torch (grad-cam would, if it were imported).
    code = (
        "import json, sys; sys.modules['fastapi'] = None; from maskstatus.cli import main; "
        "code = main(['serve', 'no-such-run']); print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 2, "torch": False}
    assert out.stderr == SERVE_LINE.format("fastapi") + "\n"


def test_face_detection_without_dlib_names_the_serve_extra(monkeypatch):
    from maskstatus.data.faces import FaceDetector

    _block(monkeypatch, "dlib")
    with pytest.raises(
        MissingExtraError,
        match=r"^face detection \(serve, data.face_crop\) needs the serve extra "
        r"\(no module named dlib\): pip install 'maskstatus\[serve\]'$",
    ):
        FaceDetector()


def test_onnx_runtime_backend_without_onnxruntime_names_the_onnx_extra(monkeypatch, tmp_path):
    from maskstatus.infer.onnx_model import open_session

    _block(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError, match=r"--backend onnx\) needs the onnx extra .*'maskstatus\[onnx\]'$"):
        open_session(tmp_path / "model.onnx")


def test_export_without_onnx_names_the_onnx_extra(monkeypatch, tmp_path):
    from maskstatus.infer.export import export_run

    _block(monkeypatch, "onnx")
    with pytest.raises(MissingExtraError, match=r"^ONNX export needs the onnx extra \(no module named onnx\)"):
        export_run(tmp_path / "no-such-run")


def test_require_passes_when_the_extra_is_installed():
    # The test environment installs every extra (make setup: .[all,dev]).
    for extra in EXTRAS:
        assert missing_modules(extra) == []
        require(extra, "anything")
    with pytest.raises(ValueError, match="not in the 'onnx' extra"):
        require("onnx", "anything", ["fastapi"])


def _top_level_modules(dist: importlib.metadata.Distribution) -> set[str]:
    # From the installed files, not top_level.txt: dlib-bin's names only its compiled helper there.
    names = set()
    for file in dist.files or ():
        top = file.parts[0]
        if len(file.parts) > 1 and not top.endswith((".dist-info", ".data")) and top != "__pycache__":
            names.add(top)
        elif len(file.parts) == 1 and top.endswith(".py"):
            names.add(top.removesuffix(".py"))
    return names


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_checked_module_comes_from_that_extra_in_pyproject(extra):
    """EXTRAS and pyproject.toml's optional dependencies name the same distributions, so the advice is right."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    provided = {
        module: Requirement(req).name
        for req in declared
        for module in _top_level_modules(importlib.metadata.distribution(Requirement(req).name))
    }
    assert set(EXTRAS[extra]) <= set(provided), f"modules of no distribution of the {extra} extra"
    assert {provided[m] for m in EXTRAS[extra]} == {Requirement(r).name for r in declared}, (
        f"a distribution of the {extra} extra is not checked"
    )


def test_training_and_prediction_modules_import_without_the_extras():
    """Everything but serve, sweep, export and the review page's app imports with no extra installed (the torch path of
    predict included)."""
    blocked = [m for modules in EXTRAS.values() for m in modules]
    code = (
        f"import importlib, pkgutil, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import maskstatus\n"
        "for info in pkgutil.walk_packages(maskstatus.__path__, 'maskstatus.'):\n"
        "    parts = info.name.split('.')\n"
        "    if 'serve' not in parts and 'sweep' not in parts and parts[-1] != 'export' and info.name != 'maskstatus.review.app':\n"
        "        importlib.import_module(info.name)\n"
        "print('imported', len(sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported" in out.stdout
