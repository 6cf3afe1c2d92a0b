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


def _pre_commit(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    # home: pre-commit's own store (a lock and a database), kept out of the checkout
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PRE_COMMIT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_config_is_valid_and_every_hook_is_local_with_an_installed_tool(tmp_path):
    assert _pre_commit("validate-config", str(CONFIG), cwd=ROOT, home=tmp_path).returncode == 0
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
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=60)
    shutil.copy(CONFIG, repo / CONFIG.name)
    note = repo / "note.txt"
    note.write_text("trailing spaces   \nno final newline")
    subprocess.run(["git", "add", "."], cwd=repo, check=True, timeout=60)
    for hook in ("trailing-whitespace", "end-of-file-fixer"):
        result = _pre_commit("run", hook, "--files", note.name, cwd=repo, home=tmp_path / "home")
        assert result.returncode == 1 and "Fixing note.txt" in result.stdout, result.stdout + result.stderr
    assert note.read_text() == "trailing spaces\nno final newline\n"
