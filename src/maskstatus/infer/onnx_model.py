"""ONNX Runtime backend: an exported model called like the PyTorch one.

``maskstatus export`` writes, per run, ``<run>/onnx/<checkpoint>.onnx`` and a
JSON sidecar ``<checkpoint>.json`` beside it (see ``infer.export``). An
:class:`OnnxModel` maps a normalised batch ``(N, 3, H, W)`` to the same dict of
output tensors the PyTorch model returns, so test-time augmentation, age cut
points and ensembles run through the same code for both backends.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..data.cache import available_cores
from ..errors import RunError, RunNotFoundError
from ..runs import ONNX

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
# Bumped when the sidecar's meaning changes, so an old file is refused instead of misread.
# 2: the sidecar carries the digests of the ONNX file, of the checkpoint and of itself.
SIDECAR_FORMAT = 2
# The sidecar holds the sha256 of its own canonical JSON (no whitespace, this key left out) beside
# those of the ONNX file and the checkpoint. One file, written atomically next to the model, is simpler and as
# robust as a separate manifest, which would be a third file to keep in step (two renames, one more to go
# stale or missing). Re-serialising the parsed JSON reproduces the canonical text exactly: it holds only
# strings, ints, bools and floats, which JSON round-trips by their repr. Keys keep their order (not sorted): the
# order of "outputs" is the graph's output order, so reordering them is an edit. The digests catch a swapped, stale or
# hand-edited file, not someone who recomputes them: they guard against mistakes, not forgery.
SIDECAR_DIGEST = "sidecar_sha256"


def onnx_path(run_dir: Path | str, checkpoint: str = "best", onnx_dir: Path | str | None = None) -> Path:
    """Where the export of ``run_dir``'s ``checkpoint`` lives: ``<run>/onnx/``, or ``<onnx_dir>/<run name>/``."""
    run_dir = Path(run_dir)
    folder = run_dir / ONNX if onnx_dir is None else Path(onnx_dir) / run_dir.name
    return folder / f"{checkpoint}.onnx"


def sidecar_path(model_path: Path | str) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_digest(meta: dict[str, Any]) -> str:
    """sha256 of the sidecar's canonical JSON without its own digest (see ``SIDECAR_DIGEST``)."""
    body = {k: v for k, v in meta.items() if k != SIDECAR_DIGEST}
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def seal_sidecar(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the digest of its content, written last so any later edit of the file shows."""
    return {**meta, SIDECAR_DIGEST: sidecar_digest(meta)}


def read_sidecar(path: Path | str, run: Path | str | None = None) -> dict[str, Any]:
    """The export's JSON description, checked against its own digest; errors name the file (and ``run``)."""
    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"ONNX sidecar not found: {path} (run `maskstatus export` on the run again)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a valid ONNX sidecar ({exc}); run `maskstatus export` again") from None
    if not isinstance(meta, dict):
        raise RunError(f"{path}: not a valid ONNX sidecar (not a JSON object); run `maskstatus export` again")
    if meta.get("format") == 1:
        # Refused rather than trusted with a warning: nothing would show that its model is the one exported.
        raise RunError(
            f"{path}: an export from an older version, without the digests that show its files are "
            "the ones exported; run `maskstatus export` on the run again"
        )
    missing = [
        k
        for k in ("format", "input", "outputs", "normalization", "checkpoint", "onnx", SIDECAR_DIGEST)
        if k not in meta
    ]
    if missing:
        raise RunError(f"{path}: ONNX sidecar lacks key(s) {missing}; run `maskstatus export` again")
    if meta["format"] != SIDECAR_FORMAT:
        raise RunError(
            f"{path}: sidecar format {meta['format']!r}, this version reads {SIDECAR_FORMAT}; "
            "run `maskstatus export` again"
        )
    if meta[SIDECAR_DIGEST] != sidecar_digest(meta):
        raise RunError(
            f"{path} was edited after the export (its content no longer matches the digest written "
            f"with it); re-run `maskstatus export {run or meta.get('run', 'RUN')}`"
        )
    return meta


def _run_of(checkpoint: Path | str | None) -> Path | None:
    """The run folder of ``<run>/checkpoints/<name>.pt``, for the command that repairs its export."""
    return Path(checkpoint).parent.parent if checkpoint is not None else None


def check_export_files(path: Path, meta: dict[str, Any], checkpoint: Path | str | None) -> None:
    """Refuse an ONNX file or a checkpoint that is not the one the (already checked) sidecar was written for."""
    run = _run_of(checkpoint) or meta.get("run", "RUN")
    again = f"re-run `maskstatus export {run}`"
    if meta["onnx"].get("sha256") != file_sha256(path):
        raise RunError(
            f"{path} is not the model exported with {sidecar_path(path)} (replaced since, or another "
            f"run's export); {again}"
        )
    if checkpoint is not None and meta["checkpoint"].get("sha256") != file_sha256(checkpoint):
        raise RunError(
            f"{path} was exported from another version of {checkpoint} (retrained or replaced since "
            f"the export); {again}"
        )


def _onnxruntime():
    """onnxruntime, imported only by the ONNX backend (the torch path never needs it); absent: which extra."""
    from ..extras import require

    require("onnx", "the ONNX Runtime backend (--backend onnx)", ["onnxruntime"])
    import onnxruntime

    return onnxruntime


def session_options(threads: int | None = None):
    """ONNX Runtime options for batch inference on CPU: every core on one graph, all graph optimisations."""
    ort = _onnxruntime()

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One request at a time: all threads go to the operators (intra-op); a second pool would only compete.
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    return opts


def open_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path``; a missing or unreadable file is an error naming it."""
    ort = _onnxruntime()

    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"ONNX model not found: {path} (run `maskstatus export` on the run first)")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise RunError(f"cannot load ONNX model {path}: {exc}; run `maskstatus export` again") from None


class OnnxModel:
    """An exported model: normalised images ``(N, 3, H, W)`` -> ``{output name: tensor}``, like the PyTorch model.

    The ONNX file and its sidecar must be the ones written together by the
    export (their digests), and ``checkpoint``, when given, the file the model was
    exported from: a run retrained or resumed after its export would otherwise
    predict with stale weights.
    """

    def __init__(self, path: Path | str, checkpoint: Path | str | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        self.meta = read_sidecar(sidecar_path(self.path), _run_of(checkpoint))
        check_export_files(self.path, self.meta, checkpoint)
        self.input_name = self.session.get_inputs()[0].name
        self.output_keys = [o.name for o in self.session.get_outputs()]
        expected = list(self.meta["outputs"])
        if self.output_keys != expected:
            raise RunError(
                f"{self.path} has outputs {self.output_keys} but its sidecar "
                f"{sidecar_path(self.path)} lists {expected}; run `maskstatus export` again"
            )

    @property
    def data_config(self) -> dict[str, tuple[float, ...]]:
        """``{"mean", "std"}`` the inputs are normalised with (as ``models.model_data_config``)."""
        norm = self.meta["normalization"]
        return {"mean": tuple(norm["mean"]), "std": tuple(norm["std"])}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # contiguous(): a channels_last or flipped view must become plain NCHW memory for the runtime.
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(self.output_keys, {self.input_name: array})
        return {key: torch.from_numpy(value) for key, value in zip(self.output_keys, outputs, strict=True)}
