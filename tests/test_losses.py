import pytest
import torch
import torch.nn.functional as F

from maskstatus.config import ConfigError, LossConfig, LossTerm
from maskstatus.labels import NUM_CLASSES, TASKS
from maskstatus.losses import LOSSES, TaskLoss, WeightedSum, build_loss


def _confident_logits(target: torch.Tensor, num_classes: int, scale: float = 50.0) -> torch.Tensor:
    return F.one_hot(target, num_classes).float() * scale


@pytest.mark.parametrize("num_classes", [2, 3, NUM_CLASSES])
def test_soft_f1_perfect_and_wrong(num_classes):
    loss = LOSSES.build("soft_f1")
    # Fewer samples than classes for C=18: classes absent from the batch must not count.
    target = torch.arange(10) % num_classes
    perfect = _confident_logits(target, num_classes)
    wrong = _confident_logits((target + 1) % num_classes, num_classes)
    assert loss(perfect, target).item() < 1e-3
    assert loss(wrong, target).item() > 0.99


@pytest.mark.parametrize("num_classes", [2, 3, NUM_CLASSES])
def test_soft_f1_gradient_flows(num_classes):
    torch.manual_seed(0)
    logits = torch.randn(16, num_classes, requires_grad=True)
    target = torch.randint(0, num_classes, (16,))
    value = LOSSES.build("soft_f1")(logits, target)
    assert 0.0 < value.item() < 1.0
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # A small step against the gradient lowers the loss.
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
    assert LOSSES.build("soft_f1")(stepped, target).item() < value.item()


def test_focal_gamma0_equals_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 5), torch.randint(0, 5, (32,))
    assert torch.allclose(LOSSES.build("focal", gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    weight = [1.0, 2.0, 0.5, 3.0, 1.0]
    weighted_ce = F.cross_entropy(logits, target, weight=torch.tensor(weight))
    assert torch.allclose(LOSSES.build("focal", gamma=0.0, weight=weight)(logits, target), weighted_ce)
    assert torch.allclose(LOSSES.build("ce", weight=weight)(logits, target), weighted_ce)


def test_focal_downweights_easy_examples():
    logits, target = torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 0])
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, 1)[:, 0]
    expected = (0.25 * (1 - p) ** 2 * ce).mean()
    assert torch.allclose(LOSSES.build("focal", gamma=2.0, alpha=0.25)(logits, target), expected)


def test_label_smoothing():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 4), torch.randint(0, 4, (32,))
    assert torch.allclose(LOSSES.build("label_smoothing", smoothing=0.0)(logits, target), F.cross_entropy(logits, target))
    # The default must actually smooth.
    assert torch.allclose(
        LOSSES.build("label_smoothing")(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1)
    )
    assert torch.allclose(
        LOSSES.build("ce", label_smoothing=0.2)(logits, target), F.cross_entropy(logits, target, label_smoothing=0.2)
    )


def test_weighted_sum():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce, f1 = LOSSES.build("ce"), LOSSES.build("soft_f1")
    total = WeightedSum([ce, f1], [0.7, 2.0])(logits, target)
    assert torch.allclose(total, 0.7 * ce(logits, target) + 2.0 * f1(logits, target))


def test_task_loss_multitask_weights():
    torch.manual_seed(0)
    cfg = LossConfig(
        terms=[LossTerm(name="ce"), LossTerm(name="soft_f1", weight=0.5)],
        task_weights={"mask": 2.0, "gender": 1.0, "age": 0.25},
    )
    task_loss = build_loss(cfg, list(TASKS))
    assert isinstance(task_loss, TaskLoss)
    outputs = {t: torch.randn(6, k, requires_grad=True) for t, k in TASKS.items()}
    targets = {t: torch.randint(0, k, (6,)) for t, k in TASKS.items()}
    targets["class"] = torch.zeros(6, dtype=torch.long)  # extra targets are fine
    total, parts = task_loss(outputs, targets)

    soft_f1 = LOSSES.build("soft_f1")
    expected_parts = {
        t: F.cross_entropy(outputs[t], targets[t]) + 0.5 * soft_f1(outputs[t], targets[t]) for t in TASKS
    }
    assert set(parts) == set(TASKS)
    for t in TASKS:
        assert torch.allclose(parts[t], expected_parts[t])
        assert not parts[t].requires_grad
    expected = 2.0 * expected_parts["mask"] + expected_parts["gender"] + 0.25 * expected_parts["age"]
    assert torch.allclose(total, expected)
    total.backward()
    assert all(outputs[t].grad is not None for t in TASKS)


def test_task_loss_single_head_ignores_task_weights():
    torch.manual_seed(0)
    cfg = LossConfig(terms=[LossTerm(name="focal", params={"gamma": 1.0})], task_weights={"mask": 5.0})
    task_loss = build_loss(cfg, {"class": NUM_CLASSES})
    logits, target = torch.randn(4, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (4,))
    total, parts = task_loss({"class": logits}, {"class": target, "mask": target % 3})
    assert torch.allclose(total, LOSSES.build("focal", gamma=1.0)(logits, target))
    assert list(parts) == ["class"]


def test_per_head_class_weights():
    weights = {"mask": [1.0, 5.0, 1.0], "age": [1.0, 1.0, 3.0]}
    cfg = LossConfig(terms=[LossTerm(name="ce", params={"weight": weights})])
    task_loss = build_loss(cfg, list(TASKS))
    assert task_loss.heads["mask"].terms[0].weight.tolist() == weights["mask"]
    assert task_loss.heads["gender"].terms[0].weight is None


def test_per_class_weight_length_checked():
    cfg = LossConfig(terms=[LossTerm(name="ce", params={"weight": [1.0, 2.0]})])
    with pytest.raises(ConfigError, match=r"loss\.terms\[0\]\.params\.weight.*'mask' has 3 classes"):
        build_loss(cfg, list(TASKS))


def test_unknown_loss_name():
    cfg = LossConfig(terms=[LossTerm(name="ce"), LossTerm(name="focall")])
    with pytest.raises(ConfigError) as info:
        build_loss(cfg, ["class"])
    msg = str(info.value)
    assert "loss.terms[1].name" in msg and "'focall'" in msg
    for name in ("ce", "focal", "label_smoothing", "soft_f1"):
        assert name in msg


def test_unknown_loss_param():
    cfg = LossConfig(terms=[LossTerm(name="focal", params={"gama": 2.0})])
    with pytest.raises(ConfigError, match=r"loss\.terms\[0\]\.params.*'gama'"):
        build_loss(cfg, ["class"])


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head"):
        build_loss(LossConfig(), ["colour"])


def test_no_matching_output():
    task_loss = build_loss(LossConfig(), ["class"])
    with pytest.raises(KeyError, match="no model output"):
        task_loss({"mask": torch.randn(2, 3)}, {"mask": torch.zeros(2, dtype=torch.long)})
