"""predict decodes each image once and names every file it cannot decode."""

import shutil

import pytest
from PIL import Image

from maskstatus.config import load_config
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.errors import DataError


@pytest.fixture(scope="module")
def run(demo_data, tmp_path_factory, tiny_overrides):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path_factory.mktemp('runs')}",
                             *tiny_overrides, "train.epochs=1", "train.limit_train_batches=1"])
    return train(cfg).run_dir


def test_each_image_is_decoded_once(run, demo_data, tmp_path, monkeypatch):
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    predict([run], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    images = sorted(str(p) for p in (demo_data.eval_dir / "images").iterdir())
    assert sorted(opened) == images


def test_undecodable_eval_images_are_all_named(run, demo_data, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(demo_data.eval_dir, eval_dir)
    files = sorted((eval_dir / "images").iterdir())
    files[3].write_bytes(b"not a jpeg")
    files[7].write_bytes(files[7].read_bytes()[:200])  # truncated
    with pytest.raises(DataError) as info:
        predict([run], eval_dir, tmp_path / "sub.csv", progress=False)
    message = str(info.value)
    assert "2 problem(s)" in message and str(files[3]) in message and str(files[7]) in message
    assert not (tmp_path / "sub.csv").exists()
