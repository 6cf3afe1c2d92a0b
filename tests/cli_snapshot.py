"""What the command line accepts, as plain data: every command's options with their defaults, choices and kinds.

``python tests/cli_snapshot.py > tests/fixtures/cli_options.json`` writes the snapshot that
tests/test_cli_parser.py compares the parser with; rewrite it only for a deliberate change of the options.
"""

from __future__ import annotations

import argparse
import json


def _action(a: argparse.Action) -> dict:
    row = {"kind": type(a).__name__, "default": a.default, "choices": list(a.choices) if a.choices else None,
           "nargs": a.nargs, "required": a.required, "metavar": a.metavar,
           "type": getattr(a.type, "__name__", None) if a.type else None}
    return {k: v for k, v in row.items() if v is not None and v is not False}


def _options(parser: argparse.ArgumentParser) -> dict:
    return {"/".join(a.option_strings) or a.dest: _action(a) for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}


def snapshot(parser: argparse.ArgumentParser) -> dict:
    """{"": top-level options, command: its options} for a parser with one level of subcommands."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": _options(parser), **{name: _options(p) for name, p in sub.choices.items()}}


if __name__ == "__main__":
    from maskstatus.cli import build_parser

    print(json.dumps(snapshot(build_parser()), indent=1, sort_keys=True))
