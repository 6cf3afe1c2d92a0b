"""Model construction: a timm backbone plus a head chosen by name from ``HEADS``."""

from __future__ import annotations

from ..config import ModelConfig
from .backbones import (
    OFFLINE_WEIGHTS,
    backbone_data_config,
    backbone_out_features,
    create_backbone,
    load_backbone_weights,
    load_offline_efficientnet_lite,
    offline_weights_path,
)
from .heads import (
    HEADS,
    MaskStatusModel,
    MultiSampleDropoutLinear,
    MultiTaskHead,
    SingleHead,
    outputs_to_probs,
    outputs_to_task_probs,
)

__all__ = [
    "HEADS",
    "OFFLINE_WEIGHTS",
    "MaskStatusModel",
    "MultiSampleDropoutLinear",
    "MultiTaskHead",
    "SingleHead",
    "backbone_data_config",
    "backbone_out_features",
    "create_backbone",
    "create_model",
    "load_backbone_weights",
    "load_offline_efficientnet_lite",
    "model_data_config",
    "offline_weights_path",
    "outputs_to_probs",
    "outputs_to_task_probs",
]


def create_model(cfg: ModelConfig) -> MaskStatusModel:
    """Build the model a ``ModelConfig`` describes."""
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path, cfg.drop_path_rate)
    extra = {"tasks": cfg.tasks, "age_output": cfg.age_output} if cfg.head == "multitask" else {}
    head = HEADS.build(
        cfg.head,
        in_features=backbone_out_features(backbone),
        dropout=cfg.dropout,
        samples=cfg.multisample_dropout,
        **extra,
    )
    return MaskStatusModel(backbone, head)


def model_data_config(model: MaskStatusModel) -> dict[str, tuple[float, ...]]:
    """``{"mean", "std"}`` the model's backbone expects its inputs normalised with."""
    return backbone_data_config(model.backbone)
