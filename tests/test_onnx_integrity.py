"""The ONNX backend refuses an export whose files are not the ones written together: each error names the file."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.cli import main
from maskstatus.config import load_config
from maskstatus.infer.export import export
from maskstatus.infer.onnx_model import SIDECAR_DIGEST, onnx_path, sidecar_path
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.errors import RunError
from maskstatus.labels import PROB_COLUMNS


def _train(demo_data, out, tiny_overrides, seed):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "model.head=multitask", "train.epochs=1", "train.limit_train_batches=2", f"seed={seed}"])
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def exported(demo_data, tmp_path_factory, tiny_overrides):
    """Two tiny runs of the same config (other seeds, so other weights), each exported, and their ONNX answers."""
    out = tmp_path_factory.mktemp("integrity_runs")
    runs = [_train(demo_data, out, tiny_overrides, seed) for seed in (11, 12)]
    for run in runs:
        export(run)
    probs = _probs(runs[0], demo_data, out / "first.csv")
    return runs, probs


def _probs(run, demo_data, out) -> np.ndarray:
    _, probs_path = predict([run], demo_data.eval_dir, out, progress=False, backend="onnx")
    return pd.read_csv(probs_path)[PROB_COLUMNS].to_numpy()


@pytest.fixture
def run(exported, tmp_path):
    """A private copy of the first exported run, free to tamper with."""
    copy = tmp_path / "run"
    shutil.copytree(exported[0][0], copy)
    return copy


def _refused(run, demo_data, tmp_path, *names) -> str:
    with pytest.raises(RunError) as info:
        predict([run], demo_data.eval_dir, tmp_path / "x.csv", progress=False, backend="onnx")
    message = str(info.value)
    for name in names:
        assert str(name) in message
    assert f"re-run `maskstatus export {run}`" in message
    assert not (tmp_path / "x.csv").exists()
    return message


def test_an_untouched_export_predicts_as_before(exported, run, demo_data, tmp_path):
    np.testing.assert_array_equal(_probs(run, demo_data, tmp_path / "again.csv"), exported[1])
    # The sidecar's digest covers its content, not its layout: re-indented, it is still the same export.
    side = sidecar_path(onnx_path(run))
    side.write_text(json.dumps(json.loads(side.read_text()), indent=4))
    np.testing.assert_array_equal(_probs(run, demo_data, tmp_path / "reindented.csv"), exported[1])


def test_another_runs_onnx_file_is_refused(exported, run, demo_data, tmp_path):
    other = exported[0][1]
    shutil.copy(onnx_path(other), onnx_path(run))
    message = _refused(run, demo_data, tmp_path, onnx_path(run), sidecar_path(onnx_path(run)))
    assert "replaced since, or another run's export" in message


def test_another_runs_whole_export_is_refused_by_the_checkpoint(exported, run, demo_data, tmp_path):
    other = exported[0][1]
    shutil.copy(onnx_path(other), onnx_path(run))
    shutil.copy(sidecar_path(onnx_path(other)), sidecar_path(onnx_path(run)))
    message = _refused(run, demo_data, tmp_path, onnx_path(run), run / "checkpoints" / "best.pt")
    assert "exported from another version of" in message


def _reorder_outputs(meta):
    meta["outputs"] = dict(reversed(meta["outputs"].items()))


@pytest.mark.parametrize("edit", [lambda m: m["normalization"]["mean"].__setitem__(0, 0.1),
                                  lambda m: m["normalization"]["std"].__setitem__(2, 0.9),
                                  _reorder_outputs], ids=["mean", "std", "outputs-order"])
def test_an_edited_sidecar_is_refused(run, demo_data, tmp_path, edit):
    side = sidecar_path(onnx_path(run))
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta, indent=2))
    message = _refused(run, demo_data, tmp_path, side)
    assert "edited after the export" in message


def test_a_retrained_or_replaced_checkpoint_is_refused(exported, run, demo_data, tmp_path):
    checkpoint = run / "checkpoints" / "best.pt"
    shutil.copy(exported[0][1] / "checkpoints" / "best.pt", checkpoint)  # another run's weights
    _refused(run, demo_data, tmp_path, onnx_path(run), checkpoint)
    state = torch.load(exported[0][0] / "checkpoints" / "best.pt", weights_only=True)
    with torch.no_grad():
        next(iter(state["model"].values())).add_(1e-3)  # trained on a little: the same shapes, other weights
    torch.save(state, checkpoint)
    _refused(run, demo_data, tmp_path, onnx_path(run), checkpoint)


def test_an_export_without_digests_is_refused(run, demo_data, tmp_path):
    """An export by the previous version (format 1, no digests) cannot show its files belong together."""
    side = sidecar_path(onnx_path(run))
    meta = json.loads(side.read_text())
    for key in ("onnx", SIDECAR_DIGEST):
        del meta[key]
    meta["format"] = 1
    side.write_text(json.dumps(meta, indent=2))
    with pytest.raises(RunError, match=re.escape(str(side)) + ".*older version.*export"):
        predict([run], demo_data.eval_dir, tmp_path / "x.csv", progress=False, backend="onnx")


def test_cli_names_the_replaced_file_in_one_line(exported, run, demo_data, tmp_path, capsys):
    shutil.copy(onnx_path(exported[0][1]), onnx_path(run))
    for command in (["predict", "--run", str(run)], ["ensemble", "--run", str(run), "--run", str(exported[0][1])]):
        code = main([*command, "--data", str(demo_data.eval_dir), "--out", str(tmp_path / "sub.csv"),
                     "--backend", "onnx"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert str(onnx_path(run)) in err and "Traceback" not in err
