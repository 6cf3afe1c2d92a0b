"""The prediction pipeline of a run: the one path from a run folder and an image to 18 class probabilities.

``predict`` (image files), ``serve`` (decoded uploads) and ``export`` (the ONNX graph and its check) all
go through here, so they answer alike by construction:

- ``load_members`` expands each source (a run folder, or a CV folder: its fold runs) and loads every run
  once: its config, its model with the chosen weights (or its ONNX export), its tuned age cut points;
- ``PreparedRun`` readies one run on a Fabric: the model on the device, and ``transforms.eval`` split as
  prediction runs it (the leading crops and resizes once per image in the cache, the rest per batch,
  normalisation in the workers or on the device);
- ``Pipeline`` holds the members and turns image files or decoded images into the ensemble's probabilities
  (runs of a member averaged, members voted);
- ``model_inputs`` gives the images as a run's model sees them, normalised tensors, for the export's check
  and for Grad-CAM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from lightning_fabric import Fabric

from ..age import Cuts, read_cuts, thresholds_cuts
from ..choices import BACKENDS
from ..config import Config, GroupingConfig, config_to_dict, load_config
from ..data.cache import ImageCache, available_cores
from ..data.dataset import FaceDataset
from ..data.faces import cache_loader
from ..data.transforms import BatchNormalize, Prepare, batch_normalizer, build_transforms, output_shape, split_prepare
from ..errors import RunError, UsageError
from ..models import create_model, model_data_config
from ..runs import expand_runs, load_checkpoint, open_run_dir
from .ensemble import Vote, combine_probs
from .evaluate import Model, eval_loader, infer, normalize_on_device

if TYPE_CHECKING:
    from ..models.heads import MaskStatusModel
    from .onnx_model import OnnxModel

logger = logging.getLogger(__name__)

# The PyTorch model, or its ONNX export run by ONNX Runtime (infer.onnx_model.OnnxModel); see evaluate.Model.
Backend = Literal["torch", "onnx"]
# One run's output: probabilities (N, 18) float64 and predicted years (N, 2: mean, spread) or None.
RunOutput = tuple[np.ndarray, np.ndarray | None]


@dataclass
class LoadedRun:
    cfg: Config
    model: Model  # a torch.nn.Module, or an OnnxModel for the ONNX backend
    checkpoint: Path
    age_cuts: Cuts  # where a regression head's predicted years split into age groups

    @property
    def is_torch(self) -> bool:
        return isinstance(self.model, torch.nn.Module)

    @property
    def module(self) -> MaskStatusModel:
        """The PyTorch model (gradients, export); a run loaded for the ONNX backend has none."""
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"{self.checkpoint}: loaded as its ONNX export, which is not a PyTorch model")
        return cast("MaskStatusModel", self.model)

    @property
    def norm(self) -> dict[str, tuple[float, ...]]:
        """``{"mean", "std"}`` the model's inputs are normalised with (an ONNX export records its own)."""
        if self.is_torch:
            return model_data_config(self.module)
        return cast("OnnxModel", self.model).data_config

    @property
    def name(self) -> str:
        """The run folder's name (the checkpoint is ``<run>/checkpoints/<which>.pt``)."""
        return self.checkpoint.parent.parent.name


# What predictions depend on: editing these in config.yaml after training would predict differently from
# how the weights were trained (the weights files are set aside by load_run and may be edited).
_PREDICT_KEYS = (
    "model",
    "cache.size",
    "transforms.eval",
    "data.face_crop",
    "data.age.young_below",
    "data.age.old_from",
    "data.mask_states",
)
_FREE_KEYS = ("model.pretrained", "model.pretrained_path")


def _check_trained_config(cfg: Config, trained: dict | None, config_path: Path, ckpt_path: Path) -> None:
    """Refuse a config.yaml that differs from the config stored in the checkpoint where predictions depend on it."""
    if trained is None:  # checkpoints from before the config was stored in them
        return
    current = config_to_dict(cfg)
    changed = []
    for key in _PREDICT_KEYS:
        if _dotted(trained, key) is _MISSING:  # a key added since that checkpoint was written
            continue
        for path, (now, then) in _leaf_diff(_dotted(current, key), _dotted(trained, key), key).items():
            if not path.startswith(_FREE_KEYS):
                changed.append(f"{path}: {then!r} in the checkpoint, {now!r} in config.yaml")
    if changed:
        raise RunError(
            f"{config_path} was edited after {ckpt_path} was trained; predicting with the edited config would "
            "not match the weights:\n  " + "\n  ".join(changed) + "\nrestore these keys in config.yaml"
        )


