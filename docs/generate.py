"""The generated pages of the documentation site, built from their sources every time the site is built.

    reference/config.md  from the pydantic models of maskstatus.config (every key: type, default, allowed values,
                         description)
    reference/cli.md     from the argparse parser of maskstatus.cli.build_parser() (every command and option)
    benchmarks.md        from benchmarks/results/*.json (read with benchmarks/results_index.py) and the ablation
                         rows (benchmarks/ablation.py's own table)

docs/hooks.py hands these pages to mkdocs as virtual files, so they never exist in docs/ and cannot go stale or be
edited by hand. To read one without building the site:

    python docs/generate.py --out /tmp/pages        # writes the three pages there
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

ROOT = Path(__file__).resolve().parent.parent
# The checkout's own code and results, whatever maskstatus an environment has installed: the pages describe
# the source tree they are built from.
for _path in (ROOT / "benchmarks", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import results_index  # noqa: E402  (benchmarks/results_index.py: how result JSONs are read and summarised)

from maskstatus import config as config_module  # noqa: E402
from maskstatus.cli import build_parser  # noqa: E402

CONFIG_PAGE = "reference/config.md"
CLI_PAGE = "reference/cli.md"
BENCHMARKS_PAGE = "benchmarks.md"
GENERATED_NOTE = ("This page is generated from {source} each time the site is built (docs/generate.py); "
                  "edit the source, not this page.")


# ---- text helpers

def _markdown_text(text: str) -> str:
    """Plain text safe in a Markdown table cell: one line, and outside `code` no tag, emphasis or pipe."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    return results_index.cell("`".join(parts))


def _code(value: str) -> str:
    return results_index.code(value)


def _anchor(dotted: str) -> str:
    return dotted.replace(".", "-").replace("_", "-")


# ---- configuration reference

def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_text(annotation: Any) -> str:
    """A config annotation in YAML terms: int, number, path, list of ..., one of the Literal's values."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is typing.Literal:
        values = ", ".join(_code(json.dumps(a)) for a in args)
        return values if len(args) == 1 else f"one of {values}"
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        names = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and Ellipsis not in args:
            return "[" + ", ".join(_type_text(a) for a in args) + "]"
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}" if args else "mapping"
    if _is_section(annotation):
        return "section"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", Any: "any"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata: list[Any]) -> list[str]:
    """The numeric bounds among pydantic field metadata (Field(gt=..., le=...)), as '> 0', '<= 1'."""
    out = []
    for item in metadata:
        for cls, attr, sign in ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"),
                                (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "≤")):
            if isinstance(item, cls):
                out.append(f"{sign} {getattr(item, attr)}")
    return out


def _nested_bounds(annotation: Any) -> list[str]:
    """Bounds written inside the annotation (Union[Literal['auto'], Annotated[int, Field(ge=0)]])."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        found = []
        for item in extra:
            found += _bounds(item.metadata) if isinstance(item, FieldInfo) else _bounds([item])
        return found + _nested_bounds(base)
    return [b for a in typing.get_args(annotation) for b in _nested_bounds(a)]


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""  # a section: its keys have their own defaults
    value = to_jsonable_python(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _code(str(value))
    return _code(json.dumps(value))


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of the model and every section under it, depth first in field order."""
    yield prefix, model
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is not None:
            yield from _sections(section, f"{prefix}.{name}" if prefix else name)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds, also when it is optional (Optional[PseudoConfig]) or a list of them."""
    if _is_section(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def config_fields() -> list[tuple[str, str, FieldInfo]]:
    """(section path, key, field) of every key of every section, for the page and for the tests."""
    return [(path, name, field) for path, model in _sections(config_module.Config)
            for name, field in model.model_fields.items()]


def _config_row(path: str, name: str, field: FieldInfo) -> str:
    section = _section_model(field.annotation)
    key = f"{path}.{name}" if path else name
    if section is not None:
        kind = "list of sections" if typing.get_origin(field.annotation) is list else "section"
        if type(None) in typing.get_args(field.annotation):
            kind += " or null"
        type_text = f"{kind}: [{key}](#{_anchor(key)})"
    else:
        type_text = _type_text(field.annotation)
    type_text = ", ".join([type_text, *_bounds(field.metadata), *_nested_bounds(field.annotation)])
    # Each key is a link target of its own, named by its dotted key: reference/config.md#train.ema_decay.
    return (f"| <span id=\"{key}\"></span>`{name}` | {type_text} | {_default_text(field)} "
            f"| {_markdown_text(field.description or '')} |")


def config_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        GENERATED_NOTE.format(source="the pydantic models in `src/maskstatus/config.py`"),
        "",
        "A config is a YAML file of these sections (see [Configuration](../configuration.md) for how configs are "
        "written, combined and overridden). Every key is optional unless its default says *required*; an unknown "
        "key is an error that names it. On the command line any key can be set as `section.key=value`, e.g. "
        "`train.epochs=3` or `'cache.size=[128,128]'` (the value is read as YAML). Link to a section by its "
        "dotted name with dashes (`#train-sampler`) and to a key by its dotted name (`#train.ema_decay`).",
        "",
    ]
    for path, model in _sections(config_module.Config):
        title = f"`{path}`" if path else "Top level"
        lines += [f"## {title} {{#{_anchor(path) if path else 'top-level'}}}", ""]
        doc = model.__doc__ if model.__doc__ and model.__doc__ is not BaseModel.__doc__ else ""
        if doc and model is not config_module.Config:
            lines += [_markdown_text(doc.strip().split("\n\n")[0]), ""]
        lines += ["| key | type and bounds | default | description |", "|---|---|---|---|"]
        lines += [_config_row(path, name, field) for name, field in model.model_fields.items()]
        lines.append("")
    return "\n".join(lines)


