"""Settings for busy GPUs: train.num_workers=auto (and --num-workers auto), train.compile."""

import pytest
from lightning_fabric import Fabric

from maskstatus.cli import build_parser
from maskstatus.config import ConfigError, load_config
from maskstatus.infer import evaluate
from maskstatus.infer.evaluate import loader_workers


def test_auto_gives_each_process_of_the_machine_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(evaluate, "available_cores", lambda: 16)
    assert loader_workers("auto", Fabric(accelerator="cpu", devices=1)) == 15
    assert loader_workers("auto", Fabric(accelerator="cpu", devices=2, strategy="ddp")) == 7
    monkeypatch.setattr(evaluate, "available_cores", lambda: 1)
    assert loader_workers("auto", Fabric(accelerator="cpu", devices=1)) == 0  # the process itself loads
    assert loader_workers(3, Fabric(accelerator="cpu", devices=1)) == 3


def test_config_and_cli_take_a_count_or_auto():
    assert load_config(None, ["train.num_workers=auto"]).train.num_workers == "auto"
    assert load_config(None, ["train.num_workers=2"]).train.num_workers == 2
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="train.num_workers"):
            load_config(None, [f"train.num_workers={bad}"])
    parser = build_parser()
    assert parser.parse_args(["predict", "--run", "r", "--data", "d", "--out", "o.csv", "--num-workers", "auto"]).num_workers == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--run", "r", "--data", "d", "--out", "o.csv", "--num-workers", "-2"])


def test_a_compiled_model_trains_and_its_checkpoint_predicts(demo_data, tmp_path, tiny_overrides, monkeypatch):
    import functools

    import torch

    from maskstatus.infer.predict import predict
    from maskstatus.train.trainer import train

    compiled = []
    real = torch.compile

    def eager_compile(model, **kwargs):  # the wiring, without paying minutes of C++ compiling on a CPU
        compiled.append(type(model).__name__)
        return functools.partial(real, backend="eager")(model, **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path}", *tiny_overrides,
                             "train.epochs=1", "train.limit_train_batches=2", "train.compile=true",
                             "train.ema_decay=0.9"])
    run = train(cfg).run_dir
    assert compiled and set(compiled) == {"MaskStatusModel"}  # Fabric compiles again after wrapping
    state = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    keys = list(state["model"]) if "model" in state else list(state)
    assert not any("_orig_mod" in k for k in keys)  # the plain module's names: loads without torch.compile
    _, probs = predict([run], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    assert probs.exists()
