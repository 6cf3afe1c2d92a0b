"""benchmarks/results/README.md is the generated index of the result JSONs: it must be current and complete."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_index  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def test_committed_index_is_up_to_date():
    problems = results_index.check(RESULTS)
    assert problems == [], "\n".join(problems[:20])


def test_every_result_json_has_a_row():
    text = (RESULTS / "README.md").read_text()
    names = sorted(p.name for p in RESULTS.glob("*.json"))
    assert names, "no result JSONs found: the test would pass vacuously"
    for name in names:
        assert f"| [{name}]({name}) |" in text, f"{name} has no row in benchmarks/results/README.md"
    # ablation/ is linked, not indexed row by row.
    assert "[ablation.md](ablation.md)" in text
    assert not any(f"]({p.name})" in text for p in (RESULTS / "ablation").glob("*.json"))


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_generated_table_and_stale_check_on_crafted_results(tmp_path, capsys):
    write(tmp_path / "b-proxy.json", {"config": "configs/x.yaml", "oof_f1": 0.61234, "oof_f1_ci": [0.5, 0.7],
                                      "commit": "0123456789abcdef0123-dirty", "command": "python a.py | tee x"})
    write(tmp_path / "a-serve.json", {"what": "requests over loopback", "images_per_s": {"torch": 2.0, "onnx": 3.0},
                                      "commit": "abc", "command": "python b.py --out `x`"})
    (tmp_path / "ablation").mkdir()
    write(tmp_path / "ablation" / "row.json", {"what": "not indexed"})

    assert results_index.check(tmp_path)[0].endswith("is missing; run `python benchmarks/results_index.py`")
    assert results_index.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    # Sorted by name; description, headline, dirty commit and pipe-escaped command all in their rows.
    assert rows == [
        ("| [a-serve.json](a-serve.json) | requests over loopback | images/s onnx 3.0, torch 2.0 | `abc` "
        "| `` python b.py --out `x` `` |"),
        ("| [b-proxy.json](b-proxy.json) | config configs/x.yaml | OOF macro F1 0.612 [0.500, 0.700] "
        "| `0123456789ab-dirty` | `python a.py \\| tee x` |"),
    ]
    assert "not indexed" not in text and "ablation.md" not in text
    assert results_index.check(tmp_path) == []
    assert results_index.main(["--results", str(tmp_path), "--check"]) == 0

    # A changed result makes the committed index stale: the check names the file and the changed row.
    write(tmp_path / "b-proxy.json", {"oof_f1": 0.7})
    assert results_index.main(["--results", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "README.md is stale" in err
    assert "+| [b-proxy.json](b-proxy.json) | b-proxy | OOF macro F1 0.700 |  |  |" in err

    # A new JSON without a row is stale too.
    (tmp_path / "README.md").write_text(results_index.render(tmp_path))
    write(tmp_path / "c-new.json", {})
    problems = results_index.check(tmp_path)
    assert any(line.startswith("+| [c-new.json]") for line in problems)


def test_headline_skips_absent_or_odd_values():
    assert results_index.headline({}) == ""
    assert results_index.headline({"oof_f1": True, "images_per_s": "fast", "oof_f1_ci": [1]}) == ""
    assert results_index.headline({"oof_f1": 0.5, "oof_f1_ci": "n/a"}) == "OOF macro F1 0.500"
    assert results_index.headline({"ensemble": {"oof_f1": 0.6, "oof_f1_ci": [0.55, 0.65]},
                                   "gain_over_best_member": {"f1_gain": -0.01}}) == \
        "ensemble OOF macro F1 0.600 [0.550, 0.650]; F1 gain over best member -0.010"