# ---- CLI reference

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _help_text(action: argparse.Action, prog: str) -> str:
    """The help as argparse prints it: %(default)s and the like filled in, %% made %."""
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        text = text % params
    return text


def _option_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
        return ""
    return _code(str(action.default))


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(_code(s) for s in action.option_strings)
            if action.metavar or action.nargs != 0:
                metavar = action.metavar or action.dest.upper()
                names += f" {_markdown_text(str(metavar))}" if action.nargs != 0 else ""
        else:
            names = _code(str(action.metavar or action.dest)) + (" ..." if action.nargs in ("*", "+") else "")
        choices = ", ".join(_code(str(c)) for c in action.choices) if action.choices else ""
        rows.append(f"| {names} | {_option_default(action)} | {choices} | "
                    f"{_markdown_text(_help_text(action, parser.prog))} |")
    return rows


def cli_commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command name, parser) of every subcommand, for the page and for the tests."""
    return [(name, sub) for name, _, sub in _subcommands(build_parser())]


def _usage(parser: argparse.ArgumentParser) -> str:
    # argparse wraps usage at the terminal's width: a fixed width makes the page the same everywhere.
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_usage().removeprefix("usage: ").strip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _command_anchor(command: str) -> str:
    """A command's heading anchor: ``cv merge`` (two words on the command line) is ``cv-merge``."""
    return command.replace(" ", "-")


def cli_reference() -> str:
    parser = build_parser()
    commands = _subcommands(parser)
    lines = [
        "# Command-line reference",
        "",
        GENERATED_NOTE.format(source="the argument parser, `maskstatus.cli.build_parser()`"),
        "",
        _markdown_text(parser.description or ""),
        "",
        "```text",
        _usage(parser),
        "```",
        "",
        "| option | default | choices | description |",
        "|---|---|---|---|",
        *_argument_rows(parser),
        "",
        "An error you can fix (a wrong argument, a missing file, an invalid config) is printed as one line "
        "starting `error:` and the command exits with status 2.",
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "|---|---|",
        *[f"| [`{name}`](#{_command_anchor(name)}) | {_markdown_text(help_)} |" for name, help_, _ in commands],
        "",
    ]
    for name, help_, sub in commands:
        lines += [f"## `maskstatus {name}` {{#{_command_anchor(name)}}}", "", _markdown_text(help_), ""]
        if sub.description:
            lines += [_markdown_text(sub.description), ""]
        lines += ["```text", _usage(sub), "```", "",
                  "| argument | default | choices | description |", "|---|---|---|---|",
                  *_argument_rows(sub), ""]
    return "\n".join(lines)


# ---- benchmarks

def _f1(value: Any, ci: Any = None) -> str:
    if not results_index.is_number(value) or not math.isfinite(value):
        return "—"
    return f"{value:.3f}{results_index.interval(ci)}"


def _gain(value: Any, ci: Any = None) -> str:
    if not results_index.is_number(value):
        return "—"
    return f"{value:+.3f}{results_index.interval(ci)}"


def _beyond_noise(ci: Any) -> str:
    """Whether a paired gain's interval excludes 0: the verdict the tables draw, from the numbers alone."""
    if not (isinstance(ci, list) and len(ci) == 2 and all(results_index.is_number(v) for v in ci)):
        return ""
    return "gain" if ci[0] > 0 else "loss" if ci[1] < 0 else "within noise"


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if results_index.is_number(value) else "—"


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if results_index.is_number(seconds) else "—"


