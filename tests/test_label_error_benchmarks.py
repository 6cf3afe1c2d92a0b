"""benchmarks/label_errors.py (every ranker on the same planted draws) on a tiny synthetic OOF table."""

import json
import sys
from pathlib import Path

from data_builders import uneven_oof

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_label_errors_benchmark_compares_rankers_on_the_same_draws(tmp_path):
    import label_errors

    uneven_oof(people=40).to_csv(tmp_path / "oof.csv", index=False)
    out = tmp_path / "label-errors.json"
    args = ["--oof", str(tmp_path / "oof.csv"), "--out", str(out), "--gender", "5", "--age", "5", "--swap", "3",
            "--draws", "3", "--top", "5", "--min-score", "0.2", "--rankers", "confidence,cleanlab"]
    assert label_errors.main(args) == 0
    report = json.loads(out.read_text())
    assert report["rankers"] == ["confidence", "cleanlab"] and report["default_ranker"] == "confidence"
    assert set(report["results"]) == {"confidence", "cleanlab"}
    for ranker in report["rankers"]:
        assert set(report["results"][ranker]) == {"age_neighbour", "age_random"}
        recall = report["results"][ranker]["age_neighbour"]["overall"]["recall"]
        assert recall["min"] <= recall["lo"] <= recall["mean"] <= recall["hi"] <= recall["max"]
        assert set(report["untouched_listed"][ranker]) == {"gender", "age", "mask_swap"}
    diff = report["differences"]["age_random"]["cleanlab - confidence"]["overall"]
    means = [report["results"][r]["age_random"]["overall"]["recall"]["mean"] for r in ("confidence", "cleanlab")]
    assert abs(diff["mean"] - (means[1] - means[0])) < 1e-9
    better = report["better"]["age_random"]
    assert better["ranker"] in report["rankers"] and better["pooled_recall"] == max(means)
    assert {"machine", "commit", "command"} <= set(report)
