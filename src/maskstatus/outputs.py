"""Where a command may write, checked before any work, and the one error a full or read-only disk gives.

Every command that writes a file the user names (``predict --out``, ``report --out``...) calls
``check_output`` for each file before it loads a model or reads an image, so a typo never replaces
an input and a full or read-only disk fails in a second, not after the work. The rules, in order:

1. an output is never one of the command's inputs (a table, a config, an OOF CSV), nor a file
   inside an input folder; paths are compared after following symlinks (and hard links);
2. an output is never inside a run or CV folder (one holding ``config.yaml`` and ``checkpoints/``, or
   ``cv_config.yaml``: what predict and resume read) nor inside a competition data folder (``train.csv``
   or ``info.csv`` beside ``images/``), except the command's own outputs there (``report RUN`` writes
   RUN/report.html);
3. an existing file is replaced only if it is a previous output of the same command, as its
   ``previous`` test recognises it (each writer keeps that test beside it: a submission CSV by its
   header, an HTML page by its ``<meta name="generator">``, an ONNX export by its sidecar), or with
   ``--overwrite``. Rules 1 and 2 hold even with ``--overwrite``: those files are never an output;
4. the nearest existing folder of the output takes a small file (created and removed): ``os.access``
   says yes to root on a read-only mount, a real write does not. Where the size of the output is known
   before the work (``predict``), ``check_space`` compares it with the disk's free space.

Write errors the user can fix (ENOSPC, EDQUOT, EROFS, EACCES, EPERM) become ``DiskWriteError``,
one line naming the file and the cause. This module imports nothing heavy (no torch), so the
checks run before any model library is imported.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import MaskstatusError, UsageError
from .labels import PROB_COLUMNS

DATA_MARKERS: tuple[str, ...] = ("train.csv", "info.csv")  # data.layout.TRAIN_CSV, EVAL_CSV, beside images/
PROBE_BYTES = 4096  # a block: on ext4 and tmpfs a full disk refuses the write itself, not only at close

# errno -> (what happened, what to do about it)
_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota"),
    errno.EROFS: ("read-only file system", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied", "write to a folder you may write to"),
    errno.EPERM: ("operation not permitted", "write to a folder you may write to"),
}
# Below this much free space an error from a writer that hides the OSError (torch.save to a file name raises
# "RuntimeError: unexpected pos") is taken for a full disk.
_NEARLY_FULL_BYTES = 1 << 20


class DiskWriteError(MaskstatusError, OSError):
    """A file could not be written for a reason the user can fix (full disk, read-only disk, permissions)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


def disk_error(exc: BaseException, path: Path | str, then: str = "") -> DiskWriteError | None:
    """``exc`` raised while writing ``path`` as a ``DiskWriteError``, or None when it is some other error.

    ``then`` says what to do once the cause is fixed (default: run the command again). The OSError is looked
    for in ``exc``'s chain too: torch wraps it in a RuntimeError. Call this before removing a partly written
    temp file, so a writer that loses the errno is judged by the space left.
    """
    code = error_code(exc)
    if code is None and isinstance(exc, RuntimeError) and _free_bytes(Path(path)) < _NEARLY_FULL_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    cause, advice = _CAUSES[code]
    return DiskWriteError(f"{cause} writing {path}; {advice}, then {then or 'run the command again'}", code)


