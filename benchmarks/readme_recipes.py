"""The recipes table of README.md, generated from the result JSONs so that no score in it is typed by hand.

    python benchmarks/readme_recipes.py            # rewrites the block between the markers in README.md
    python benchmarks/readme_recipes.py --check    # exit 1, naming the difference, when the block is stale

RECIPES below says, for each config, what it is and which result file (and which keys in it) holds its
proxy score and its training time; the numbers themselves are read from benchmarks/results/. A result
file that is renamed or loses a key is an error naming it, so the table cannot silently lose a number.
The reading helpers (dig, interval, is_number) are those of results_index.py, which indexes the same files.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_index import dig, interval, is_number

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
COMMAND = "python benchmarks/readme_recipes.py"
BEGIN = "<!-- recipes:begin -->"
END = "<!-- recipes:end -->"
# Every score in the table is a person-bootstrap interval at this level (the project's default); a result
# file that records another level is refused rather than shown under the wrong heading.
LEVEL = 0.9


class RecipeError(Exception):
    """A result file or key named in RECIPES is missing or not a number."""


@dataclass(frozen=True)
class Score:
    label: str  # what was scored, e.g. "fold 0" or "5-fold pooled"
    file: str  # path under benchmarks/results/
    path: tuple[str, ...] = ("oof_f1",)  # keys to the F1; its interval is the same name + "_ci"
    member: str | None = None  # pick the entry of the file's "members" list whose path contains this


@dataclass(frozen=True)
class Time:
    file: str
    key: str  # seconds: "train_s" (training loops) or "wall_s" (everything the benchmark did)
    what: str  # how the seconds read, e.g. "training, fold 0"


@dataclass(frozen=True)
class Recipe:
    configs: tuple[str, ...]
    what: str
    scores: tuple[Score, ...] = ()
    time: Time | None = None
    untimed: str = "not recorded"  # the time cell when no result file records one


VOTE = "cv-ensemble-bf16-lite0-lite1-lite2aug-128px.json"
CVS = "cv-ensemble-lite0-lite1-lite2-lite2aug-128px.json"

RECIPES: tuple[Recipe, ...] = (
    Recipe(("configs/best.yaml",),
           "GPU, competition size: EfficientNet-B3 at 256×224, multi-task heads, exact age regressed, EMA, "
           "public label fixes; soft vote of the 5 fold models",
           untimed="not measured (no proxy run at this size)"),
    Recipe(("configs/best-cpu.yaml",),
           "CPU, one model: 128 px EfficientNet-Lite2, the same heads, stronger augmentation",
           (Score("fold 0", "proxy-best-cpu-fold0.json"), Score("5-fold pooled", CVS, member="lite2-aug")),
           Time("proxy-best-cpu-fold0.json", "train_s", "training a fold")),
    Recipe(("configs/vote-lite0-cpu.yaml", "configs/vote-lite1-cpu.yaml", "configs/best-cpu.yaml"),
           "CPU, best within 3 hours: soft vote of three 5-fold CVs on one folds.csv, trained in bf16",
           (Score("5-fold pooled", VOTE, ("ensemble", "oof_f1")),),
           untimed="not recorded in the result (see the benchmarks page)"),
    Recipe(("configs/vote-lite0-cpu.yaml",), "a member of the vote: EfficientNet-Lite0, light augmentation",
           (Score("5-fold pooled, bf16", VOTE, member="bf16-128-cv"),)),
    Recipe(("configs/vote-lite1-cpu.yaml",), "a member of the vote: EfficientNet-Lite1, light augmentation",
           (Score("5-fold pooled, bf16", VOTE, member="bf16-lite1"),)),
    Recipe(("configs/proxy-cpu.yaml",), "the ablation's reference: 96 px EfficientNet-Lite0, multi-task heads",
           (Score("fold 0", "proxy-cpu-fold0.json"),), Time("proxy-cpu-fold0.json", "wall_s", "fold 0 with prediction")),
    Recipe(("configs/retrospective.yaml", "configs/retrospective-cpu.yaml"),
           "a top team's published recipe: EfficientNet, multi-sample dropout, F1 loss, plateau schedule, weighted sampler",
           (Score("fold 0 (CPU variant)", "ablation/retrospective-recipe.json"),),
           Time("ablation/retrospective-recipe.json", "train_s", "training fold 0")),
    Recipe(("configs/baseline.yaml", "configs/baseline-cpu.yaml"),
           "the starter code: ResNet-18, one 18-way head, SGD, image-level split (kept to show its leak)",
           (Score("fold 0 (CPU variant)", "ablation/baseline-recipe.json"),),
           Time("ablation/baseline-recipe.json", "train_s", "training fold 0")),
    Recipe(("configs/demo.yaml",), "the demo: a tiny CPU run on synthetic data (`make demo`)",
           untimed="a few minutes"),
)


def load(file: str, results: Path) -> dict[str, Any]:
    path = results / file
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise RecipeError(f"{path} is missing: update RECIPES in benchmarks/readme_recipes.py") from None
    except ValueError as err:
        raise RecipeError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path} does not hold a JSON object")
    return data


def number(data: Any, path: tuple[str, ...], where: str) -> float:
    value = dig(data, path)
    if not is_number(value):
        raise RecipeError(f"{where} has no number at {'.'.join(path)}: update RECIPES in benchmarks/readme_recipes.py")
    return float(value)


def scored_entry(score: Score, results: Path) -> dict[str, Any]:
    """The mapping that holds the score: the file itself, or the one member whose path matches."""
    data = load(score.file, results)
    level = dig(data, (*score.path[:-1], "oof_ci", "level"))
    if is_number(level) and level != LEVEL:
        raise RecipeError(f"{score.file} records a {level * 100:g} % interval; the table shows {LEVEL * 100:g} % ones")
    if score.member is None:
        return data
    members = [m for m in data.get("members") or [] if score.member in str(dig(m, ("path",)))]
    if len(members) != 1:
        raise RecipeError(f"{score.file}: {len(members)} members match {score.member!r}, expected exactly one")
    return members[0]


def score_text(score: Score, results: Path) -> str:
    entry = scored_entry(score, results)
    where = f"{score.file}" + (f" (member {score.member})" if score.member else "")
    f1 = number(entry, score.path, where)
    ci = dig(entry, (*score.path[:-1], score.path[-1] + "_ci"))
    return f"[{score.label}](benchmarks/results/{score.file}): {f1:.3f}{interval(ci)}"


def time_text(time: Time, results: Path) -> str:
    data = load(time.file, results)
    minutes = number(data, (time.key,), time.file) / 60
    cores = dig(data, ("machine", "cores"))
    on = f", {cores}-core CPU" if is_number(cores) else ""
    return f"{minutes:.0f} min ({time.what}{on})"


def row(recipe: Recipe, results: Path) -> str:
    configs = "<br>".join(f"[`{c}`]({c})" for c in recipe.configs)
    scores = "<br>".join(score_text(s, results) for s in recipe.scores) or "not measured"
    time = time_text(recipe.time, results) if recipe.time else recipe.untimed
    return f"| {configs} | {recipe.what} | {scores} | {time} |"


def render(results: Path = RESULTS) -> str:
    """The block between the markers (markers excluded): deterministic, from the JSON files alone."""
    lines = [
        f"<!-- generated by `{COMMAND}` from benchmarks/results/; edit RECIPES there, not this table -->",
        f"| config | what it is | proxy macro F1 [{LEVEL * 100:.0f} % interval] | time |",
        "|---|---|---|---|",
        *(row(r, results) for r in RECIPES),
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str, source: str = "README.md") -> str:
    """text with the lines between BEGIN and END replaced by block."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise RecipeError(f"{source} must hold exactly one {BEGIN} ... {END} block, in that order")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def check(readme: Path = README, results: Path = RESULTS) -> list[str]:
    """The differences between the committed block and a fresh one, as text lines; [] when up to date."""
    have = readme.read_text(encoding="utf-8")
    want = replace_block(have, render(results), readme.name)
    if want == have:
        return []
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), f"{readme.name} (committed)",
                                f"{readme.name} (generated now)", lineterm="", n=0)
    return [f"the recipes table in {readme} is stale; run `{COMMAND}`", *diff]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=README, help="the file holding the block (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed block is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.readme, args.results)
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_block(text, render(args.results), args.readme.name), encoding="utf-8")
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
