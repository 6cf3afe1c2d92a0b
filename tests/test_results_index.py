"""benchmarks/README.md and benchmarks/results/README.md are generated from the scripts and the result JSONs:
they must be current and complete, and the results folder must keep its rules."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_index  # noqa: E402

BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"


def test_committed_pages_are_up_to_date_and_the_rules_kept():
    problems = results_index.check(RESULTS, BENCHMARKS)
    assert problems == [], "\n".join(problems[:20])


def test_every_result_json_is_listed():
    index = (RESULTS / "README.md").read_text()
    scripts_page = (BENCHMARKS / "README.md").read_text()
    current = sorted(p.name for p in RESULTS.glob("*.json"))
    kept = sorted(p.relative_to(RESULTS).as_posix() for folder in ("ablation", "archive")
                  for p in (RESULTS / folder).glob("*.json"))
    assert current and kept, "no result JSONs found: the test would pass vacuously"
    for name in current:
        assert f"| [{name}]({name}) |" in index, f"{name} has no row in benchmarks/results/README.md"
        assert f"[{name}](results/{name})" in scripts_page, f"{name} is not listed in benchmarks/README.md"
    for name in kept:
        assert f"| [{name}]({name}) |" in index, f"{name} has no row in benchmarks/results/README.md"
    assert "[ablation.md](ablation.md)" in index


def test_every_result_naming_a_config_holds_its_resolved_config():
    named = 0
    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        if "config" not in data:
            continue
        named += 1
        resolved = data.get("resolved_config")
        if resolved is None:
            assert data.get("resolved_config_note"), f"{path.name}: neither resolved_config nor a note"
        else:  # the whole validated config, not a copy of the overrides
            assert {"data", "split", "model", "loss", "optimizer", "train"} <= set(resolved), path.name
    assert named > 10


def test_archived_results_name_what_replaced_them():
    archived = sorted((RESULTS / "archive").glob("*.json"))
    assert archived
    for path in archived:
        data = json.loads(path.read_text())
        assert (RESULTS / data["superseded_by"]).is_file() and data["superseded_why"], path.name


def test_every_benchmark_script_says_what_it_answers_and_its_kind():
    scripts = results_index.read_scripts(BENCHMARKS)
    assert {s.file for s in scripts} == {p.name for p in BENCHMARKS.glob("*.py")} - {"common.py", "results_index.py"}
    for script in scripts:
        assert script.kind in results_index.KINDS and script.summary and script.usage, script.file
        assert script.usage[0].startswith(f"python benchmarks/{script.file}"), script.file


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


SERVE_SCRIPT = '''"""How fast does it serve? Requests over loopback.

    python benchmarks/a_serve.py --out benchmarks/results/a-serve.json
"""

KIND = "tool"
'''
PROXY_SCRIPT = '''"""Does the recipe train well? One fold.

    python benchmarks/b_proxy.py --config configs/x.yaml   # one fold
    python benchmarks/b_proxy.py --help
"""

import sys

KIND = "study"
'''


def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A benchmarks folder of two scripts and a results folder that keeps every rule."""
    bench = tmp_path / "bench"
    results = bench / "results"
    (results / "ablation").mkdir(parents=True)
    (results / "archive").mkdir()
    (bench / "a_serve.py").write_text(SERVE_SCRIPT)
    (bench / "b_proxy.py").write_text(PROXY_SCRIPT)
    (bench / "common.py").write_text("KIND = None  # shared helpers: no benchmark\n")
    write(results / "b-proxy.json", {"config": "/elsewhere/configs/x.yaml", "oof_f1": 0.61234, "oof_f1_ci": [0.5, 0.7],
                                     "commit": "0123456789abcdef0123-dirty", "command": "python b_proxy.py | tee x",
                                     "resolved_config": {"model": {}}})
    write(results / "a-serve.json", {"what": "requests over loopback", "images_per_s": {"torch": 2.0, "onnx": 3.0},
                                     "commit": "abc", "command": "python benchmarks/a_serve.py --out `x`"})
    write(results / "ablation" / "row.json", {"oof_f1": 0.5, "command": "python b_proxy.py --fold 0"})
    write(results / "archive" / "b-proxy-old.json", {"oof_f1": 0.4, "superseded_by": "b-proxy.json",
                                                    "superseded_why": "a bug | fixed since", "commit": "def"})
    return bench, results


