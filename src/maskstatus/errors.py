"""The project's own errors: what a user can fix (a config key, a data file, a run folder, an argument).

The command line prints these as one line; anything else is a bug and keeps its
traceback. This module imports nothing from the package, so every module can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class MaskstatusError(Exception):
    """Base of every error caused by the user's input rather than by a bug; the message says what to fix."""


class ConfigError(MaskstatusError, ValueError):
    """A config file or override is invalid; the message names the key."""


class UsageError(MaskstatusError, ValueError):
    """A command's argument is wrong (an output path, a fold list, weights); the message names it."""


class RunError(MaskstatusError, ValueError):
    """A run or CV folder cannot be used as asked (unreadable checkpoint, edited config); the message names the file."""


class RunNotFoundError(RunError, FileNotFoundError):
    """The folder given as a run is not one (no config.yaml)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: the file (or ``file:line``) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def format_problems(problems: Sequence[Problem], where: str | Path, note: str | None = None) -> str:
    """A header line, then one indented line per problem (all of them)."""
    header = f"{len(problems)} problem(s) in {where}"
    if note:
        header += f" ({note})"
    return "\n".join([header + ":"] + [f"  {p}" for p in problems])


class DataError(MaskstatusError, ValueError):
    """The data has problems; ``problems`` holds them and the message lists each one."""

    def __init__(self, problems: Sequence[Problem] | str, where: str | Path = "", note: str | None = None) -> None:
        if isinstance(problems, str):  # rebuilt from its message, as a DataLoader worker's error is re-raised
            self.problems, self.where = [], str(where)
            super().__init__(problems)
            return
        self.problems = list(problems)
        self.where = str(where)
        super().__init__(format_problems(self.problems, where, note))

    @classmethod
    def one(cls, path: str | Path, reason: str) -> DataError:
        """A single problem with one file or folder."""
        return cls([Problem(str(path), reason)], path)
