"""Optional dependencies: check that an extra's packages are installed, else name the pip command that adds them.

Training and prediction with PyTorch need only the core dependencies; serving, ONNX, experiment tracking
and sweeps come with the ``serve``, ``onnx``, ``track`` and ``sweep`` extras (pyproject.toml). The check looks the modules up without importing them,
so a command can run it before it imports torch and answer at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from .errors import MaskstatusError

# The top-level module each extra's distributions install (pyproject.toml's optional dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "python_multipart", "pytorch_grad_cam", "dlib"),
    "onnx": ("onnx", "onnxruntime", "onnxsim"),
    "track": ("wandb", "mlflow", "pytorch_lightning"),
    "sweep": ("optuna", "psycopg2"),
}


class MissingExtraError(MaskstatusError, ImportError):
    """A package of an optional extra is not installed; the message names the pip command that installs it."""


def missing_modules(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or only ``modules`` of it) that cannot be imported, in the extra's order."""
    wanted = EXTRAS[extra] if modules is None else modules
    unknown = set(wanted) - set(EXTRAS[extra])
    if unknown:  # a programming error: the pip command named would not install them
        raise ValueError(f"{sorted(unknown)} are not in the {extra!r} extra {EXTRAS[extra]}")
    return [name for name in wanted if not _importable(name)]


def require(extra: str, what: str, modules: Sequence[str] | None = None) -> None:
    """Raise ``MissingExtraError`` naming ``pip install 'maskstatus[extra]'`` if a module ``what`` needs is absent.

    ``what`` is the command or feature, e.g. ``"maskstatus serve"``; ``modules`` narrows the check to the
    part of the extra it needs (default: every module of the extra).
    """
    missing = missing_modules(extra, modules)
    if missing:
        raise MissingExtraError(
            f"{what} needs the {extra} extra (no module named {', '.join(missing)}): pip install 'maskstatus[{extra}]'"
        )


def _importable(name: str) -> bool:
    # find_spec answers None for a module that is absent (or set to None in sys.modules, as the tests do);
    # it imports nothing, so torch-heavy packages such as grad-cam are not loaded by the check.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module left without a __spec__
        return False
