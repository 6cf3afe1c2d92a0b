"""ONNX Runtime backend: an exported model called like the PyTorch one.

``maskstatus export`` writes, per run, ``<run>/onnx/<checkpoint>.onnx`` and a
JSON sidecar ``<checkpoint>.json`` beside it (see ``engine.export``). An
:class:`OnnxModel` maps a normalised batch ``(N, 3, H, W)`` to the same dict of
output tensors the PyTorch model returns, so test-time augmentation, age cut
points and ensembles run through the same code for both backends.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from ..data.cache import available_cores
from ..errors import RunError, RunNotFoundError

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
INPUT_NAME = "image"
# Bumped when the sidecar's meaning changes, so an old file is refused instead of misread.
SIDECAR_FORMAT = 1


def onnx_path(run_dir: Path | str, checkpoint: str = "best", onnx_dir: Optional[Path | str] = None) -> Path:
    """Where the export of ``run_dir``'s ``checkpoint`` lives: ``<run>/onnx/``, or ``<onnx_dir>/<run name>/``."""
    run_dir = Path(run_dir)
    folder = run_dir / ONNX_DIR if onnx_dir is None else Path(onnx_dir) / run_dir.name
    return folder / f"{checkpoint}.onnx"


def sidecar_path(model_path: Path | str) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """The export's JSON description; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"ONNX sidecar not found: {path} (run `maskstatus export` on the run again)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a valid ONNX sidecar ({exc}); run `maskstatus export` again") from None
    missing = [k for k in ("format", "input", "outputs", "normalization", "checkpoint") if k not in meta]
    if missing:
        raise RunError(f"{path}: ONNX sidecar lacks key(s) {missing}; run `maskstatus export` again")
    if meta["format"] != SIDECAR_FORMAT:
        raise RunError(f"{path}: sidecar format {meta['format']!r}, this version reads {SIDECAR_FORMAT}; "
                         "run `maskstatus export` again")
    return meta


def session_options(threads: Optional[int] = None):
    """ONNX Runtime options for batch inference on CPU: every core on one graph, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One request at a time: all threads go to the operators (intra-op); a second pool would only compete.
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    return opts


def open_session(path: Path | str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for ``path``; a missing or unreadable file is an error naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"ONNX model not found: {path} (run `maskstatus export` on the run first)")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise RunError(f"cannot load ONNX model {path}: {exc}; run `maskstatus export` again") from None


class OnnxModel:
    """An exported model: normalised images ``(N, 3, H, W)`` -> ``{output name: tensor}``, like the PyTorch model.

    ``checkpoint``, when given, must be the file the model was exported from: a
    run retrained or resumed after its export would otherwise predict with stale
    weights.
    """

    def __init__(self, path: Path | str, checkpoint: Optional[Path | str] = None, threads: Optional[int] = None) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        self.meta = read_sidecar(sidecar_path(self.path))
        if checkpoint is not None and self.meta["checkpoint"].get("sha256") != file_sha256(checkpoint):
            raise RunError(f"{self.path} was exported from another version of {checkpoint} "
                             "(the checkpoint changed since); run `maskstatus export` again")
        self.input_name = self.session.get_inputs()[0].name
        self.output_keys = [o.name for o in self.session.get_outputs()]
        expected = list(self.meta["outputs"])
        if self.output_keys != expected:
            raise RunError(f"{self.path} has outputs {self.output_keys} but its sidecar "
                             f"{sidecar_path(self.path)} lists {expected}; run `maskstatus export` again")

    @property
    def data_config(self) -> dict[str, tuple[float, ...]]:
        """``{"mean", "std"}`` the inputs are normalised with (as ``models.model_data_config``)."""
        norm = self.meta["normalization"]
        return {"mean": tuple(norm["mean"]), "std": tuple(norm["std"])}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # contiguous(): a channels_last or flipped view must become plain NCHW memory for the runtime.
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(self.output_keys, {self.input_name: array})
        return {key: torch.from_numpy(value) for key, value in zip(self.output_keys, outputs)}
