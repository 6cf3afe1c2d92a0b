"""README.md's recipes table is generated from benchmarks/results/: it must be current, and every number read."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_recipes as rr  # noqa: E402


def test_committed_readme_table_is_up_to_date():
    problems = rr.check()
    assert problems == [], "\n".join(problems[:20])


def test_every_config_in_configs_has_a_row():
    named = {c for recipe in rr.RECIPES for c in recipe.configs}
    configs = {f"configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert configs, "no configs found: the test would pass vacuously"
    assert configs - named == set(), "configs without a row in RECIPES"
    assert named - configs == set(), "RECIPES names configs that do not exist"


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A results folder of two files and a README holding an empty block, with RECIPES pointing at them."""
    results = tmp_path / "results"
    write(results / "one.json", {"oof_f1": 0.61234, "oof_f1_ci": [0.5, 0.7], "oof_ci": {"level": 0.9},
                                 "train_s": 600.0, "machine": {"cores": 2}})
    write(results / "sub" / "vote.json", {"ensemble": {"oof_f1": 0.7, "oof_f1_ci": [0.65, 0.75]},
                                          "members": [{"path": "/x/a-cv-1", "oof_f1": 0.6},
                                                      {"path": "/x/b-cv-2", "oof_f1": 0.55, "oof_f1_ci": [0.5, 0.6]}]})
    recipes = (
        rr.Recipe(("configs/a.yaml",), "one | model", (rr.Score("fold 0", "one.json"),),
                  rr.Time("one.json", "train_s", "training")),
        rr.Recipe(("configs/a.yaml", "configs/b.yaml"), "the vote",
                  (rr.Score("pooled", "sub/vote.json", ("ensemble", "oof_f1")),
                   rr.Score("member b", "sub/vote.json", member="b-cv"))),
        rr.Recipe(("configs/c.yaml",), "unmeasured", untimed="n/a"),
    )
    monkeypatch.setattr(rr, "RECIPES", recipes)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{rr.BEGIN}\n{rr.END}\n\nafter\n")
    return readme, results


def test_rows_read_every_number_from_the_files(crafted):
    _, results = crafted
    block = rr.render(results)
    assert "| config | what it is | proxy macro F1 [90 % interval] | time |" in block
    assert ("| [`configs/a.yaml`](configs/a.yaml) | one | model | [fold 0](benchmarks/results/one.json): "
            "0.612 [0.500, 0.700] | 10 min (training, 2-core CPU) |") in block
    assert ("[pooled](benchmarks/results/sub/vote.json): 0.700 [0.650, 0.750]"
            "<br>[member b](benchmarks/results/sub/vote.json): 0.550 [0.500, 0.600] | not recorded |") in block
    assert "| [`configs/c.yaml`](configs/c.yaml) | unmeasured | not measured | n/a |" in block


def test_write_then_check_and_a_changed_number_makes_it_stale(crafted, capsys):
    readme, results = crafted
    args = ["--readme", str(readme), "--results", str(results)]
    assert rr.main([*args, "--check"]) == 1  # the empty block is stale
    assert "is stale; run `python benchmarks/readme_recipes.py`" in capsys.readouterr().err
    assert rr.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n" + rr.BEGIN) and text.endswith(rr.END + "\n\nafter\n")
    assert rr.main([*args, "--check"]) == 0
    write(results / "one.json", {"oof_f1": 0.63, "oof_f1_ci": [0.5, 0.7], "train_s": 600.0})
    assert rr.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "+| [`configs/a.yaml`]" in err and "0.630" in err


def test_a_missing_file_key_or_member_is_an_error_naming_it(crafted, capsys):
    readme, results = crafted
    args = ["--readme", str(readme), "--results", str(results)]
    (results / "one.json").unlink()
    assert rr.main(args) == 2
    assert "one.json is missing: update RECIPES" in capsys.readouterr().err
    write(results / "one.json", {"oof_f1_ci": [0.5, 0.7], "train_s": 1.0})
    assert rr.main(args) == 2
    assert "one.json has no number at oof_f1" in capsys.readouterr().err
    write(results / "one.json", {"oof_f1": 0.6, "train_s": 1.0})
    write(results / "sub" / "vote.json", {"ensemble": {"oof_f1": 0.7}, "members": [{"path": "/x/a-cv"}]})
    assert rr.main(args) == 2
    assert "0 members match 'b-cv', expected exactly one" in capsys.readouterr().err


def test_another_interval_level_or_a_missing_block_is_refused(crafted, capsys):
    readme, results = crafted
    write(results / "one.json", {"oof_f1": 0.6, "oof_ci": {"level": 0.95}, "train_s": 1.0})
    with pytest.raises(rr.RecipeError, match="records a 95 % interval"):
        rr.render(results)
    write(results / "one.json", {"oof_f1": 0.6, "train_s": 1.0})
    readme.write_text("no markers here\n")
    assert rr.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert "must hold exactly one <!-- recipes:begin -->" in capsys.readouterr().err