def error_code(exc: BaseException | None) -> int | None:
    """The errno of the first OSError in ``exc``'s chain that the user can fix (a key of ``_CAUSES``), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _CAUSES:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _free_bytes(path: Path) -> int:
    folder = nearest_existing(path.parent)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return _NEARLY_FULL_BYTES  # unknown: never blame the disk on a guess


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what a write there would create folders under)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path | str, option: str = "--out", name: Path | str | None = None) -> None:
    """Refuse a folder (or where it would be created) that cannot take a file: write one there and remove it.

    Errors start with ``option`` and ``name`` (default: the folder), e.g. "--out sub.csv: ...".
    """
    folder = Path(folder)
    where = f"{option} {folder if name is None else name}"
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UsageError(f"{where}: {existing} is a file, not a folder")
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".maskstatus-write-check.", suffix=".tmp", dir=existing)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
    except OSError as exc:
        code = error_code(exc)
        if code is None:
            raise
        cause, advice = _CAUSES[code]
        raise DiskWriteError(
            f"{where}: cannot write in {existing}: {cause}; {advice} (nothing was done)", code
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def check_space(folder: Path | str, needed: int, option: str = "--out", name: Path | str | None = None) -> None:
    """Refuse a folder whose disk has less than ``needed`` bytes free: what the work will write, known before it."""
    folder = Path(folder)
    existing = nearest_existing(folder)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return  # unknown: the write itself will say
    if free < needed:
        cause, advice = _CAUSES[errno.ENOSPC]
        raise DiskWriteError(
            f"{option} {folder if name is None else name}: {cause} in {existing} ({free:,} bytes "
            f"free, about {needed:,} needed); {advice} or give another path (nothing was done)",
            errno.ENOSPC,
        )


def _resolved(path: Path | str) -> Path:
    return Path(path).expanduser().resolve()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_within(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def protected_folder(path: Path) -> tuple[Path, str] | None:
    """The run, CV or data folder ``path`` (resolved) lies in, and what it is; None when it lies in none."""
    for folder in path.parents:
        if (folder / "cv_config.yaml").is_file():  # runs.CV_CONFIG, spelt out: runs imports this module
            return folder, "CV folder"
        # A run folder always has checkpoints/ (runs.RunDir.make): a project's own config.yaml is not a run.
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder, "run folder"
        if (folder / "images").is_dir() and any((folder / m).is_file() for m in DATA_MARKERS):
            return folder, "data folder"
    return None


def check_output(
    path: Path | str,
    *,
    command: str,
    option: str = "--out",
    inputs: Iterable[Path | str] = (),
    own: Iterable[Path | str] = (),
    previous: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
) -> Path:
    """Refuse ``path`` as an output of ``command`` (rules in the module docstring); returns it.

    ``inputs``: files and folders the command reads (an output may be none of them nor inside a folder
    of them). ``own``: the command's own outputs inside a run folder (its defaults, e.g. RUN/report.html),
    which it may write and replace. ``previous(path)`` says whether an existing file is an earlier output
    of this command. Every refusal is one ``UsageError`` naming the file and why.
    """
    out = Path(path)
    where = f"{option} {out}"
    if out.is_dir():
        raise UsageError(f"{where} is a folder; give a file name")
    target = _resolved(out)
    inputs = list(inputs)
    for given in inputs:
        if target == _resolved(given) or _same_file(out, Path(given)):
            raise UsageError(f"{where} is an input of this command ({given}); give another path")
    is_own = any(target == _resolved(p) for p in own)
    found = None if is_own else protected_folder(target)
    if found is not None:
        folder, kind = found
        raise UsageError(
            f"{where} lies inside the {kind} {folder}, whose files {command} must not write "
            "(--overwrite does not change this); give a path outside it"
        )
    for given in inputs:
        if _is_within(target, _resolved(given)):
            raise UsageError(f"{where} lies inside the input folder {given}; give a path outside it")
    check_writable(out.parent, option, out)
    if (out.exists() or out.is_symlink()) and not (overwrite or is_own or (previous is not None and previous(out))):
        raise UsageError(
            f"{where}: the file exists and is not an earlier output of {command}; "
            "add --overwrite to replace it, or give another path"
        )
    return out


# ---- prediction files (predict, ensemble, pseudo-label): here, not in infer.predict, so that checking an
# --out costs no torch import.
SUBMISSION_HEADERS: tuple[str, ...] = ("ImageID,ans", "image,ans,mask,gender,age")  # competition, plain folder


def probs_path_for(out: Path | str) -> Path:
    """The probabilities file written beside the submission ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".probs.csv")


def is_previous_submission(path: Path) -> bool:
    """A submission infer.predict wrote (by its header), which a new prediction may replace."""
    return first_line(path) in SUBMISSION_HEADERS


def is_previous_probs(path: Path) -> bool:
    """A probabilities file infer.predict wrote: the image id column, then the 18 class columns."""
    columns = first_line(path).split(",")
    return columns[0] in ("ImageID", "image") and columns[1 : 1 + len(PROB_COLUMNS)] == PROB_COLUMNS


def check_prediction_output(
    out: Path | str, inputs: Iterable[Path | str] = (), overwrite: bool = False, command: str = "predict"
) -> None:
    """Refuse a submission path and the probabilities file beside it, before any work (``check_output``).

    ``inputs`` are the run folders and the data folder; an existing file is replaced only if it is an earlier
    prediction, or with ``overwrite``.
    """
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out}: {out} is a folder; give a file name, e.g. {out / 'submission.csv'}")
    inputs = list(inputs)
    check_output(out, command=command, inputs=inputs, previous=is_previous_submission, overwrite=overwrite)
    check_output(
        probs_path_for(out),
        command=command,
        option=f"--out {out}: its probabilities file",
        inputs=inputs,
        previous=is_previous_probs,
        overwrite=overwrite,
    )


def check_distinct(outputs: Sequence[tuple[str, Path | str]]) -> None:
    """Refuse two outputs of one command that are the same file: the second would replace the first."""
    seen: dict[Path, str] = {}
    for option, path in outputs:
        target = _resolved(path)
        if target in seen:
            raise UsageError(f"{option} {path} is the same file as {seen[target]}; give another path")
        seen[target] = f"{option} {path}"


def first_line(path: Path, limit: int = 4096) -> str:
    """The first line of a text file ('' when unreadable): enough to recognise what wrote it."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return ""
    return head.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").strip()


def head_contains(path: Path, text: str, limit: int = 4096) -> bool:
    try:
        with open(path, "rb") as f:
            return text.encode() in f.read(limit)
    except OSError:
        return False


__all__ = [
    "DiskWriteError",
    "check_distinct",
    "check_output",
    "check_prediction_output",
    "check_space",
    "check_writable",
    "disk_error",
    "error_code",
    "first_line",
    "head_contains",
    "is_previous_probs",
    "is_previous_submission",
    "nearest_existing",
    "probs_path_for",
    "protected_folder",
]
