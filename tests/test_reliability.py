"""Issue 10: every bad input or fault a user hit is a clear error naming the file or key, and loses nothing."""

import pandas as pd
import pytest
import torch

from maskstatus.cli import main
from maskstatus.config import ConfigError
from maskstatus.train.trainer import train
from maskstatus.errors import DataError, MaskstatusError, RunError
from maskstatus.runs import RunDir, atomic_save_torch, load_checkpoint


def _run_folders(cfg) -> list:
    return sorted(cfg.output_dir.iterdir()) if cfg.output_dir.exists() else []


# 1. A damaged checkpoint names its file.
def test_empty_or_truncated_checkpoint_names_the_file(tmp_path):
    empty = tmp_path / "best.pt"
    empty.write_bytes(b"")
    with pytest.raises(RunError, match="best.pt"):
        load_checkpoint(empty)
    whole = tmp_path / "whole.pt"
    atomic_save_torch({"model": {"w": torch.ones(1000)}, "epoch": 1}, whole)
    cut = tmp_path / "last.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(RunError, match=r"last\.pt.*truncated"):
        load_checkpoint(cut)


# 2. Extending a finished cosine run keeps learning.
def test_extending_a_finished_cosine_run_trains_the_new_epoch(tiny_config):
    base = ["train.limit_train_batches=1", "scheduler.name=cosine", "optimizer.lr=0.001"]
    run = RunDir(train(tiny_config("train.epochs=1", *base)).run_dir)
    before = load_checkpoint(run.last)["model"]
    train(tiny_config("train.epochs=2", *base), resume=run.root)
    metrics = pd.read_csv(run.metrics)
    assert metrics["epoch"].tolist() == [0, 1]
    # The 2-epoch cosine's rate at epoch 1 (the 1-epoch run's schedule would have given 0).
    assert metrics["lr"].tolist() == pytest.approx([0.001, 0.0005])
    after = load_checkpoint(run.last)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


