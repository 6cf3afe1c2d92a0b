"""The names of accelerators, precisions, backends and test-time augmentations, checked before torch is imported.

Importing torch costs seconds, so a misspelt name is refused from these static lists first. The device
and precision lists are Lightning Fabric's, the augmentations those infer.tta registers (its registry
refuses any other; tests/test_cli_fast.py compares every list with its source). Whether a named GPU is
actually there can only be asked of torch: :func:`check_accelerator_available` does that once torch is
imported anyway, before any model is loaded.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, get_args

from .errors import MaskstatusError, UsageError

# What Fabric(accelerator=...) takes; gpu is cuda or mps, whichever there is.
Accelerator = Literal["auto", "cpu", "cuda", "gpu", "mps", "tpu"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
# What Fabric(precision=...) takes as a string (train.precision); the aliases 32, 16, bf16, 64 included.
Precision = Literal[
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# The precisions prediction offers, and its backends (the PyTorch model, or its ONNX export).
PREDICT_PRECISIONS: tuple[str, ...] = ("32-true", "bf16-mixed", "16-mixed")
BACKENDS: tuple[str, ...] = ("torch", "onnx")
# A run's checkpoints (best.pt, last.pt), and how an ensemble combines its members (infer.ensemble.Vote).
CHECKPOINTS: tuple[str, ...] = ("best", "last")
# The pruners of maskstatus sweep (sweep.study.make_pruner).
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
VOTES: tuple[str, ...] = ("soft", "hard")
# The test-time augmentations of infer.tta (predict.tta, --tta).
TtaName = Literal["hflip", "shift"]
TTA_NAMES: tuple[str, ...] = get_args(TtaName)
# How find-label-errors ranks suspects (scoring.label_errors.score_people): the self-confidence finder, cleanlab's
# confident learning, or the mean of the two scores.
LABEL_ERROR_RANKERS: tuple[str, ...] = ("confidence", "cleanlab", "combined")


def check_backend(backend: str, accelerator: str, precision: str | None = None) -> None:
    """Refuse a backend, device and precision that cannot go together (predict and serve share these rules)."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if accelerator not in ACCELERATORS:
        raise UsageError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if precision is not None and precision not in PREDICT_PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PREDICT_PRECISIONS)}, got {precision!r}")
    if backend == "onnx" and precision not in (None, "32-true"):
        raise UsageError(f"the onnx backend computes in float32; got precision={precision!r} (use --backend torch)")
    if backend == "onnx" and accelerator not in ("auto", "cpu"):
        raise UsageError(f"the onnx backend runs on the CPU; got accelerator={accelerator!r} (use --backend torch)")


def check_accelerator_available(
    accelerator: str, where: str = "--accelerator", error: type[MaskstatusError] = UsageError
) -> None:
    """Refuse an accelerator this machine does not have, naming ``where`` it was asked for (an option, a key).

    Imports torch: call it where torch is imported anyway, before the work starts.
    """
    if accelerator not in ACCELERATORS:
        raise error(f"{where}={accelerator!r} is not an accelerator; choose one of {', '.join(ACCELERATORS)}")
    if accelerator in ("auto", "cpu"):
        return
    if accelerator == "tpu":
        if importlib.util.find_spec("torch_xla") is None:
            raise error(f"{where}=tpu needs the torch_xla package, which is not installed; use cpu or auto")
        return
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if not {"cuda": cuda, "mps": mps, "gpu": cuda or mps}[accelerator]:
        why = (
            "this torch is built without CUDA"
            if torch.version.cuda is None
            else "no NVIDIA driver or device found, or CUDA_VISIBLE_DEVICES hides them"
        )
        if accelerator == "mps":
            why = "Apple's Metal (MPS) is not available"
        raise error(
            f"{where}={accelerator} but no GPU is visible to torch {torch.__version__} ({why}); "
            "use cpu, or auto to take a GPU when there is one"
        )