def _run_name(path: Any) -> str:
    """A run or CV folder's name without its timestamp: /x/lite1-128-cv-20261130-111028 -> lite1-128-cv."""
    parts = [p for p in Path(str(path)).parts if p not in ("predictions", "/")]
    # An OOF CSV is named by the folder it sits in: .../r128-years-<time>/predictions/oof.csv -> r128-years/oof.csv
    name = "/".join(parts[-2:]) if parts and parts[-1].endswith(".csv") else (parts[-1] if parts else "")
    return re.sub(r"-\d{8}-\d{6}", "", name)


def _machine(data: dict[str, Any]) -> str:
    machine = data.get("machine") or {}
    if not isinstance(machine, dict):
        return ""
    name = machine.get("gpu") or machine.get("cpu") or machine.get("processor") or ""
    cores = machine.get("cores")
    return f"{name}, {cores} cores" if name and cores else str(name)


def _commit(data: dict[str, Any]) -> str:
    commit = data.get("commit")
    return _code(results_index.short_commit(str(commit))) if commit else ""


def _file(name: str) -> str:
    return _code(name)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows], ""]


def _markdown_cell(text: str) -> str:
    # Cells built here are Markdown already (code spans, numbers); only line breaks and bare pipes need care.
    return " ".join(str(text).split())


def _proxy_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        folds = d.get("folds")
        scope = f"{len(folds)} folds pooled" if isinstance(folds, list) else f"fold {d.get('fold', '?')}"
        overrides = " ".join(_code(o) for o in d.get("overrides") or [])
        rows.append([_file(name), _code(str(d.get("config", "?"))) + (f" {overrides}" if overrides else ""), scope,
                     _f1(d.get("oof_f1"), d.get("oof_f1_ci")), _f1(d.get("oof_mask_f1")),
                     _f1(d.get("oof_gender_f1")), _f1(d.get("oof_age_f1")), _num(d.get("train_images_per_s")),
                     _minutes(d.get("train_s")), _machine(d), _commit(d)])
    return _table(["file", "config", "scored on", "OOF macro F1 [90 % CI]", "mask F1", "gender F1", "age F1",
                   "train img/s", "train min", "machine", "commit"], rows)


def _ensemble_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        members = d.get("members") or []
        ens, gain = d.get("ensemble") or {}, d.get("gain_over_best_member") or {}
        tuned = (d.get("tuned_cuts_cross_fitted") or {}).get("ensemble") or {}
        member_text = "; ".join(f"{_run_name(m.get('path'))} {_f1(m.get('oof_f1'))}" for m in members
                                if isinstance(m, dict))
        rows.append([_file(name), _markdown_text(member_text), _f1(ens.get("oof_f1"), ens.get("oof_f1_ci")),
                     _gain(gain.get("f1_gain"), gain.get("f1_gain_ci")), _beyond_noise(gain.get("f1_gain_ci")),
                     _f1(tuned.get("oof_f1")), _commit(d)])
    return _table(["file", "members (their OOF macro F1)", "soft vote OOF macro F1 [90 % CI]",
                   "gain over best member [90 % CI]", "verdict", "with age cuts tuned (cross-fitted)", "commit"], rows)


def _headroom_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        where = d.get("where_the_score_goes")
        if not isinstance(where, dict):
            continue
        room = where.get("headroom") or {}
        bands = [b for b in where.get("age_by_band") or [] if isinstance(b, dict)]
        ends = "; ".join(f"{b.get('band')}: {b['bias']:+.1f}" for b in (bands[0], bands[-1])
                         if results_index.is_number(b.get("bias"))) if bands else "—"
        rows.append([_file(name), _f1(room.get("f1")), _f1(room.get("f1_true_mask")), _f1(room.get("f1_true_gender")),
                     _f1(room.get("f1_true_age")), _num(where.get("age_mae")), _markdown_text(ends)])
    return _table(["file", "macro F1", "every mask right", "every gender right", "every age group right",
                   "age off by (mean years)", "age bias in years, youngest and oldest band"], rows)


def _grouping_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        without, with_, paired = (d.get(k) or {} for k in ("without_grouping", "with_grouping", "paired"))
        clustering = d.get("clustering") or {}
        rows.append([_file(name), _markdown_text(_run_name(d.get("run"))),
                     _f1(without.get("oof_f1"), without.get("oof_f1_ci")),
                     _f1(with_.get("oof_f1"), with_.get("oof_f1_ci")),
                     _gain(paired.get("f1_gain"), paired.get("f1_gain_ci")), _beyond_noise(paired.get("f1_gain_ci")),
                     _num(clustering.get("people_found_whole"), 3)])
    return _table(["file", "run", "OOF macro F1 without", "with grouping", "paired gain [90 % CI]", "verdict",
                   "share of people found whole"], rows)


