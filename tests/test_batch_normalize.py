"""train.normalize_on=device: uint8 batches normalised where they land give the floats the workers would."""

import numpy as np
import pandas as pd
import pytest
import torch
from lightning_fabric import Fabric

from maskstatus.config import ConfigError, load_config
from maskstatus.data.cache import ImageCache
from maskstatus.data.dataset import FaceDataset
from maskstatus.data.transforms import BatchNormalize, batch_normalizer, build_transforms
from maskstatus.infer.evaluate import normalize_on_device
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.labels import PROB_COLUMNS

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TRAIN = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Rotate", "limit": 10, "p": 0.5},
         {"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "p": 0.5}]


@pytest.mark.parametrize("mean,std", [IMAGENET, HALF], ids=["imagenet", "half"])
def test_batch_normalize_equals_albumentations_bit_for_bit(mean, std):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 20, 16, 3), dtype=np.uint8)
    images[0, 0, :, 0] = np.arange(16) * 17  # the ends of the range, 0 and 255, included
    per_image = build_transforms([], mean, std)
    expected = torch.stack([per_image(image=im)["image"] for im in images])
    deferred = build_transforms([], mean, std, defer_normalize=True)
    batch = torch.stack([deferred(image=im)["image"] for im in images])
    assert batch.dtype == torch.uint8
    got = batch_normalizer([], mean, std, True)(batch)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_a_pipeline_that_normalises_itself_is_not_deferred():
    mean, std = HALF
    own = [{"name": "Normalize", "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}, {"name": "GaussNoise", "p": 1.0}]
    nested = [{"name": "OneOf", "p": 1.0, "transforms": [{"name": "Normalize"}]}]
    image = np.full((8, 8, 3), 200, np.uint8)
    for specs in (own, nested):
        assert batch_normalizer(specs, mean, std, True) is None
        assert build_transforms(specs, mean, std, defer_normalize=True)(image=image)["image"].dtype == torch.float32
    assert isinstance(batch_normalizer(TRAIN, mean, std, True), BatchNormalize)
    assert batch_normalizer(TRAIN, mean, std, False) is None  # normalised in the workers: nothing left over
    with pytest.raises(TypeError, match="uint8"):
        BatchNormalize(mean, std)(torch.zeros(1, 3, 4, 4))


def test_a_step_that_makes_floats_is_a_config_error_naming_the_setting(tmp_path):
    from PIL import Image

    path = tmp_path / "a.jpg"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path)
    cache = ImageCache([str(path)], size=(8, 8), threads=1, progress=False).fill()
    specs = [{"name": "ToFloat"}]
    mean, std = HALF
    data = FaceDataset(cache, np.arange(1), build_transforms(specs, mean, std, defer_normalize=True),
                       normalize=batch_normalizer(specs, mean, std, True))
    with pytest.raises(ConfigError, match="train.normalize_on=workers"):
        data[0]


def test_auto_normalises_on_the_device_only_on_a_gpu():
    cpu = Fabric(accelerator="cpu", devices=1)
    assert not normalize_on_device("auto", cpu)
    assert normalize_on_device("device", cpu)
    assert not normalize_on_device("workers", cpu)
    with pytest.raises(ConfigError, match="train.normalize_on"):
        load_config(None, ["train.normalize_on=gpu"])


def test_training_and_prediction_are_the_same_on_the_device_and_in_the_workers(demo_data, tmp_path, tiny_overrides):
    out = {}
    for where in ("workers", "device"):
        cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path / where}", *tiny_overrides,
                                 f"transforms.train={TRAIN}", "train.mix.cutmix=0.5", "train.epochs=1",
                                 "train.limit_train_batches=3", "scheduler.warmup_epochs=0",
                                 f"train.normalize_on={where}"])
        run = train(cfg).run_dir
        oof = pd.read_csv(run / "predictions" / "oof.csv")[PROB_COLUMNS].to_numpy()
        _, sub = predict([run], demo_data.eval_dir, tmp_path / f"{where}.csv", progress=False)
        out[where] = oof, pd.read_csv(sub)[PROB_COLUMNS].to_numpy()
    for a, b in zip(out["workers"], out["device"]):
        np.testing.assert_array_equal(a, b)
