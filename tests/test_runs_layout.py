"""The run and CV folder layout is named in one module, runs: no other module spells its file names."""

import ast
from pathlib import Path

import pytest

import maskstatus
from maskstatus import runs
from maskstatus.runs import RunDir, expand_runs, oof_path

ROOT = Path(maskstatus.__file__).resolve().parent
NAMES = {runs.RUN_CONFIG, runs.FOLDS, runs.CHECKPOINTS, runs.BEST, runs.LAST, runs.METRICS, runs.PREDICTIONS, runs.OOF,
         runs.AGE_CUTS, runs.CV_CONFIG, runs.CV_METRICS, runs.REVIEW_DECISIONS, runs.REVIEW_RELABEL,
         runs.TRACKING, runs.MLRUNS}
# outputs tells run folders from others before it lets a file be written, and runs imports outputs (for its disk
# errors): importing runs back would be a cycle, so outputs spells the two names it needs.
SPELT_OUT = {"outputs.py": {runs.CV_CONFIG, runs.RUN_CONFIG, runs.CHECKPOINTS}}


def test_no_module_but_runs_spells_a_run_folder_file_name():
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "runs.py":
            continue
        allowed = SPELT_OUT.get(path.name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in NAMES - allowed:
                found.setdefault(str(path.relative_to(ROOT)), []).append(f"{node.value!r} on line {node.lineno}")
    assert found == {}


def test_the_layout_finds_runs_and_their_oof(tmp_path):
    cv = tmp_path / "cv"
    fold = RunDir(cv / "fold0").make()
    fold.config.write_text("name: x\n")
    fold.best.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="predictions/oof.csv"):
        oof_path(fold.root)
    fold.oof.write_text("person_id\n")
    assert oof_path(fold.root) == fold.root / "predictions" / "oof.csv"
    (cv / "oof.csv").write_text("person_id\n")
    assert oof_path(cv) == cv / "oof.csv"
    assert expand_runs([cv]) == [fold.root] and expand_runs([fold.root]) == [fold.root]
