"""The pre-commit config is valid and runs offline: local hooks whose tools the dev extra installs."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".pre-commit-config.yaml"
BIN = Path(sys.executable).parent  # the environment the tests run in: make setup's .venv


def _hooks() -> list[dict]:
    return [hook for repo in yaml.safe_load(CONFIG.read_text())["repos"] for hook in repo["hooks"]]


def _pre_commit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PRE_COMMIT_HOME": str(cwd / ".pc")}
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_config_is_valid_and_every_hook_is_local_with_an_installed_tool():
    assert _pre_commit("validate-config", str(CONFIG), cwd=ROOT).returncode == 0
    repos = yaml.safe_load(CONFIG.read_text())["repos"]
    assert [repo["repo"] for repo in repos] == ["local"] * len(repos), "a remote hook needs the network"
    hooks = _hooks()
    assert {"ruff-check", "ruff-format", "mypy", "trailing-whitespace", "end-of-file-fixer"} <= {h["id"] for h in hooks}
    for hook in hooks:
        assert hook["language"] == "system"
        tool = shlex.split(hook["entry"])[0]
        assert (BIN / tool).is_file(), f"hook {hook['id']}: {tool} is not installed beside {sys.executable}"


@pytest.mark.skipif(shutil.which("git") is None, reason="pre-commit works on a git repository")
def test_text_hooks_fix_a_staged_file(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, timeout=60)
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    note = tmp_path / "note.txt"
    note.write_text("trailing spaces   \nno final newline")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True, timeout=60)
    for hook in ("trailing-whitespace", "end-of-file-fixer"):
        result = _pre_commit("run", hook, "--files", note.name, cwd=tmp_path)
        assert result.returncode == 1 and "Fixing note.txt" in result.stdout, result.stdout + result.stderr
    assert note.read_text() == "trailing spaces\nno final newline\n"