def _learning_curve_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        for size in d.get("sizes") or []:
            if isinstance(size, dict):
                gain = size.get("against_all") if isinstance(size.get("against_all"), dict) else {}
                rows.append([_file(name), _num(size.get("training_people"), 0),
                             _f1(size.get("oof_f1"), size.get("oof_f1_ci")),
                             _gain(gain.get("f1_gain"), gain.get("f1_gain_ci")), _beyond_noise(gain.get("f1_gain_ci"))])
    return _table(["file", "training people", "OOF macro F1 on the held-out fold [90 % CI]",
                   "against the most people, paired [90 % CI]", "verdict"], rows)


def _rates_rows(results: list[tuple[str, dict[str, Any]]], key: str, label: str) -> list[str]:
    """Throughput per variant ({name: images/s}) of predict_cpu and train_step files, one row per file."""
    rows = []
    for name, d in results:
        rates = d.get(key) or {}
        speedups = d.get("speedup_over_torch") or d.get("speedup_over_first") or {}
        text = "; ".join(f"{variant} {_num(rate)}" + (f" (×{_num(speedups[variant], 2)})" if variant in speedups
                                                       else "")
                         for variant, rate in sorted(rates.items()))
        size = d.get("image_size") or d.get("images") or ""
        rows.append([_file(name), _markdown_text(_run_name(d.get("run") or d.get("config") or "")),
                     _markdown_text(str(size)), text, _machine(d)])
    return _table(["file", "run or config", "images or size", label, "machine"], rows)


def _serve_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        server = d.get("server") or {}
        rows.append([_file(name), str(server.get("backend", "torch")), "yes" if server.get("face_crop") else "no",
                     f"{d.get('clients', '?')} × {d.get('images_per_request', '?')}", _num(d.get("images_per_s")),
                     _num(d.get("latency_ms_p50"), 0), _num(d.get("latency_ms_p95"), 0),
                     f"{d.get('requests_ok', '?')}/{d.get('requests', '?')}", _machine(d)])
    return _table(["file", "backend", "face crop", "clients × images a request", "images/s", "p50 ms", "p95 ms",
                   "requests answered", "machine"], rows)