_MISSING = object()


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part, _MISSING) if isinstance(tree, dict) else _MISSING
    return tree


def _leaf_diff(a: Any, b: Any, prefix: str) -> dict[str, tuple]:
    """Dotted key -> (a, b) for every leaf where the two nested dicts differ (lists compare whole).

    Keys only one side has are skipped: a checkpoint from an older version lacks keys added since.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple] = {}
        for k in sorted(set(a) & set(b)):
            out.update(_leaf_diff(a.get(k), b.get(k), f"{prefix}.{k}"))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return {} if a == b else {prefix: (a, b)}


def load_run(
    run_dir: Path | str,
    which: str = "best",
    age_cuts: Cuts | None = None,
    backend: Backend = "torch",
    onnx_dir: Path | str | None = None,
) -> LoadedRun:
    """A run's config and model with its best (or last) weights.

    ``age_cuts`` default to the ones tuned for this run (its age_cuts.json), else the scoring thresholds.
    ``backend="onnx"`` loads the run's export (``<run>/onnx/``, or ``<onnx_dir>/<run name>/``) made by
    ``maskstatus export`` instead of building the PyTorch model.
    """
    run = open_run_dir(run_dir)
    cfg = load_config(run.config)
    if age_cuts is None:
        age_cuts = read_cuts(run.root) or thresholds_cuts(cfg.data.age.thresholds())
    ckpt_path = run.best if which == "best" else run.last
    if backend == "onnx":
        from .onnx_model import OnnxModel, onnx_path

        if not ckpt_path.is_file():
            raise RunError(f"checkpoint not found: {ckpt_path}")
        return LoadedRun(cfg, OnnxModel(onnx_path(run.root, which, onnx_dir), ckpt_path), ckpt_path, age_cuts)
    if backend != "torch":
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    state = load_checkpoint(ckpt_path)
    _check_trained_config(cfg, state.get("config"), run.config, ckpt_path)
    # Weights come from the checkpoint: never fetch or load pretrained ones again.
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_path": None})
    model = create_model(model_cfg)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, model.eval(), ckpt_path, age_cuts)


@dataclass
class Member:
    """One ensemble member: a run, or the fold runs of a CV folder (their probabilities averaged)."""

    source: Path | None  # the folder given; None for runs loaded by the caller
    runs: list[LoadedRun]  # the models that answer: the PyTorch ones, or their ONNX exports
    # The same runs' PyTorch models: ``runs`` itself for the torch backend; for the ONNX backend only when asked
    # for (serve's Grad-CAM needs gradients, which an ONNX graph does not give).
    torch_runs: list[LoadedRun] = field(default_factory=list)

    @property
    def tasks(self) -> tuple[str, ...]:  # the folds of one member share a config: the first run tells
        return tuple(self.runs[0].cfg.model.tasks)

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.runs[0].cfg.data.mask_states)


def load_members(
    sources: Sequence[Path | str],
    checkpoint: str = "best",
    backend: Backend = "torch",
    onnx_dir: Path | str | None = None,
    keep_torch: bool = False,
) -> list[Member]:
    """Each source (a run folder, or a CV folder for its fold runs) loaded as one ensemble member.

    Cut points tuned for a CV folder as a whole hold for each of its fold runs. ``keep_torch`` also loads the
    PyTorch models when the ONNX exports answer; a missing or stale export fails here, naming the file.
    """
    members = []
    for source in map(Path, sources):
        paths = expand_runs([source])
        cuts = read_cuts(source)
        if backend == "onnx":
            torch_runs = [load_run(p, checkpoint, cuts) for p in paths] if keep_torch else []
            runs = [load_run(p, checkpoint, cuts, "onnx", onnx_dir) for p in paths]
        else:
            runs = torch_runs = [load_run(p, checkpoint, cuts, backend) for p in paths]
        members.append(Member(source, runs, torch_runs))
    return members


def make_fabric(
    backend: Backend, accelerator: str, precision: str | None, cfg: Config, keep_torch: bool = False
) -> Fabric:
    """The Fabric a pipeline runs on: ``precision`` (default the first run's ``train.precision``) on ``accelerator``.

    ONNX Runtime computes in float32 on the CPU, so for the ONNX backend Fabric only moves the batches there,
    unless PyTorch models run beside it (``keep_torch``).
    """
    if backend == "onnx" and not keep_torch:
        return Fabric(accelerator="cpu", devices=1, precision="32-true")
    # Any: the choices were checked (choices.check_backend, the config's Literal) against Fabric's own.
    return Fabric(accelerator=accelerator, devices=1, precision=cast(Any, precision or cfg.train.precision))


def setup_model(run: LoadedRun, fabric: Fabric) -> Model:
    """A PyTorch model moved to the Fabric's device (in place), in ``train.channels_last`` layout; ONNX as it is."""
    if not run.is_torch:
        return run.model
    model: torch.nn.Module = run.module
    if run.cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return fabric.setup_module(model)


def _size(cfg: Config) -> tuple[int, int] | None:
    return tuple(cfg.cache.size) if cfg.cache.size else None  # type: ignore[return-value]


def _split_eval(cfg: Config) -> tuple[Prepare | None, list[dict[str, Any]]]:
    """``transforms.eval`` as prediction runs it: leading crops and resizes done once in the cache, then the rest."""
    prepare, _, rest = split_prepare(cfg.transforms.eval, cfg.transforms.eval, cfg.cache.precompute)
    return prepare, rest


def decode_images(cfg: Config, paths: Sequence[str], progress: bool = False) -> ImageCache:
    """The images as a run of ``cfg`` predicts from: decoded, sized, face-cropped, and through the
    leading crops and resizes of ``transforms.eval`` (run once here, not per batch).

    Decoding releases the GIL: one thread per core. Undecodable files fail here, all named at once.
    """
    prepare, _ = _split_eval(cfg)
    threads = max(cfg.cache.decode_threads, available_cores())
    return ImageCache(
        list(paths),
        size=_size(cfg),
        mode="memory",
        threads=threads,
        progress=progress,
        **cache_loader(cfg.data.face_crop, cfg.cache.size),
        prepare=prepare,
    ).fill()


def array_cache(cfg: Config, images: Sequence[np.ndarray]) -> ImageCache:
    """Decoded RGB images through the same sizing and leading crops as ``decode_images`` (no face finding:
    the caller gives faces)."""
    prepare, _ = _split_eval(cfg)
    images = list(images)
    # The cache's keys are indices into ``images``: it resizes exactly as it does for files.
    return ImageCache(
        [str(i) for i in range(len(images))],
        size=_size(cfg),
        mode="memory",
        threads=1,
        progress=False,
        loader=lambda key: images[int(key)],
        prepare=prepare,
    ).fill()


def _cache_key(cfg: Config) -> tuple:
    """Runs with equal keys read the same decoded images: size, face cropping and prepare steps."""
    prepare, _ = _split_eval(cfg)
    return _size(cfg), cfg.data.face_crop, prepare.variant if prepare else ""


def model_inputs(run: LoadedRun, images: Sequence[str] | Sequence[np.ndarray]) -> list[torch.Tensor]:
    """The images (files, or decoded RGB arrays) as ``run``'s model sees them at prediction: decoded, sized,
    through ``transforms.eval`` and normalised; one (3, H, W) tensor each."""
    paths = [str(i) for i in images if isinstance(i, (str, Path))]
    arrays = [i for i in images if isinstance(i, np.ndarray)]
    if paths and arrays:
        raise TypeError("model_inputs: give image files or decoded arrays, not both")
    cache = array_cache(run.cfg, arrays) if arrays else decode_images(run.cfg, paths)
    _, rest = _split_eval(run.cfg)
    norm = run.norm
    transform = build_transforms(rest, norm["mean"], norm["std"], "transforms.eval")
    dataset = FaceDataset(cache, np.arange(len(cache)), transform)
    return [dataset[i]["image"] for i in range(len(dataset))]


def fixed_input_size(cfg: Config) -> bool:
    """Whether every image reaches the model at one size: the cache resizes it, or ``transforms.eval`` maps any
    input to one size."""
    if cfg.cache.size is not None:
        return True
    transform = build_transforms(cfg.transforms.eval, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "transforms.eval")
    return output_shape(transform, (97, 83)) == output_shape(transform, (131, 149))


class PreparedRun:
    """One run ready to predict on a Fabric: its model on the device, its eval transform and batch normaliser."""

    def __init__(self, run: LoadedRun, fabric: Fabric) -> None:
        self.run, self.fabric = run, fabric
        _, rest = _split_eval(run.cfg)
        norm = run.norm
        defer = normalize_on_device(run.cfg.train.normalize_on, fabric)
        self.transform = build_transforms(rest, norm["mean"], norm["std"], "transforms.eval", defer)
        self.normalize: BatchNormalize | None = batch_normalizer(rest, norm["mean"], norm["std"], defer)
        self.model = setup_model(run, fabric)
        self.cache_key = _cache_key(run.cfg)

    def outputs(
        self,
        cache: ImageCache,
        batch_size: int | None = None,
        num_workers: int | str = 0,
        progress: bool = False,
        tta: Sequence[str] | None = None,
        group_people: bool | None = None,
    ) -> RunOutput:
        """Every image of a filled ``cache`` through the model: probabilities (N, 18) float64 and years or None.

        ``tta`` None keeps the run's own ``predict.tta``, ``group_people`` None its ``predict.group_people``.
        """
        run, cfg = self.run, self.run.cfg
        grouping: GroupingConfig | None = (
            cfg.predict.grouping if (cfg.predict.group_people if group_people is None else group_people) else None
        )
        if grouping is not None and not run.is_torch:
            # The embeddings come from a hook on a backbone layer, which an ONNX graph does not expose.
            raise UsageError(f"{run.checkpoint}: predict.group_people needs the torch backend (use --backend torch)")
        dataset = FaceDataset(cache, np.arange(len(cache)), self.transform, normalize=self.normalize)
        loader = eval_loader(dataset, batch_size or cfg.train.eval_batch_size, num_workers, self.fabric)
        rows, probs, _, years = infer(
            self.fabric,
            self.model,
            loader,
            progress=progress,
            desc=f"predict {run.name}",
            tta=cfg.predict.tta if tta is None else tta,
            age_cuts=run.age_cuts,
            grouping=grouping,
        )
        if not np.array_equal(rows, np.arange(len(cache))):
            raise RuntimeError("inference lost rows; this is a bug")
        check_finite_probs(run, probs)
        return probs.astype(np.float64), (None if years is None else years.astype(np.float64))


def check_finite_probs(run: LoadedRun, probs: np.ndarray) -> None:
    """Refuse NaN or inf probabilities (weights of a diverged run): their argmax would be a submission of class 0."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise RunError(
            f"{run.checkpoint} gives non-finite probabilities for {int(bad.sum())} of {len(probs)} images: "
            "its weights are not finite (a diverged run); retrain it, e.g. with a lower optimizer.lr"
        )


def vote_members(
    members: Sequence[Sequence[LoadedRun]],
    run_outputs: Callable[[LoadedRun], RunOutput],
    weights: Sequence[float] | None = None,
    vote: Vote = "soft",
) -> RunOutput:
    """The ensemble rule: runs of a member averaged, members voted; years the plain mean over the runs giving them.

    ``run_outputs(run)`` gives one run's probabilities (N, 18) and years (N, 2) or None.
    """
    if not members or any(not m for m in members):
        raise ValueError("an ensemble needs at least one run in every member")
    member_probs, years = [], []
    for member in members:
        outputs = [run_outputs(run) for run in member]
        member_probs.append(np.mean([probs for probs, _ in outputs], axis=0))
        years += [y for _, y in outputs if y is not None]
    # The folds of one member share a config, so its first run tells which tasks it predicts.
    probs = combine_probs(
        member_probs,
        weights,
        vote,
        [m[0].cfg.model.tasks for m in members],
        [m[0].cfg.data.mask_states for m in members],
    )
    return probs, (np.mean(years, axis=0) if years else None)


class Pipeline:
    """Ensemble members loaded once, on one Fabric; each run is readied (``PreparedRun``) on first use."""

    def __init__(self, members: Sequence[Member], fabric: Fabric) -> None:
        if not members or any(not m.runs for m in members):
            raise ValueError("an ensemble needs at least one run in every member")
        self.members = list(members)
        self.fabric = fabric
        self._prepared: dict[int, PreparedRun] = {}

    @classmethod
    def load(
        cls,
        sources: Sequence[Path | str],
        checkpoint: str = "best",
        backend: Backend = "torch",
        onnx_dir: Path | str | None = None,
        accelerator: str = "auto",
        precision: str | None = None,
        keep_torch: bool = False,
    ) -> Pipeline:
        """Load ``sources`` (see ``load_members``) onto a Fabric made by ``make_fabric``."""
        members = load_members(sources, checkpoint, backend, onnx_dir, keep_torch)
        return cls(members, make_fabric(backend, accelerator, precision, members[0].runs[0].cfg, keep_torch))

    @classmethod
    def of_runs(cls, runs: Sequence[LoadedRun | Sequence[LoadedRun]], fabric: Fabric) -> Pipeline:
        """Runs already loaded: each item is a run, or a list of runs (the folds of a CV folder) averaged into one
        member."""
        return cls([Member(None, [m] if isinstance(m, LoadedRun) else list(m)) for m in runs], fabric)

    @property
    def first(self) -> Config:
        """The first run's config: what the members of an ensemble share (scoring, face framing) comes from it."""
        return self.members[0].runs[0].cfg

    @property
    def runs(self) -> list[LoadedRun]:
        return [run for member in self.members for run in member.runs]

    def prepared(self, run: LoadedRun) -> PreparedRun:
        if id(run) not in self._prepared:
            self._prepared[id(run)] = PreparedRun(run, self.fabric)
        return self._prepared[id(run)]

    def prepare_all(self) -> None:
        """Ready every run now (a server pays this at start-up, not on its first request); PyTorch models kept
        beside ONNX ones go to the device too."""
        for member in self.members:
            for run in member.runs:
                self.prepared(run)
            if member.torch_runs is not member.runs:
                for run in member.torch_runs:
                    setup_model(run, self.fabric)

    def _vote(
        self, run_outputs: Callable[[LoadedRun], RunOutput], weights: Sequence[float] | None = None, vote: Vote = "soft"
    ) -> RunOutput:
        return vote_members([m.runs for m in self.members], run_outputs, weights, vote)

    def predict_files(
        self,
        paths: Sequence[str],
        batch_size: int | None = None,
        num_workers: int | str = 0,
        progress: bool = True,
        tta: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        vote: Vote = "soft",
        group_people: bool | None = None,
    ) -> RunOutput:
        """Ensemble probabilities (N, 18) of image files in order, and the predicted years (N, 2) or None.

        Members are combined by ``vote`` with ``weights`` (default equal; soft: the weighted mean). ``tta``
        overrides every run's ``predict.tta`` (``[]``: none), ``group_people`` its ``predict.group_people``;
        None keeps each run's own. The years are the plain mean over every run that predicts them (TTA views
        already averaged); they let pseudo labels carry an age in years for a regression head. Runs sharing an
        image size, face cropping and prepare steps share one decode of the files.
        """
        caches: dict[tuple, ImageCache] = {}

        def run_outputs(run: LoadedRun) -> RunOutput:
            prepared = self.prepared(run)
            if prepared.cache_key not in caches:
                caches[prepared.cache_key] = decode_images(run.cfg, paths, progress)
            return prepared.outputs(caches[prepared.cache_key], batch_size, num_workers, progress, tta, group_people)

        return self._vote(run_outputs, weights, vote)

    def predict_arrays(
        self, images: Sequence[np.ndarray], batch_size: int | None = None, tta: Sequence[str] | None = None
    ) -> RunOutput:
        """As ``predict_files`` for images already decoded (RGB arrays, faces already found)."""
        return self._vote(lambda run: self.prepared(run).outputs(array_cache(run.cfg, images), batch_size, tta=tta))
