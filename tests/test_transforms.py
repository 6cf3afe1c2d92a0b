import numpy as np
import pytest
import torch

from maskstatus.config import ConfigError
from maskstatus.data.transforms import build_train_eval, build_transforms

TRAIN = [
    {"name": "CenterCrop", "height": 32, "width": 32},
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "OneOf", "p": 1.0, "transforms": [{"name": "Rotate", "limit": 10}, {"name": "GaussNoise"}]},
    {"name": "ColorJitter", "p": 0.5},
    {"name": "CoarseDropout", "p": 0.5},
]
EVAL = [{"name": "CenterCrop", "height": 32, "width": 32}]


def test_pipelines_from_specs_normalise_with_backbone_stats():
    train, ev = build_train_eval(TRAIN, EVAL, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_hw=(40, 36))
    img = np.full((40, 36, 3), 255, dtype=np.uint8)
    out = ev(image=img)["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    assert train(image=img)["image"].shape == (3, 32, 32)


def test_explicit_normalize_kept():
    ev = build_transforms([{"name": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}], (0.5,) * 3, (0.5,) * 3)
    out = ev(image=np.full((4, 4, 3), 255, dtype=np.uint8))["image"]
    assert torch.allclose(out, torch.ones_like(out))


def test_train_eval_shape_mismatch_is_refused():
    with pytest.raises(ConfigError, match="transforms.train makes tensors"):
        build_train_eval([{"name": "Resize", "height": 16, "width": 16}], [], (0.5,) * 3, (0.5,) * 3, (40, 36))


def test_seeded_pipeline_is_reproducible():
    train = build_transforms(TRAIN, (0.5,) * 3, (0.5,) * 3)
    img = np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8)
    train.set_random_seed(7)
    a = train(image=img)["image"]
    train.set_random_seed(7)
    b = train(image=img)["image"]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "NoSuchTransform"}, r"transforms\[0\]\.name"),
        ({"p": 0.5}, "needs a 'name'"),
        ({"name": "HorizontalFlip", "wrong_arg": 1}, r"transforms\[0\]: HorizontalFlip takes no argument\(s\) \[.wrong_arg.\]"),
        ({"name": "OneOf"}, r"transforms\[0\]\.transforms"),
    ],
)
def test_bad_specs_name_the_entry(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_transforms([spec], (0.5,) * 3, (0.5,) * 3)