# 3. --resume refuses overrides it would ignore, naming them.
def test_resume_refuses_overrides_outside_train(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "train.epochs=3", "optimizer.lr=0.5",
                 "model.backbone=resnet18"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr" in err and "model.backbone" in err and "train.epochs" not in err.split("ignored:")[1]
    assert main(["cv", "--resume", str(tmp_path), "split.folds=3"]) == 2
    assert "split.folds" in capsys.readouterr().err


# 5. demo-data onto an existing folder: a clear message and --overwrite.
def test_demo_data_refuses_an_existing_folder_until_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--people", "6", "--seed", "1"]) == 0
    info = (out / "eval" / "info.csv").read_bytes()
    capsys.readouterr()
    assert main(["demo-data", str(out), "--people", "6", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(out) in err and "Traceback" not in err
    assert (out / "eval" / "info.csv").read_bytes() == info  # nothing lost
    assert main(["demo-data", str(out), "--people", "6", "--seed", "2", "--overwrite"]) == 0
    assert (out / "eval" / "info.csv").read_bytes() != info


# 9. pretrained=true without internet (conftest sets HF_HUB_OFFLINE=1): the key, the offline way, no run folder.
def test_pretrained_true_offline_names_the_key_and_the_alternative(tiny_config):
    cfg = tiny_config("model.pretrained=true", "train.epochs=1")
    with pytest.raises(ConfigError, match=r"model\.pretrained=true[\s\S]*model\.pretrained=offline"):
        train(cfg)
    assert _run_folders(cfg) == []


# 10. Failed starts leave no run folder.
@pytest.mark.parametrize("override, key", [
    ("optimizer.name=adamx", "optimizer.name"),
    ("scheduler.name=cosin", "scheduler.name"),
    ("loss.terms=[{name: focall}]", "loss.terms[0].name"),
    ("model.backbone=resnet1800", "model.backbone"),
])
def test_a_bad_name_leaves_no_run_folder(tiny_config, override, key):
    cfg = tiny_config(override, "train.epochs=1")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        train(cfg)
    assert _run_folders(cfg) == []


def test_a_bad_folds_file_names_the_users_file_and_leaves_no_run_folder(tiny_config, tmp_path):
    folds = tmp_path / "my_folds.csv"
    pd.DataFrame({"person_id": ["000001"], "fold": [0]}).to_csv(folds, index=False)
    cfg = tiny_config(f"split.folds_file={folds}", "train.epochs=1")
    with pytest.raises(DataError, match="my_folds.csv"):
        train(cfg)
    assert _run_folders(cfg) == []


# 14. The CLI prints the project's errors as one line and keeps tracebacks for bugs.
@pytest.mark.parametrize("bug", [ValueError("internal"), KeyError("internal")])
def test_cli_keeps_the_traceback_of_a_bug(monkeypatch, tmp_path, bug):
    import maskstatus.cli as cli

    def broken(args):
        raise bug

    monkeypatch.setattr(cli, "_cmd_demo_data", broken)
    with pytest.raises(type(bug), match="internal"):
        main(["demo-data", str(tmp_path / "d")])


def test_cli_prints_a_project_error_as_one_line(monkeypatch, tmp_path, capsys):
    import maskstatus.cli as cli

    def bad_input(args):
        raise MaskstatusError("the key data.root is wrong")

    monkeypatch.setattr(cli, "_cmd_demo_data", bad_input)
    assert main(["demo-data", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == "error: the key data.root is wrong\n"


@pytest.fixture(scope="module")
def one_run(demo_data, tmp_path_factory, tiny_overrides):
    from maskstatus.config import load_config

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "train.epochs=1", "train.limit_train_batches=1"])
    return train(cfg).run_dir


def _no_model_loading(monkeypatch):
    import maskstatus.infer.pipeline as pipeline_module

    def fail(*args, **kwargs):
        raise AssertionError("the output should have been checked before any run was loaded")

    monkeypatch.setattr(pipeline_module, "load_run", fail)


# 4. predict --out onto a folder fails before the work and writes nothing.
def test_predict_out_onto_a_folder_fails_first(one_run, demo_data, tmp_path, monkeypatch):
    from maskstatus.infer.predict import predict
    from maskstatus.errors import UsageError

    outdir = tmp_path / "outdir"
    outdir.mkdir()
    _no_model_loading(monkeypatch)
    with pytest.raises(UsageError, match="outdir.*is a folder"):
        predict([one_run], demo_data.eval_dir, outdir)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="afile is a file"):
        predict([one_run], demo_data.eval_dir, tmp_path / "afile" / "sub" / "submission.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "outdir"]


# 11. An edited config.yaml that no longer matches the weights is refused, naming the key.
def test_predict_refuses_a_config_edited_after_training(one_run, demo_data, tmp_path):
    import shutil

    import yaml

    from maskstatus.infer.predict import predict

    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["cache"]["size"] = [64, 64]
    cfg["predict"]["tta"] = ["hflip"]  # not a key the weights depend on
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunError, match=r"cache\.size: \[48, 36\] in the checkpoint, \[64, 64\]") as err:
        predict([run], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    assert "tta" not in str(err.value)
    assert not (tmp_path / "sub.csv").exists()


def test_predict_accepts_a_checkpoint_older_than_a_config_key(one_run, demo_data, tmp_path):
    # A checkpoint written before data.face_crop existed stores no such key: that is no edit of the config.
    import shutil

    import torch

    from maskstatus.infer.predict import predict

    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    del state["config"]["data"]["face_crop"]
    torch.save(state, run / "checkpoints" / "best.pt")
    sub, _ = predict([run], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    assert len(pd.read_csv(sub)) == len(pd.read_csv(demo_data.eval_dir / "info.csv"))


# 13. predict says which output format it chose and why.
def test_predict_says_which_format_and_hints_at_the_eval_folder(one_run, demo_data, tmp_path, caplog):
    import logging

    from maskstatus.infer.predict import predict

    with caplog.at_level(logging.INFO, logger="maskstatus"):
        predict([one_run], demo_data.eval_dir / "images", tmp_path / "sub.csv", progress=False)
    assert f"pass --data {demo_data.eval_dir}" in caplog.text and "plain image folder" in caplog.text
    assert list(pd.read_csv(tmp_path / "sub.csv").columns) == ["image", "ans", "mask", "gender", "age"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskstatus"):
        predict([one_run], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    assert "competition eval folder" in caplog.text and "info.csv" in caplog.text


# 12. Without cache.size, images of mixed sizes fail naming the odd file (not inside torch.stack).
def test_mixed_image_sizes_name_the_odd_file(tmp_path):
    import numpy as np
    from lightning_fabric import Fabric
    from PIL import Image

    from maskstatus.data.cache import ImageCache
    from maskstatus.data.dataset import FaceDataset
    from maskstatus.data.transforms import build_transforms
    from maskstatus.infer.evaluate import eval_loader

    paths = []
    for i, (h, w) in enumerate([(40, 30), (40, 30), (50, 30), (40, 30)]):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(paths[-1])
    cache = ImageCache(paths, size=None, progress=False).fill()
    dataset = FaceDataset(cache, np.arange(4), build_transforms([], (0.5,) * 3, (0.5,) * 3))
    loader = eval_loader(dataset, 4, 0, Fabric(accelerator="cpu", devices=1))
    with pytest.raises(DataError, match=r"cache\.size[\s\S]*img2\.png: makes a 50x30 tensor, not 40x30") as err:
        next(iter(loader))
    assert "img0.png" not in str(err.value)


# 6. Ages outside 1..120 and images with a side under 8 px are reported like the other data problems.
def test_implausible_ages_and_tiny_images_are_problems(tmp_path):
    from PIL import Image

    from data_builders import make_train
    from maskstatus.data.tables import train_table
    from maskstatus.data.validate import validate_train

    train = make_train(tmp_path)
    csv = pd.read_csv(train / "train.csv", dtype=str)
    csv.loc[csv["id"] == "000001", "age"] = "200"
    csv.loc[csv["id"] == "000003", "age"] = "0"
    csv.to_csv(train / "train.csv", index=False)
    tiny = next((train / "images").glob("001498-1_*")) / "normal.jpg"
    for old in tiny.parent.glob("normal.*"):
        old.unlink()
    Image.new("RGB", (1, 1)).save(tiny)
    table, problems = validate_train(train)
    text = "\n".join(map(str, problems))
    assert f"{train / 'train.csv'}:2: age 200 is outside 1..120 years" in text
    assert f"{train / 'train.csv'}:4: age 0 is outside 1..120 years" in text
    assert f"{tiny}: 1x1 pixels: a side under 8 px" in text
    assert len(problems) == 3 and len(table) == 6  # only the second person's six other images are usable
    with pytest.raises(DataError, match="age 200"):
        train_table(train)


# 7. A huge image is refused from its header, naming the file, before it is decoded (and without PIL's warning).
def test_a_huge_image_is_refused_before_decoding(tmp_path):
    import struct
    import warnings

    from PIL import Image

    from maskstatus.data.images import ImageError, load_rgb
    from maskstatus.data.validate import check_image_files

    huge = tmp_path / "huge.bmp"
    Image.new("RGB", (10, 10)).save(huge)
    data = bytearray(huge.read_bytes())
    data[18:26] = struct.pack("<ii", 12000, 12000)  # BMP width and height: a 12000x12000 header, 300 bytes of data
    huge.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"huge\.bmp.*12000x12000 is 144 million pixels"):
            load_rgb(huge)
        assert "144 million pixels" in check_image_files([str(huge)])[str(huge)]


# 8. A folder name with a leading or trailing space is found; a CSV with a space after each comma still works.
def test_folder_names_with_spaces(tmp_path):
    from data_builders import make_train
    from maskstatus.data.tables import train_table

    train = make_train(tmp_path)
    csv = pd.read_csv(train / "train.csv", dtype=str)
    for pid, spaced in (("000001", " 000001_female_Asian_45"), ("000003", "000003_male_Black_60 ")):
        old = csv.loc[csv["id"] == pid, "path"].item()
        (train / "images" / old).rename(train / "images" / spaced)
        csv.loc[csv["id"] == pid, "path"] = spaced
    csv.to_csv(train / "train.csv", index=False)
    table = train_table(train)
    assert len(table) == 21
    assert {p.split("/")[-2] for p in table["image_path"]} >= {" 000001_female_Asian_45", "000003_male_Black_60 "}

    other = make_train(tmp_path / "other")
    lines = (other / "train.csv").read_text().splitlines()
    (other / "train.csv").write_text("\n".join(", ".join(line.split(",")) for line in lines) + "\n")
    assert len(train_table(other)) == 21


def test_the_one_macro_f1_is_sklearns(tmp_path):
    import numpy as np
    from sklearn.metrics import f1_score

    from maskstatus.scoring.metrics import macro_f1

    rng = np.random.default_rng(0)
    for k in (2, 3, 18):
        true, pred = rng.integers(0, k, 300), rng.integers(0, k - 1, 300)  # the last class is never predicted
        true[true == 1] = 0  # and class 1 never occurs
        expected = f1_score(true, pred, labels=list(range(k)), average="macro", zero_division=0)
        assert macro_f1(true, pred, k) == pytest.approx(expected, abs=1e-12)


def test_resuming_from_a_damaged_last_checkpoint_names_it_and_changes_nothing(one_run, tiny_config, tmp_path):
    import shutil

    run = RunDir(tmp_path / "run")
    shutil.copytree(one_run, run.root)
    run.last.write_bytes(run.last.read_bytes()[:100])
    config = run.config.read_bytes()
    with pytest.raises(RunError, match=r"last\.pt"):
        train(tiny_config("train.epochs=2"), resume=run.root)
    assert run.config.read_bytes() == config


# Training decodes each image once: the cache fill, which also names every undecodable file before a run folder.
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_training_decodes_each_image_once_and_a_corrupt_one_names_its_file(demo_data, tmp_path, tiny_overrides,
                                                                           monkeypatch, mode):
    import shutil
    from collections import Counter

    import maskstatus.data.validate as validate_module
    from maskstatus.config import load_config
    from maskstatus.data import cache as cache_module
    from maskstatus.data.tables import load_train_table

    root = tmp_path / "data"
    shutil.copytree(demo_data.root, root)
    overrides = [f"data.root={root}", f"output_dir={tmp_path / 'runs'}", f"cache.dir={tmp_path / 'cache'}",
                 *tiny_overrides, f"cache.mode={mode}", "train.epochs=1", "train.limit_train_batches=1",
                 "scheduler.warmup_epochs=0"]
    decoded: Counter = Counter()
    real_load, real_decode = validate_module.load_rgb, cache_module.ImageCache._decode
    monkeypatch.setattr(validate_module, "load_rgb", lambda p: (decoded.update([str(p)]), real_load(p))[1])
    monkeypatch.setattr(cache_module.ImageCache, "_decode",
                        lambda self, i: (decoded.update([self.paths[i]]), real_decode(self, i))[1])
    cfg = load_config(None, overrides)
    table = load_train_table(cfg)
    assert not decoded  # the table alone decodes nothing: the cache will
    train(cfg)
    assert set(decoded) == set(table["image_path"]) and set(decoded.values()) == {1}

    bad = next(sorted((root / "train" / "images").iterdir())[3].glob("mask2.*"))
    bad.write_bytes(b"not a jpeg at all")
    cfg = load_config(None, [*overrides, f"output_dir={tmp_path / 'runs2'}"])
    with pytest.raises(DataError, match=f"{bad.parent.name}/{bad.name}"):
        train(cfg)
    assert _run_folders(cfg) == []
    # With data.skip_bad validation decodes first and leaves the file out; the run trains.
    cfg = load_config(None, [*overrides, f"output_dir={tmp_path / 'runs3'}", "data.skip_bad=true"])
    assert train(cfg).run_dir.is_dir()