def _ranker_results(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{ranker: {age mode: report}} of a label_errors JSON; a file from before the rankers is the confidence one's."""
    results = d.get("results") or {}
    if any(isinstance(v, dict) and "per_task" in v for v in results.values()):
        return {"confidence": results}
    return {r: v for r, v in results.items() if isinstance(v, dict)}


def _recall(summary: Any) -> str:
    """Mean recall over the draws, with the central 90 % of the draws where the file has it."""
    if not isinstance(summary, dict) or not results_index.is_number(summary.get("mean")):
        return "—"
    lo, hi = summary.get("lo"), summary.get("hi")
    spread = f" [{lo:.2f}, {hi:.2f}]" if results_index.is_number(lo) and results_index.is_number(hi) else ""
    return f"{summary['mean']:.2f}{spread}"


def _label_error_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows, diffs = [], []
    for name, d in results:
        default = d.get("default_ranker")
        for ranker, by_mode in sorted(_ranker_results(d).items()):
            for kind, result in sorted(by_mode.items()):
                per_task = result.get("per_task") or {}
                recall = {task: v.get("recall") for task, v in per_task.items()}
                overall = (result.get("overall") or {}).get("recall")
                shown = f"{ranker} (default)" if ranker == default else ranker
                rows.append([_file(name), _markdown_text(_run_name(d.get("oof"))), _markdown_text(shown), kind,
                             _num(d.get("top"), 0), *[_recall(recall.get(t)) for t in ("gender", "age", "mask_swap")],
                             _recall(overall)])
        for kind, pairs in sorted((d.get("differences") or {}).items()):
            for pair, by_task in sorted(pairs.items()):
                overall = by_task.get("overall") or {}
                ci = [overall.get("mean_lo"), overall.get("mean_hi")]
                diffs.append([_file(name), kind, _markdown_text(pair),
                              *[_gain((by_task.get(t) or {}).get("mean")) for t in ("gender", "age", "mask_swap")],
                              _gain(overall.get("mean"), ci), _beyond_noise(ci)])
    table = _table(["file", "out-of-fold predictions", "ranker", "planted age errors", "top rows kept",
                    "gender recall", "age recall", "mask swap recall", "pooled recall"], rows)
    if diffs:
        table += ["Paired on the same draws: the recall of the first ranker minus the second's, per task and "
                  "pooled, with the 90 % bootstrap interval of the pooled mean over the draws.", "",
                  *_table(["file", "planted age errors", "rankers", "gender", "age", "mask swap",
                           "pooled [90 % CI]", "verdict"], diffs)]
    return table


def _sweep_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        counts, epochs, vs = d.get("counts") or {}, d.get("epochs") or {}, d.get("best_vs_baseline") or {}
        best, base = vs.get("best") or {}, vs.get("baseline") or {}
        trials = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        saved = f"{epochs.get('saved_by_pruning', '—')} of {epochs.get('if_none_pruned', '—')}"
        rows.append([_file(name), _code(str(d.get("config", "?"))), f"fold {d.get('fold', '?')}", trials, saved,
                     _f1(base.get("oof_f1"), base.get("oof_f1_ci")), _f1(best.get("oof_f1"), best.get("oof_f1_ci")),
                     _gain(vs.get("f1_gain"), vs.get("f1_gain_ci")), _beyond_noise(vs.get("f1_gain_ci")),
                     _minutes(d.get("wall_s")), _machine(d), _commit(d)])
    return _table(["file", "base config", "scored on", "trials", "epochs saved by pruning", "baseline F1 [90 % CI]",
                   "best trial F1", "paired gain", "verdict", "wall min", "machine", "commit"], rows)


def _quantize_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        base = d.get("float32") or {}
        speed = d.get("model_only_images_per_s") or {}
        rows.append([_file(name), "float32", _f1(base.get("macro_f1")), "1.000", _num(speed.get("float32")),
                     _num(base.get("file_mb"))])
        for variant, v in sorted((d.get("int8") or {}).items()):
            rows.append([_file(name), _markdown_text(f"{variant} (float kept: {v.get('kept_in_float', 'none')})"),
                         _f1(v.get("macro_f1")), _num(v.get("answer_agreement"), 3), _num(speed.get(variant)),
                         _num(v.get("file_mb"))])
    return _table(["file", "model", "macro F1", "same answer as float32", "model-only images/s", "MB"], rows)


def _cli_error_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        for case in d.get("results") or []:
            if isinstance(case, dict):
                codes = ", ".join(str(c) for c in sorted(set(case.get("exit_codes") or [])))
                rows.append([_file(name), _markdown_text(str(case.get("case", ""))), _num(case.get("median_s"), 2),
                             _num(case.get("max_rss_mb"), 0), codes])
    return _table(["file", "mistake", "median s", "peak MB", "exit status"], rows)


def _abuse_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        rss = d.get("rss_mb") or {}
        rows.append([_file(name), _num(rss.get("idle_after_first_answer"), 0), _num(rss.get("peak_vmhwm"), 0),
                     _num(rss.get("budget"), 0), _yes(d.get("within_budget")), _yes(d.get("health_always_under_1s")),
                     _yes(d.get("answers_after_the_attack"))])
    return _table(["file", "idle MB", "peak MB", "budget MB", "within budget", "/health always under 1 s",
                   "answers afterwards"], rows)


def _same_seed_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = []
    for name, d in results:
        diffs = d.get("max_abs_diff") or {}
        differing = ", ".join(f"{_code(str(c))} (by at most {diffs[c]:.1e})" if results_index.is_number(diffs.get(c))
                              else _code(str(c)) for c in d.get("differing_columns") or []) or "none"
        rows.append([_file(name), _markdown_text(f"{d.get('base', '?')} against {d.get('new', '?')}"),
                     _num(d.get("epochs"), 0), differing, _yes(d.get("submission_identical"))])
    return _table(["file", "commits", "epochs", "metric columns that differ", "same submission"], rows)


def _yes(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "—"


def _generic_rows(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = [[_file(name), _markdown_text(results_index.description(d, name)),
             _markdown_text(results_index.headline(d)) or "—",
             _commit(d)] for name, d in results]
    return _table(["file", "what", "headline", "commit"], rows)


# Each study: the script whose results it shows (taken from the JSON's own "command"), its title, what it asks
# and how, and how its table is made. Prose carries no numbers: every number on the page comes from a JSON.
STUDIES: list[tuple[str, str, str, Callable[[list[tuple[str, dict[str, Any]]]], list[str]]]] = [
    ("proxy.py", "Recipes on one fold",
     "`benchmarks/proxy.py` trains one config on one fold of the proxy data set (a stand-in for the competition "
     "data, its people split into five person-grouped folds), predicts the eval images and records the held-out "
     "macro F1 with its 90 % person-bootstrap interval, per-task F1, throughput, peak memory and the machine. "
     "One fold holds "
     "a fraction of the people, so its interval is wide: differences inside it are not told apart.", _proxy_rows),
    ("proxy_cv.py", "Recipes pooled over five folds",
     "`benchmarks/proxy_cv.py` runs (or resumes) `maskstatus cv` for a config and scores the pooled out-of-fold "
     "predictions of every person, with tuned age cut points and test-time augmentation as extra entries in its "
     "JSON. Pooling every fold scores every person, so its interval is much narrower than one fold's.",
     _proxy_rows),
    ("cv_ensemble.py", "Ensembles of cross-validations",
     "`benchmarks/cv_ensemble.py` soft-votes the out-of-fold predictions of CV folders trained on one shared "
     "`folds.csv` and compares the vote with its best member, paired on the same resampled people. *Verdict* is "
     "*gain* when the whole 90 % interval of the paired gain lies above zero, *loss* when it lies below, else "
     "*within noise*. The files named *bf16-against-fp32* vote the same recipe trained in bfloat16 and in "
     "float32: read their two members' scores side by side, as a check that bfloat16 loses nothing.",
     _ensemble_rows),
    ("cv_ensemble.py", "Where the score goes",
     "For the votes whose JSON has a `where_the_score_goes` entry: the macro F1 if every answer of one task "
     "were made right (the others as predicted), and how far the predicted age is off. The task whose perfect "
     "answer would add most is where a better model would move the score; a positive age bias for the young "
     "and a negative one for the old is a pull towards the mean age.", _headroom_rows),
    ("ablation.py", "Ablation: one technique at a time",
     "`benchmarks/ablation.py` trains the reference config (`configs/proxy-cpu.yaml`) with one change per row, "
     "on the same fold and epoch budget, and scores rows built on other rows' weights (test-time augmentation, "
     "tuned cut points, ensembles) without training. Each row is one fold and one seed: the rows *reference "
     "trained again* and *reference with seed 1* show how far the same recipe moves by chance, so read "
     "differences of that size as noise. The techniques that survived are in `configs/best-cpu.yaml`.", None),
    ("learning_curve.py", "Learning curve: how much would more people give?",
     "`benchmarks/learning_curve.py` trains the same recipe with whole folds left out of training and scores "
     "each model on the same held-out fold, paired against the model trained on the most people.",
     _learning_curve_rows),
    ("group_people.py", "Grouping the photos of one person",
     "`benchmarks/group_people.py` scores a run's held-out predictions with and without `predict.group_people` "
     "(photos clustered by face similarity, gender and age averaged within each group) and says how well the "
     "clusters match the real people. Grouping stays off by default while its gain is within noise.",
     _grouping_rows),
    ("label_errors.py", "Finding label errors",
     "`benchmarks/label_errors.py` plants wrong labels (gender flips, age moved to a neighbouring or a random "
     "group, mask states swapped) into out-of-fold predictions and measures the share `find-label-errors` lists "
     "among its top rows per task, over many draws, for each ranker (`--ranker`) on the same draws. A recall is "
     "the mean over the draws, in brackets the central 90 % of the draws; files from before the rankers measured "
     "the confidence ranker. The default ranker is the one with the highest pooled recall here.",
     _label_error_rows),
    ("sweep.py", "A small hyperparameter sweep",
     "`benchmarks/sweep.py` runs `maskstatus sweep` on one proxy fold at a small budget (a few epochs of limited "
     "batches per trial) with the median pruner, the base config's own values enqueued as trial 0, and compares "
     "the best trial with that baseline on the same held-out people. The best trial is chosen on the fold it is "
     "scored on, so its gain is optimistic even when beyond noise: confirm it with `maskstatus cv --config "
     "best.yaml`. The sweep page and `best.yaml` lie beside the JSON, in the folder of the same name.",
     _sweep_rows),
    ("predict_cpu.py", "Prediction speed on a CPU",
     "`benchmarks/predict_cpu.py` predicts the eval images of the proxy data with PyTorch (float32 and bfloat16) "
     "and with the ONNX export under ONNX Runtime, end to end (decoding included), and checks that the answers "
     "agree. The factor in brackets is the speed-up over PyTorch in float32.",
     lambda r: _rates_rows(r, "images_per_s", "images/s end to end")),
    ("quantize_int8.py", "int8 quantisation of the ONNX export",
     "`benchmarks/quantize_int8.py` quantises an ONNX export to int8 with ONNX Runtime (static, calibrated on a "
     "tenth of the people) and compares answers, macro F1, speed and file size with float32 on the other people. "
     "It stays a study, not a feature: the table shows how often int8 changes the answer.",
     _quantize_rows),
    ("train_step.py", "Training step speed by precision",
     "`benchmarks/train_step.py` times training steps of a config in each precision on the same batches; the "
     "factor in brackets is the speed-up over the first precision measured.",
     lambda r: _rates_rows(r, "train_step_images_per_s", "training images/s")),
    ("serve_load.py", "Serving under load",
     "`benchmarks/serve_load.py` starts `maskstatus serve` and sends a fixed number of `POST /predict` requests "
     "from concurrent clients over loopback: throughput and latency, with the face detector on or off.",
     _serve_rows),
    ("serve_abuse.py", "Serving under crafted uploads",
     "`benchmarks/serve_abuse.py` sends uploads at and over the server's limits and clients that stall, and "
     "checks that memory stays within its budget and `/health` keeps answering.", _abuse_rows),
    ("cli_errors.py", "How fast a mistake is answered",
     "`benchmarks/cli_errors.py` times `maskstatus` answering common mistakes (a misspelt key, a bad option) "
     "in fresh processes, with the peak memory and the exit status each gave; the files named after a commit "
     "measured that commit, for comparison.",
     _cli_error_rows),
    ("same_seed.py", "Same seed, same run",
     "`benchmarks/same_seed.py` trains the demo at two commits with the same seed and compares every metric "
     "and the submission, to show whether a change kept training the same.", _same_seed_rows),
]


# How the measurements below led to the shipped recipes: the story only, no numbers (those are in the tables).
HISTORY = [
    "## How the recipes were chosen",
    "",
    "1. **One technique at a time.** The ablation switched one technique on at a time against "
    "`configs/proxy-cpu.yaml` on one fold. Regressing the exact age instead of classifying its group, and "
    "validating an exponential moving average of the weights, helped most, and together became "
    "`configs/best-cpu.yaml`. Most other techniques moved the score by no more than the reference moves when "
    "trained again.",
    "2. **Pooled cross-validation.** One fold's interval became too wide to tell the remaining candidates apart, "
    "so they were compared on the out-of-fold predictions of all folds: the proxy data's native resolution, "
    "EfficientNet-Lite1 and Lite2, and a stronger augmentation. Lite2 with the stronger augmentation is today's "
    "`configs/best-cpu.yaml`; the earlier Lite0 recipe is `configs/vote-lite0-cpu.yaml`.",
    "3. **Votes of cross-validations.** Soft votes of CVs with different backbones, trained on one `folds.csv`, "
    "beat their best member beyond the noise; pseudo labels made by such a vote (a noisy student) added a "
    "little more at a much larger training cost. The three-CV vote of `vote-lite0-cpu.yaml`, "
    "`vote-lite1-cpu.yaml` and `best-cpu.yaml` is the CPU track's recipe.",
    "4. **bfloat16.** Training under bfloat16 autocast on a CPU that supports it scored the same as float32 "
    "and trained faster, which keeps the three-CV vote within the CPU track's time budget.",
    "5. **What is left.** The learning curve shows that more people of the same kind would add little, and "
    "*Where the score goes* puts nearly all of the remaining gap in the age group, whose errors are a pull "
    "towards the mean age rather than noise: a better age model, not a better rule on top of this one, is what "
    "would move the score.",
    "",
]


def _script(data: dict[str, Any]) -> str:
    """The benchmark script a result came from, read from its recorded command ('python benchmarks/X.py ...')."""
    match = re.search(r"benchmarks/(\w+\.py)", str(data.get("command", "")))
    return match.group(1) if match else ""


def _load_results(results: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(p for p in results.glob("*.json") if p.is_file()):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        out.append((path.name, data if isinstance(data, dict) else {}))
    return out


def _slug(name: str) -> str:
    # The file name benchmarks/ablation.py gives a row's JSON (its slug()); not imported from there because
    # ablation.py imports torch, which would cost a docs build seconds. The tests check every row file is shown.
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ablation_change(row: dict[str, Any]) -> str:
    """What an ablation row changes against the reference, in the plan's own terms."""
    if row.get("recipe"):
        return f"recipe {_code(str(row['recipe']))}"
    if row.get("ensemble"):
        return "soft vote of " + " + ".join(_markdown_text(str(m)) for m in row["ensemble"])
    if row.get("tune_age_of"):
        return f"age cut points of *{_markdown_text(str(row['tune_age_of']))}* tuned out of fold"
    if row.get("tta_of"):
        return f"*{_markdown_text(str(row['tta_of']))}* predicted with TTA {_code(str(row.get('tta')))}"
    if row.get("loop_result"):
        return "every `find-label-errors` suggestion accepted, the pooled CV trained again"
    text = " ".join(_code(str(o)) for o in row.get("overrides") or []) or "—"
    for key, what in (("distill", "distilled from a teacher CV"), ("label_loop", "relabelled by the finder"),
                      ("pseudo_from", "pseudo labels"), ("pseudo_teachers", "pseudo labels from teacher CVs")):
        if key in row:
            text += f", {what}"
    return text


def _ablation_table(benchmarks: Path) -> list[str]:
    """One row per ablation row that has a result JSON, in the plan's order (benchmarks/ablation.yaml)."""
    import yaml

    plan = yaml.safe_load((benchmarks / "ablation.yaml").read_text())
    folder = benchmarks / "results" / "ablation"
    loaded = dict(_load_results(folder))
    rows_ = plan.get("rows") or []
    reference = loaded.get(f"{_slug(rows_[0]['name'])}.json", {}) if rows_ else {}
    ref_f1, ref_ci = reference.get("oof_f1"), reference.get("oof_f1_ci")
    rows = []
    for row in rows_:
        if row.get("loop_result"):
            # A whole pooled CV trained again (benchmarks/label_loop_cv.py), shown from its own result file.
            d = dict(_load_results(benchmarks / "results")).get(str(row["loop_result"]))
        else:
            d = loaded.get(f"{_slug(row['name'])}.json")
        if d is None:
            continue
        f1 = d.get("oof_f1")
        is_ref = row is rows_[0]
        finite = results_index.is_number(f1) and math.isfinite(f1)
        delta = _gain(f1 - ref_f1) if finite and results_index.is_number(ref_f1) and not is_ref else ""
        inside = ("" if is_ref or not finite or not isinstance(ref_ci, list)
                  else "yes" if ref_ci[0] <= f1 <= ref_ci[1] else "no")
        if row.get("loop_result"):  # pooled over every fold: its Δ is paired with the CV it came from
            delta, inside = _gain(d.get("f1_gain"), d.get("f1_gain_ci")) + " paired", ""
        rows.append([_markdown_text(row["name"]), _ablation_change(row), _f1(f1, d.get("oof_f1_ci")), delta, inside,
                     _f1(d.get("oof_mask_f1")), _f1(d.get("oof_gender_f1")), _f1(d.get("oof_age_f1")),
                     _minutes(d.get("train_s_whole", d.get("train_s")))])
    return ["The reference is the first row; *Δ* is against it and *in ref. CI* says whether a row's F1 lies "
            "inside the reference's interval; a row marked *paired* is pooled over every fold and its Δ is the "
            "paired change against the CV it retrained, with its interval. A dash marks a model that predicts "
            "part of the tasks only. Each "
            "row's note, machine and command are in `benchmarks/results/ablation.md` and its JSON in "
            "`benchmarks/results/ablation/`.", "",
            *_table(["row", "change", "OOF macro F1 [90 % CI]", "Δ", "in ref. CI", "mask F1", "gender F1",
                     "age F1", "train min"], rows)]


def benchmarks_page(benchmarks: Path = ROOT / "benchmarks") -> str:
    results = _load_results(benchmarks / "results")
    by_script: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, data in results:
        by_script.setdefault(_script(data), []).append((name, data))
    lines = [
        "# Benchmarks",
        "",
        GENERATED_NOTE.format(source="the result files in `benchmarks/results/`"),
        "",
        "Every number here is read from a JSON file in `benchmarks/results/` when the site is built; each file "
        "also records the machine, the commit and the command that reruns it (its index is "
        "`benchmarks/results/README.md`). Scores are out-of-fold macro F1 on people the model never saw, with "
        "90 % intervals over people resampled with replacement (each with all their photos); a gain is paired on "
        "the same resampled people. Most rows were measured on the proxy data set on a 2-core CPU without a GPU "
        "(the *machine* column, or the JSON, names it), so absolute times are that machine's; compare times "
        "within one table.",
        "",
        *HISTORY,
    ]
    shown = set()
    for script, title, prose, rows in STUDIES:
        if script == "ablation.py":
            if (benchmarks / "ablation.yaml").is_file() and (benchmarks / "results" / "ablation").is_dir():
                lines += [f"## {title}", "", prose, "", *_ablation_table(benchmarks)]
            continue
        body = rows(by_script.get(script, []))
        if not body:
            continue
        shown.add(script)
        lines += [f"## {title}", "", prose, "", *body]
    rest = [item for script, items in sorted(by_script.items()) if script not in shown for item in items]
    if rest:
        lines += ["## Other results", "", "Result files of benchmarks without a table of their own.", "",
                  *_generic_rows(rest)]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """Every generated page: path under docs/ -> Markdown text."""
    return {CONFIG_PAGE: config_reference(), CLI_PAGE: cli_reference(), BENCHMARKS_PAGE: benchmarks_page()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the generated pages into")
    args = parser.parse_args(argv)
    for name, text in pages().items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