def test_generated_pages_and_stale_check_on_crafted_results(tmp_path, capsys):
    bench, results = crafted(tmp_path)
    assert results_index.check(results, bench)[0].endswith("is missing; run `python benchmarks/results_index.py`")
    assert results_index.main(["--results", str(results)]) == 0  # the scripts' folder: the results' parent
    text = (results / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    # Sorted by name; description (a config's path from configs/ on, with its commit), headline, dirty commit and
    # pipe-escaped command all in their rows; then the ablation rows, then the archive with each replacement.
    assert rows == [
        ("| [a-serve.json](a-serve.json) | requests over loopback | images/s onnx 3.0, torch 2.0 | `abc` "
         "| `` python benchmarks/a_serve.py --out `x` `` |"),
        ("| [b-proxy.json](b-proxy.json) | config configs/x.yaml as of 0123456 | OOF macro F1 0.612 [0.500, 0.700] "
         "| `0123456789ab-dirty` | `python b_proxy.py \\| tee x` |"),
        "| [ablation/row.json](ablation/row.json) | row | OOF macro F1 0.500 |  | `python b_proxy.py --fold 0` |",
        "| [archive/b-proxy-old.json](archive/b-proxy-old.json) | [b-proxy.json](b-proxy.json) | a bug \\| fixed since "
        "| `def` |",
    ]
    page = (bench / "README.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| [")]
    assert rows == [
        "| [a_serve.py](a_serve.py) | How fast does it serve? Requests over loopback. | tool "
        "| [a-serve.json](results/a-serve.json) |",
        "| [b_proxy.py](b_proxy.py) | Does the recipe train well? One fold. | study "
        "| [b-proxy.json](results/b-proxy.json), 1 row of [ablation.md](results/ablation.md) |",
    ]
    commands = page.split("```bash\n")[1].split("```")[0].splitlines()
    assert commands == ["python benchmarks/a_serve.py --out benchmarks/results/a-serve.json", "",
                        "python benchmarks/b_proxy.py --config configs/x.yaml # one fold",
                        "python benchmarks/b_proxy.py --help"]
    assert results_index.check(results, bench) == []
    assert results_index.main(["--results", str(results), "--check"]) == 0

    # A changed result makes the committed index stale: the check names the file and the changed row.
    write(results / "b-proxy.json", {"oof_f1": 0.7, "command": "python b_proxy.py"})
    assert results_index.main(["--results", str(results), "--check"]) == 1
    err = capsys.readouterr().err
    assert "results/README.md is stale" in err
    assert "+| [b-proxy.json](b-proxy.json) | b-proxy | OOF macro F1 0.700 |  | `python b_proxy.py` |" in err

    # A new JSON without a row is stale too, in both pages.
    assert results_index.main(["--results", str(results)]) == 0
    write(results / "a-serve-new.json", {})
    problems = results_index.check(results, bench)
    assert any(line.startswith("+| [a-serve-new.json]") for line in problems)
    assert any(line.startswith("+| [a_serve.py]") and "a-serve-new.json" in line for line in problems)


@pytest.mark.parametrize(("path", "data", "problem"), [
    ("c-misnamed.json", {}, "results/c-misnamed.json: name it <script name with dashes>"),
    ("a-serve-other.json", {"command": "python benchmarks/b_proxy.py"},
     "results/a-serve-other.json: named after a_serve.py but its command runs b_proxy.py"),
    ("archive/x.json", {"superseded_by": "gone.json", "superseded_why": "?"},
     "results/archive/x.json: superseded_by must name the result file"),
    ("archive/y.json", {"superseded_by": "a-serve.json"}, "results/archive/y.json: superseded_why must say why"),
    ("ablation/z.json", {"config": "configs/x.yaml"},
     "results/ablation/z.json: names config configs/x.yaml but holds neither resolved_config nor resolved_config_note"),
])
def test_check_names_each_broken_rule(tmp_path, path, data, problem):
    bench, results = crafted(tmp_path)
    assert results_index.problems(bench, results) == []
    write(results / path, data)
    assert [line for line in results_index.problems(bench, results) if line.startswith(problem)], problem


def test_a_config_note_stands_for_the_resolved_config_and_a_script_needs_a_kind(tmp_path):
    bench, results = crafted(tmp_path)
    write(results / "b-proxy-old-config.json", {"config": "configs/x.yaml", "command": "python b_proxy.py",
                                                "resolved_config_note": "keys no longer validate: model.old_key"})
    (bench / "c_new.py").write_text('"""What does it answer?"""\n')
    assert results_index.problems(bench, results) == [
        "benchmarks/c_new.py: KIND must be one of ['study', 'tool'] (found None)"]


def test_headline_skips_absent_or_odd_values():
    assert results_index.headline({}) == ""
    assert results_index.headline({"oof_f1": True, "images_per_s": "fast", "oof_f1_ci": [1]}) == ""
    assert results_index.headline({"oof_f1": 0.5, "oof_f1_ci": "n/a"}) == "OOF macro F1 0.500"
    assert results_index.headline({"ensemble": {"oof_f1": 0.6, "oof_f1_ci": [0.55, 0.65]},
                                   "gain_over_best_member": {"f1_gain": -0.01}}) == \
        "ensemble OOF macro F1 0.600 [0.550, 0.650]; F1 gain over best member -0.010"
