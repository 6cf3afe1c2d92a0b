"""The sdist and the wheel build from a clean copy of the repository and carry what the package loads at run time.

Installing the wheel into a fresh virtual environment and running the demo from it takes minutes (torch and
its dependencies are installed anew), so that is .ci/wheel-check, which .ci/run calls after the tests.
"""

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "maskstatus"

pytestmark = pytest.mark.slow


def _checkout_files() -> list[str]:
    """What a fresh clone of this checkout holds: tracked files plus new ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [name for name in out.stdout.decode().split("\0") if name and os.path.lexists(ROOT / name)]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` on a copy of the checkout: the sdist, and the wheel built from that sdist."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    src = tmp_path_factory.mktemp("checkout")
    for name in _checkout_files():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)  # src/maskstatus/configs stays a link
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{pattern} in {folder}: {found}"
    return found[0]


def _package_files() -> set[str]:
    """Every file of the package in the checkout, as ``maskstatus/...``, through the configs/ link."""
    files = set()
    for folder, dirs, names in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files |= {(Path(folder) / n).relative_to(PACKAGE.parent).as_posix() for n in names if not n.endswith(".pyc")}
    return files


def test_wheel_holds_every_module_and_data_file_and_the_entry_point(dist):
    wheel = zipfile.ZipFile(_one(dist, "maskstatus-*.whl"))
    names = set(wheel.namelist())
    # Loaded at run time through Path(__file__) or importlib.resources: the demo config, the shipped relabel
    # fixes, the serve page, and py.typed for type checkers.
    for data in (
        "maskstatus/configs/demo.yaml",
        "maskstatus/configs/relabel/competition.csv",
        "maskstatus/serve/page.html",
        "maskstatus/review/page.html",
        "maskstatus/py.typed",
    ):
        assert data in names
    missing = _package_files() - names
    assert not missing, f"in the package but not in the wheel: {sorted(missing)}"
    info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "maskstatus = maskstatus.cli:main" in wheel.read(info).decode()


def test_wheel_metadata_keeps_serve_and_onnx_out_of_the_core(dist):
    wheel = zipfile.ZipFile(_one(dist, "maskstatus-*.whl"))
    meta = email.parser.Parser().parsestr(
        wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    )
    assert {"serve", "onnx", "all", "dev"} <= set(meta.get_all("Provides-Extra"))
    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {r.name for r in requirements if r.marker is None}
    assert "torch" in core
    assert not core & {
        "fastapi",
        "uvicorn",
        "python-multipart",
        "grad-cam",
        "dlib-bin",
        "onnx",
        "onnxruntime",
        "onnxsim",
    }


def test_sdist_holds_the_sources_and_the_configs_the_wheel_is_built_from(dist):
    with tarfile.open(_one(dist, "maskstatus-*.tar.gz")) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {
        "pyproject.toml",
        "README.md",
        "src/maskstatus/cli.py",
        "src/maskstatus/configs/demo.yaml",
        "src/maskstatus/configs/relabel/competition.csv",
        "src/maskstatus/serve/page.html",
    } <= names
