"""The indexes of benchmarks/: what each script answers and which result files hold its answers.

    python benchmarks/results_index.py            # (re)writes benchmarks/README.md and benchmarks/results/README.md
    python benchmarks/results_index.py --check    # exit 1, naming each problem, when either is stale or a rule broken

benchmarks/README.md has a row per script: the question it answers (its docstring's first line),
whether it is a tool or a study (its ``KIND``), its current result files, and the command that
reruns it (its docstring's usage lines). benchmarks/results/README.md has a row per result JSON:
what it measured, its headline numbers where a known key is present (out-of-fold macro F1 with its
interval, an ensemble's or grouping's F1 gain, throughput, latency), the commit it was measured
on and the command that reruns it; then the ablation rows of results/ablation/ (whose table is
ablation.md) and the superseded results of results/archive/, each with what replaced it.

Both pages depend on the files alone (sorted, no timestamps), so --check is exact and a test keeps
them current. --check also enforces the folder's rules: a current result is named after the script
that wrote it (``<script name with dashes>[-<variant>].json``, the script its command runs); an
archived one names the file that replaced it and why; a result that names a config holds the
resolved config (``resolved_config``) or says why it cannot (``resolved_config_note``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
INDEX_NAME = "README.md"
ARCHIVE = "archive"
ABLATION = "ablation"
COMMAND = "python benchmarks/results_index.py"
# Modules of benchmarks/ that measure nothing themselves.
NOT_BENCHMARKS = frozenset({"common.py", Path(__file__).name})
KINDS = {
    "tool": "rerun it any time, on another config, run or commit; its result files are measurements at the commit "
            "they name",
    "study": "a closed study: it answered one question, and its result files hold the answer; rerunning it needs "
             "the runs it measured (or new ones trained the same way)",
}

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


@dataclass(frozen=True)
class Script:
    """A benchmark script as its source describes it (read with ast: nothing is imported or run)."""

    file: str  # e.g. "proxy_cv.py"
    summary: str  # the docstring's first line: the question it answers
    usage: tuple[str, ...]  # the docstring's first indented lines: how to run it
    kind: str | None  # its KIND constant

    @property
    def prefix(self) -> str:
        """The name its result files start with: the file name with dashes, e.g. "proxy-cv"."""
        return Path(self.file).stem.replace("_", "-")


def read_script(path: Path) -> Script:
    tree = ast.parse(path.read_text())
    # Not cleaned: cleaning strips the usage lines' indent from a docstring whose other lines are all indented.
    doc = ast.get_docstring(tree, clean=False) or ""
    kind = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "KIND" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            kind = node.value.value
    usage: list[str] = []
    for line in doc.splitlines()[1:]:
        if line.startswith("    "):
            usage.append(" ".join(line.split()))
        elif usage:
            break  # the first indented block only
    return Script(path.name, doc.splitlines()[0] if doc else "", tuple(usage), kind)


def read_scripts(benchmarks: Path) -> list[Script]:
    return [read_script(p) for p in sorted(benchmarks.glob("*.py")) if p.name not in NOT_BENCHMARKS]


def script_of(name: str, scripts: list[Script]) -> Script | None:
    """The script a result file name names: the longest prefix that is a script's ("proxy-cv-x" is proxy_cv's)."""
    stem = name.removesuffix(".json")
    owners = [s for s in scripts if stem == s.prefix or stem.startswith(s.prefix + "-")]
    return max(owners, key=lambda s: len(s.prefix), default=None)


def command_script(command: Any) -> str | None:
    """The benchmarks/*.py file a recorded command runs, or None."""
    try:
        words = shlex.split(str(command))
    except ValueError:
        words = str(command).split()
    return next((Path(w).name for w in words if w.endswith(".py")), None)


def load(path: Path) -> dict[str, Any] | str:
    """The JSON's top-level mapping, or the reason it cannot be read (shown, not raised: the index still builds)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable: {error}"
    return data if isinstance(data, dict) else {}


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
        # A config file may hold another recipe today: name the commit the path refers to.
        commit = data.get("commit")
        config = data["config"]
        # An absolute path names the checkout it ran in; from its configs/ on, it names the file in this repository.
        config = "configs/" + config.rsplit("/configs/", 1)[1] if "/configs/" in config else config
        return f"config {config}" + (f" as of {short_commit(str(commit))[:7]}" if commit else "")
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


def link(path: Path, results: Path) -> str:
    rel = path.relative_to(results).as_posix()
    return f"[{rel}]({rel})"


def row(path: Path, results: Path) -> str:
    data = load(path)
    if isinstance(data, str):
        return f"| {link(path, results)} | {cell(data)} | | | |"
    commit = data.get("commit")
    command = data.get("command")
    commit_text = code(short_commit(str(commit))) if commit else ""
    command_text = code(str(command)) if command else ""
    return (f"| {link(path, results)} | {cell(description(data, path.name))} | {cell(headline(data))} "
            f"| {commit_text} | {command_text} |")


def archive_row(path: Path, results: Path) -> str:
    data = load(path)
    if isinstance(data, str):
        return f"| {link(path, results)} | | {cell(data)} | |"
    by = data.get("superseded_by")
    by_text = f"[{by}]({by})" if isinstance(by, str) else ""
    commit = data.get("commit")
    return (f"| {link(path, results)} | {by_text} | {cell(str(data.get('superseded_why', '')))} "
            f"| {code(short_commit(str(commit))) if commit else ''} |")


def current_files(results: Path) -> list[Path]:
    return sorted(p for p in results.glob("*.json") if p.is_file())


def render(results: Path) -> str:
    """benchmarks/results/README.md: deterministic (sorted by name, nothing time-dependent)."""
    lines = [
        "# Benchmark results",
        "",
        (f"Generated by `{COMMAND}` from the JSON files in this folder; do not edit by hand. "
         f"`{COMMAND} --check` (run by tests/test_results_index.py) fails when this file is stale."),
        "",
        ("One row per result file. *What* is the file's own description where it has one, else its config (with the "
         "commit whose config file it was: the file may hold another recipe today) or name; *headline* shows the "
         "out-of-fold macro F1 with its 90 % person-bootstrap interval, F1 gains, throughput or latency where the "
         "file records them (the JSON holds everything else, including the machine and, where a config was "
         "trained, `resolved_config`: every setting after the overrides); *commit* is the one it was measured on. "
         "What each script answers, and how files are named: [../README.md](../README.md)."),
        "",
        "| file | what | headline | commit | command |",
        "|---|---|---|---|---|",
        *(row(p, results) for p in current_files(results)),
    ]
    ablation = sorted((results / ABLATION).glob("*.json"))
    if ablation or (results / "ablation.md").is_file():
        lines += [
            "",
            "## Ablation rows",
            "",
            ("One JSON per row of benchmarks/ablation.yaml, named after the row (`benchmarks/ablation.py` writes "
             "them and their table, [ablation.md](ablation.md), which compares every row with the reference)."),
            "",
            "| file | what | headline | commit | command |",
            "|---|---|---|---|---|",
            *(row(p, results) for p in ablation),
        ]
    archived = sorted((results / ARCHIVE).glob("*.json"))
    if archived:
        lines += [
            "",
            "## Archive",
            "",
            ("Results that a later measurement replaced, kept because the text that cites them still holds. "
             "Each names its replacement."),
            "",
            "| file | replaced by | why | commit |",
            "|---|---|---|---|",
            *(archive_row(p, results) for p in archived),
        ]
    return "\n".join(lines) + "\n"


def script_results(script: Script, scripts: list[Script], results: Path) -> str:
    """The script's current result files as links from benchmarks/, and its ablation rows as a count."""
    mine = [p for p in current_files(results) if script_of(p.name, scripts) == script]
    parts = [f"[{p.name}](results/{p.name})" for p in mine]
    if script.file == "ablation.py":
        rows = len(list((results / ABLATION).glob("*.json")))
        parts.append(f"[ablation.md](results/ablation.md) ({rows} rows in results/ablation/)")
    else:
        rows = sum(1 for p in (results / ABLATION).glob("*.json")
                   if isinstance(data := load(p), dict) and command_script(data.get("command")) == script.file)
        if rows:
            parts.append(f"{rows} row{'s' if rows > 1 else ''} of [ablation.md](results/ablation.md)")
    return ", ".join(parts) or "none committed"


def render_benchmarks(benchmarks: Path, results: Path) -> str:
    """benchmarks/README.md: one row per script, then every script's command; deterministic like :func:`render`."""
    scripts = read_scripts(benchmarks)
    lines = [
        "# Benchmarks",
        "",
        (f"Generated by `{COMMAND}` from the scripts' docstrings and `KIND` and from the result files; do not edit "
         f"by hand. `{COMMAND} --check` (run by tests/test_results_index.py) fails when this page is stale or a rule "
         "below is broken."),
        "",
        "Each script is run from the repository root as `python benchmarks/<script>.py` and writes one JSON. What "
        "every result file holds, at a glance: [results/README.md](results/README.md).",
        "",
        "*Kind*: " + "; ".join(f"**{kind}**: {text}" for kind, text in KINDS.items()) + ".",
        "",
        "| script | what it answers | kind | current results |",
        "|---|---|---|---|",
        *(f"| [{s.file}]({s.file}) | {cell(s.summary)} | {s.kind or '?'} | {script_results(s, scripts, results)} |"
          for s in scripts),
        "",
        "## How results are kept",
        "",
        ("- **Names.** A result file is named `<script name with dashes>[-<variant>].json`, so its name tells which "
         "script wrote it: `proxy-cv-vote-lite0-cpu-128px.json` is `proxy_cv.py` on `configs/vote-lite0-cpu.yaml` "
         "at 128 px. The variant says what was measured (config, size, fold, backend), never when."),
        ("- **What a JSON holds.** Its measurements, the machine, the commit it was measured on (`-dirty` when the "
         "tree had uncommitted changes), the command that wrote it and, where a config was trained or timed, "
         "`resolved_config`: every setting after the overrides, so the result stays readable after the config file "
         "changes; where trained runs were measured, `run_configs`: each run's saved config. Results older than "
         "these keys have it rebuilt from the config file at their commit "
         "(`resolved_config_source`), with `resolved_config_note` naming what could not be rebuilt."),
        ("- **Archive.** A result replaced by a later measurement of the same question moves to `results/archive/` "
         "with `superseded_by` (the file that replaced it) and `superseded_why`; the archive table of "
         "[results/README.md](results/README.md) lists them."),
        ("- **Ablation.** `ablation.py` keeps one JSON per row of `ablation.yaml` in `results/ablation/`, named "
         "after the row, and writes their table, `results/ablation.md`."),
        (f"- **New results.** Write them with the script's `--out benchmarks/results/<name>.json`, then run "
         f"`{COMMAND}`."),
        "",
        "## Commands",
        "",
        ("Each script's own example; `--help` lists every option. The exact command behind each result file is in "
         "its row of [results/README.md](results/README.md)."),
        "",
        "```bash",
    ]
    for s in scripts:
        lines += [*s.usage, ""] if s.usage else [f"python benchmarks/{s.file} --help", ""]
    lines[-1] = "```"
    return "\n".join(lines) + "\n"


def problems(benchmarks: Path, results: Path) -> list[str]:
    """Broken rules of the benchmarks folder, one line each; [] when it keeps them all."""
    scripts = read_scripts(benchmarks)
    out = [f"benchmarks/{s.file}: KIND must be one of {sorted(KINDS)} (found {s.kind!r})"
           for s in scripts if s.kind not in KINDS]
    out += [f"benchmarks/{s.file}: its docstring needs a first line (the question it answers)"
            for s in scripts if not s.summary]
    for path in current_files(results):
        data = load(path)
        owner = script_of(path.name, scripts)
        if owner is None:
            out.append(f"results/{path.name}: name it <script name with dashes>[-<variant>].json after the script "
                       f"that wrote it (scripts: {', '.join(s.prefix for s in scripts)})")
        elif isinstance(data, dict) and command_script(data.get("command")) not in (None, owner.file):
            out.append(f"results/{path.name}: named after {owner.file} but its command runs "
                       f"{command_script(data.get('command'))}")
    for path in sorted((results / ARCHIVE).glob("*.json")):
        data = load(path)
        by = data.get("superseded_by") if isinstance(data, dict) else None
        if not isinstance(by, str) or not (results / by).is_file():
            out.append(f"results/{ARCHIVE}/{path.name}: superseded_by must name the result file (relative to "
                       f"results/) that replaced it (found {by!r})")
        elif not isinstance(data, dict) or not str(data.get("superseded_why", "")).strip():
            out.append(f"results/{ARCHIVE}/{path.name}: superseded_why must say why {by} replaced it")
    for path in sorted(results.rglob("*.json")):
        data = load(path)
        if isinstance(data, dict) and "config" in data and not (
                isinstance(data.get("resolved_config"), dict) or str(data.get("resolved_config_note", "")).strip()):
            out.append(f"results/{path.relative_to(results).as_posix()}: names config {data['config']} but holds "
                       "neither resolved_config nor resolved_config_note")
    return out


def stale(path: Path, want: str) -> list[str]:
    """The differences between a committed page and a fresh one, as text lines; [] when it is up to date."""
    if not path.is_file():
        return [f"{path} is missing; run `{COMMAND}`"]
    have = path.read_text().splitlines()
    if want.splitlines() == have:
        return []
    diff = difflib.unified_diff(have, want.splitlines(), f"{path} (committed)", f"{path} (generated now)",
                                lineterm="", n=0)
    return [f"{path} is stale; run `{COMMAND}`", *diff]


def check(results: Path, benchmarks: Path | None = None) -> list[str]:
    """Everything --check reports: stale pages and broken rules; [] when all is well.

    ``benchmarks`` (the scripts' folder) adds its page and the rules; without it only the results index is checked.
    """
    out = stale(results / INDEX_NAME, render(results))
    if benchmarks is not None:
        out += stale(benchmarks / INDEX_NAME, render_benchmarks(benchmarks, results)) + problems(benchmarks, results)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="the scripts' folder, whose README.md is written too (default: the results folder's "
                             "parent)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is stale or a rule is broken")
    args = parser.parse_args(argv)
    benchmarks = args.benchmarks or args.results.resolve().parent
    if args.check:
        found = check(args.results, benchmarks)
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    (args.results / INDEX_NAME).write_text(render(args.results))
    (benchmarks / INDEX_NAME).write_text(render_benchmarks(benchmarks, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
