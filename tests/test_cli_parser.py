"""The parser's shape: every command keeps its options, defaults and choices; build_parser stays a table of contents."""

import json
from pathlib import Path

from cli_snapshot import snapshot

from maskstatus.cli import build_parser

FIXTURE = Path(__file__).parent / "fixtures" / "cli_options.json"


def test_every_command_keeps_its_options_defaults_and_choices():
    """tests/fixtures/cli_options.json was taken from the parser before it was split into one function per command."""
    expected = json.loads(FIXTURE.read_text())
    # Through JSON, as the fixture was written: tuples become lists on both sides.
    actual = json.loads(json.dumps(snapshot(build_parser())))
    assert sorted(actual) == sorted(expected), "commands added or removed"
    for command in expected:
        assert actual[command] == expected[command], f"options of {command or 'maskstatus'} changed"
