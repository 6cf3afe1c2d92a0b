"""An index of benchmarks/results/: one row per result JSON, so a reader sees what each file holds at a glance.

    python benchmarks/results_index.py            # (re)writes benchmarks/results/README.md
    python benchmarks/results_index.py --check    # exit 1, naming the difference, when README.md is stale

Each row: the file (linked), what it measured (the JSON's own description when it has one: "what",
"question", "measures", else its "config", else the file name), its headline numbers where a known key
is present (out-of-fold macro F1 with its interval, an ensemble's or grouping's F1 gain, throughput,
latency), the commit it was measured on and the command that reruns it. Only the top level of
results/ is indexed; ablation/ has its own table, ablation.md, which is linked. The output depends on
the JSON files alone (sorted, no timestamps), so --check is exact and a test can keep it current.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
INDEX_NAME = "README.md"
COMMAND = "python benchmarks/results_index.py"

# Keys that describe a result in the JSON's own words, in order of preference.
DESCRIPTION_KEYS = ("what", "question", "measures", "description")

# Headline numbers: (label, path of keys into the JSON, is it a score shown with 3 decimals).
# Paths, not per-benchmark code: a new benchmark that reuses a key gets its headline for free,
# and one that lacks every key simply shows none.
F1_PATHS = (("OOF macro F1", ("oof_f1",)),
            ("ensemble OOF macro F1", ("ensemble", "oof_f1")),
            ("OOF macro F1 with grouping", ("with_grouping", "oof_f1")))
GAIN_PATHS = (("F1 gain over best member", ("gain_over_best_member", "f1_gain")),
              ("F1 gain from grouping", ("paired", "f1_gain")))
RATE_PATHS = (("images/s", ("images_per_s",)),
              ("p95 latency ms", ("latency_ms_p95",)))


def dig(data: Any, path: tuple[str, ...]) -> Any:
    """The value at path, or None when any step is missing or not a mapping."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def is_number(value: Any) -> bool:
    # bool is an int subclass; a True/False flag is no headline number.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interval(value: Any) -> str:
    """' [lo, hi]' for a two-number list, else '' (an absent or odd interval is skipped, not an error)."""
    if isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value):
        return f" [{value[0]:.3f}, {value[1]:.3f}]"
    return ""


def rate(value: Any) -> str | None:
    """A number, or a {name: number} mapping (e.g. torch and onnx throughput), as text; None if neither."""
    if is_number(value):
        return f"{value:.1f}"
    if isinstance(value, dict) and value and all(is_number(v) for v in value.values()):
        return ", ".join(f"{name} {value[name]:.1f}" for name in sorted(value))
    return None


def headline(data: dict[str, Any]) -> str:
    """The file's headline numbers, '; '-joined, or '' when it has none of the known keys."""
    parts = []
    for label, path in F1_PATHS:
        value = dig(data, path)
        if is_number(value):
            # The interval sits next to the point under the same name + "_ci" (the repo's convention).
            ci = dig(data, (*path[:-1], path[-1] + "_ci"))
            parts.append(f"{label} {value:.3f}{interval(ci)}")
            break  # one F1 per row: the first path present is the file's own score
    for label, path in GAIN_PATHS:
        value = dig(data, path)
        if is_number(value):
            ci = dig(data, (*path[:-1], path[-1] + "_ci"))
            parts.append(f"{label} {value:+.3f}{interval(ci)}")
    for label, path in RATE_PATHS:
        text = rate(dig(data, path))
        if text is not None:
            parts.append(f"{label} {text}")
    return "; ".join(parts)


def description(data: dict[str, Any], name: str) -> str:
    for key in DESCRIPTION_KEYS:
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key]
    if isinstance(data.get("config"), str):
        return f"config {data['config']}"
    return Path(name).stem


def cell(text: str) -> str:
    """Text safe inside one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """Inline code that survives backticks in the text (Markdown: use a longer fence, padded)."""
    text = " ".join(text.split())
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def short_commit(commit: str) -> str:
    """12 hex digits, keeping a suffix such as '-dirty': a result from uncommitted code must say so."""
    sha, dash, suffix = commit.partition("-")
    return sha[:12] + dash + suffix


def row(path: Path) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        # A broken file still gets its row (and the index still builds), with the reason shown.
        return f"| [{path.name}]({path.name}) | unreadable: {cell(str(error))} | | | |"
    if not isinstance(data, dict):
        data = {}
    commit = data.get("commit")
    command = data.get("command")
    commit_text = code(short_commit(str(commit))) if commit else ""
    command_text = code(str(command)) if command else ""
    return (f"| [{path.name}]({path.name}) | {cell(description(data, path.name))} | {cell(headline(data))} "
            f"| {commit_text} | {command_text} |")


def render(results: Path) -> str:
    """The README text for the results folder: deterministic (sorted by name, nothing time-dependent)."""
    files = sorted(p for p in results.glob("*.json") if p.is_file())
    lines = [
        "# Benchmark results",
        "",
        (f"Generated by `{COMMAND}` from the JSON files in this folder; do not edit by hand. "
        f"`{COMMAND} --check` (run by tests/test_results_index.py) fails when this file is stale."),
        "",
        ("One row per result file. *What* is the file's own description where it has one, else its config or name; "
        "*headline* shows the out-of-fold macro F1 with its 90 % person-bootstrap interval, F1 gains, "
        "throughput or latency where the file records them (the JSON holds everything else, "
        "including the machine); *commit* is the one it was measured on."),
        "",
    ]
    if (results / "ablation.md").is_file():
        lines += ["The ablation rows (ablation/) have their own table: [ablation.md](ablation.md).", ""]
    lines += ["| file | what | headline | commit | command |", "|---|---|---|---|---|"]
    lines += [row(p) for p in files]
    return "\n".join(lines) + "\n"


def check(results: Path) -> list[str]:
    """The differences between the committed index and a fresh one, as text lines; [] when up to date."""
    index = results / INDEX_NAME
    if not index.is_file():
        return [f"{index} is missing; run `{COMMAND}`"]
    want = render(results).splitlines()
    have = index.read_text().splitlines()
    if want == have:
        return []
    diff = list(difflib.unified_diff(have, want, f"{index} (committed)", f"{index} (generated now)", lineterm="", n=0))
    return [f"{index} is stale; run `{COMMAND}`", *diff]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed README.md is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.results)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    (args.results / INDEX_NAME).write_text(render(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
