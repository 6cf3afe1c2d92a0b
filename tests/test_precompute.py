"""cache.precompute: the crops and resizes both pipelines start with, run once at cache fill, give the same pixels."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.config import ConfigError, load_config
from maskstatus.data.cache import ImageCache, cache_key
from maskstatus.data.dataset import FaceDataset
from maskstatus.data.transforms import Prepare, build_transforms, shared_prefix, split_prepare
from maskstatus.infer import pipeline as pipeline_module
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.labels import PROB_COLUMNS

CROP = {"name": "CenterCrop", "height": 56, "width": 44}
RESIZE = {"name": "Resize", "height": 48, "width": 36}
TRAIN = [CROP, RESIZE, {"name": "HorizontalFlip", "p": 0.5}, {"name": "Rotate", "limit": 10, "p": 0.5},
         {"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "p": 0.5}]
EVAL = [CROP, RESIZE]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_shared_prefix_stops_at_the_first_random_or_differing_step():
    assert shared_prefix(TRAIN, EVAL) == 2
    assert shared_prefix(EVAL, EVAL) == 2
    assert shared_prefix([{"name": "HorizontalFlip", "p": 0.5}, CROP], [CROP]) == 0
    assert shared_prefix([CROP, RESIZE], [CROP, {**RESIZE, "height": 40}]) == 1  # eval resizes otherwise
    assert shared_prefix([{**CROP, "p": 0.5}], [{**CROP, "p": 0.5}]) == 0  # sometimes applied: random
    assert shared_prefix([{"name": "RandomCrop", "height": 8, "width": 8}] * 2, [{"name": "RandomCrop", "height": 8,
                                                                                  "width": 8}] * 2) == 0
    prepare, train_rest, eval_rest = split_prepare(TRAIN, EVAL)
    assert prepare.specs == EVAL and train_rest == TRAIN[2:] and eval_rest == []
    assert split_prepare(TRAIN, EVAL, enabled=False) == (None, TRAIN, EVAL)
    with pytest.raises(ValueError, match="deterministic"):
        Prepare([{"name": "HorizontalFlip", "p": 0.5}])
    assert shared_prefix([{**CROP, "p": "always"}], [{**CROP, "p": "always"}]) == 0  # left to the config check


def test_a_crop_larger_than_the_cached_image_names_the_config_key_before_decoding(demo_data):
    prepare, _, _ = split_prepare(TRAIN, EVAL)
    with pytest.raises(ConfigError, match=r"transforms\.train\[0:2\] \(CenterCrop, Resize\) cannot run on a 40x30"):
        ImageCache(_paths(demo_data, 2), size=(40, 30), progress=False, prepare=prepare)


def _paths(demo_data, n=24):
    return sorted(str(p) for p in (demo_data.train_dir / "images").rglob("*.*"))[:n]


@pytest.mark.parametrize("specs", [TRAIN, EVAL], ids=["train", "eval"])
def test_prepared_cache_gives_the_per_sample_pixels(demo_data, specs):
    paths = _paths(demo_data)
    plain = ImageCache(paths, size=(64, 48), threads=1, progress=False).fill()
    prepare, rest, _ = split_prepare(specs, EVAL)
    prepared = ImageCache(paths, size=(64, 48), threads=1, progress=False, prepare=prepare).fill()
    assert prepared.item_shape == (48, 36, 3) and np.asarray(prepared[0]).shape == (48, 36, 3)
    full = FaceDataset(plain, np.arange(len(paths)), build_transforms(specs, MEAN, STD), seed=7)
    fast = FaceDataset(prepared, np.arange(len(paths)), build_transforms(rest, MEAN, STD), seed=7)
    for epoch in (0, 1):  # the random steps draw the same numbers with or without the steps before them
        full.set_epoch(epoch)
        fast.set_epoch(epoch)
        for i in range(len(paths)):
            torch.testing.assert_close(fast[i]["image"], full[i]["image"], atol=0, rtol=0)


def test_disk_cache_key_names_the_prepare_steps(demo_data, tmp_path):
    paths = _paths(demo_data, 4)
    prepare = Prepare(EVAL)
    other = Prepare([CROP, {**RESIZE, "height": 40}])
    keys = {ImageCache(paths, size=(64, 48), mode="disk", cache_dir=tmp_path, progress=False,
                       prepare=p).fill().file.name for p in (None, prepare, other)}
    assert len(keys) == 3  # a cache prepared otherwise is never reused
    assert cache_key(paths, (64, 48)) in " ".join(keys)  # no prepare steps: the key of earlier versions
    again = ImageCache(paths, size=(64, 48), mode="disk", cache_dir=tmp_path, progress=False, prepare=prepare).fill()
    assert np.asarray(again[0]).shape == (48, 36, 3)


@pytest.mark.slow
def test_training_and_prediction_are_the_same_with_and_without_precompute(demo_data, tmp_path, tiny_overrides,
                                                                          monkeypatch):
    oofs = {}
    for precompute in (True, False):
        cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path / str(precompute)}",
                                 *tiny_overrides, "cache.size=[64, 48]", f"cache.precompute={precompute}",
                                 f"transforms.train={TRAIN}", f"transforms.eval={EVAL}", "train.epochs=1",
                                 "train.limit_train_batches=3", "scheduler.warmup_epochs=0"])
        run = train(cfg).run_dir
        oofs[precompute] = (run, pd.read_csv(run / "predictions" / "oof.csv"))
    np.testing.assert_array_equal(oofs[True][1][PROB_COLUMNS].to_numpy(), oofs[False][1][PROB_COLUMNS].to_numpy())
    run = oofs[True][0]
    _, fast = predict([run], demo_data.eval_dir, tmp_path / "fast.csv", progress=False)
    monkeypatch.setattr(pipeline_module, "split_prepare", lambda train_, eval_, enabled: (None, train_, eval_))
    _, slow = predict([run], demo_data.eval_dir, tmp_path / "slow.csv", progress=False)
    np.testing.assert_array_equal(pd.read_csv(fast)[PROB_COLUMNS].to_numpy(),
                                  pd.read_csv(slow)[PROB_COLUMNS].to_numpy())
