"""ONNX export and the ONNX Runtime backend: parity with PyTorch, predict through both, clear errors."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.age import write_cuts
from maskstatus.cli import main
from maskstatus.config import load_config
from maskstatus.errors import RunError
from maskstatus.infer import export as export_module
from maskstatus.infer.export import export, export_run
from maskstatus.infer.onnx_model import OnnxModel, onnx_path, sidecar_path
from maskstatus.infer.pipeline import load_run
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.labels import PROB_COLUMNS
from maskstatus.models import model_data_config

# Answers must agree on at least this share of images (the project's bar for the ONNX backend).
AGREEMENT = 0.995


def _train(demo_data, out, tiny_overrides, *overrides):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "train.epochs=1", "train.limit_train_batches=2", *overrides])
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory, tiny_overrides):
    """Three tiny trained runs: single head with hflip TTA in its config, multitask, age regression with tuned cuts."""
    out = tmp_path_factory.mktemp("onnx_runs")
    single = _train(demo_data, out, tiny_overrides, "model.head=single", "predict.tta=[hflip]", "seed=1")
    multi = _train(demo_data, out, tiny_overrides, "model.head=multitask", "seed=2")
    years = _train(demo_data, out, tiny_overrides, "model.head=multitask", "model.age_output=years", "seed=3")
    # Cuts far from the defaults, so the test sees whether both backends use them.
    write_cuts(years, {"cuts": [24.0, 41.5]})
    for run in (single, multi, years):
        export(run)
    return {"single": single, "multi": multi, "years": years}


def _probs(runs_, data, out, **kwargs) -> np.ndarray:
    _, probs_path = predict(runs_, data, out, progress=False, **kwargs)
    return pd.read_csv(probs_path)[PROB_COLUMNS].to_numpy()


def _assert_same_answers(torch_probs: np.ndarray, onnx_probs: np.ndarray) -> None:
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    agreement = (onnx_probs.argmax(1) == torch_probs.argmax(1)).mean()
    assert agreement >= AGREEMENT


def test_export_writes_a_checked_model_and_its_sidecar(runs):
    run = runs["years"]
    path = onnx_path(run)
    assert path == run / "onnx" / "best.onnx" and path.is_file()
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["input"]["shape"] == ["batch", 3, 48, 36] and meta["input"]["resize_to"] == [48, 36]
    assert len(meta["normalization"]["mean"]) == 3 and len(meta["normalization"]["std"]) == 3
    assert list(meta["outputs"]) == ["mask", "gender", "age_years"]
    assert "mean" in meta["outputs"]["age_years"]["meaning"]
    assert meta["age_cuts"] == {"cuts": [24.0, 41.5], "source": "age_cuts.json"}
    assert meta["checkpoint"]["path"] == str((run / "checkpoints" / "best.pt").resolve())
    check = meta["check"]
    assert check["source"].endswith("oof.csv") and check["images"] > 0
    assert check["max_prob_diff"] <= check["tolerance"] and check["class_agreement"] >= AGREEMENT
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert meta["export"]["simplified"] is True
    single = json.loads(sidecar_path(onnx_path(runs["single"])).read_text())
    assert list(single["outputs"]) == ["class"] and single["tta"] == ["hflip"] and "age_cuts" not in single


@pytest.mark.parametrize("kind", ["single", "multi", "years"])
def test_onnx_outputs_match_pytorch_at_any_batch_size(runs, kind):
    model = load_run(runs[kind]).model
    onnx_model = OnnxModel(onnx_path(runs[kind]))
    assert onnx_model.data_config == model_data_config(model)
    for batch in (1, 5, 33):  # the graph was traced with 2 images
        x = torch.randn(batch, 3, 48, 36, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
        got = onnx_model(x)
        assert list(got) == list(expected)
        for key in expected:
            assert got[key].shape == expected[key].shape
            torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


def test_predict_with_onnx_matches_pytorch_with_tta_and_age_cuts(runs, demo_data, tmp_path):
    for kind, tta in (("single", None), ("single", ["hflip", "shift"]), ("years", ["hflip"]), ("years", [])):
        expected = _probs([runs[kind]], demo_data.eval_dir, tmp_path / "t.csv", tta=tta)
        got = _probs([runs[kind]], demo_data.eval_dir, tmp_path / "o.csv", tta=tta, backend="onnx")
        _assert_same_answers(expected, got)
    # the tuned cuts are used: other cuts give other probabilities
    shutil.copytree(runs["years"], tmp_path / "uncut")
    (tmp_path / "uncut" / "age_cuts.json").unlink()
    uncut = _probs([tmp_path / "uncut"], demo_data.eval_dir, tmp_path / "u.csv", backend="onnx")
    assert np.abs(uncut - got).max() > 1e-3


def test_predict_with_onnx_matches_pytorch_for_an_ensemble_and_a_cv_folder(runs, demo_data, tmp_path):
    members = [runs["multi"], runs["years"]]
    expected = _probs(members, demo_data.eval_dir, tmp_path / "t.csv", weights=[2, 1])
    got = _probs(members, demo_data.eval_dir, tmp_path / "o.csv", weights=[2, 1], backend="onnx")
    _assert_same_answers(expected, got)
    # A CV folder (fold runs as subfolders) exported as a whole, into a separate folder.
    cv = tmp_path / "cv"
    for i, kind in enumerate(("single", "multi")):
        shutil.copytree(runs[kind], cv / f"fold{i}", ignore=shutil.ignore_patterns("onnx"))
    results = export(cv, out_dir=tmp_path / "exported")
    assert [r.onnx for r in results] == [tmp_path / "exported" / f"fold{i}" / "best.onnx" for i in range(2)]
    with pytest.raises(FileNotFoundError, match="maskstatus export"):  # not in the folds' own onnx/ folders
        predict([cv], demo_data.eval_dir, tmp_path / "x.csv", progress=False, backend="onnx")
    expected = _probs([cv], demo_data.eval_dir, tmp_path / "cvt.csv")
    got = _probs([cv], demo_data.eval_dir, tmp_path / "cvo.csv", backend="onnx", onnx_dir=tmp_path / "exported")
    _assert_same_answers(expected, got)


def test_missing_corrupt_or_stale_exports_are_errors_naming_the_file(runs, demo_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["multi"], run)
    model_file = onnx_path(run)

    def predict_onnx():
        predict([run], demo_data.eval_dir, tmp_path / "x.csv", progress=False, backend="onnx")

    model_file.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=f"cannot load ONNX model {model_file}"):
        predict_onnx()
    shutil.copy(onnx_path(runs["multi"]), model_file)
    sidecar_path(model_file).write_text("{broken")
    with pytest.raises(ValueError, match=str(sidecar_path(model_file))):
        predict_onnx()
    sidecar_path(model_file).unlink()
    with pytest.raises(FileNotFoundError, match=str(sidecar_path(model_file))):
        predict_onnx()
    shutil.copy(sidecar_path(onnx_path(runs["multi"])), sidecar_path(model_file))
    predict_onnx()  # restored: works
    # retrained after the export: the weights changed, so the export is stale
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["epoch"] = -1
    torch.save(state, run / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match="exported from another version"):
        predict_onnx()
    model_file.unlink()
    with pytest.raises(FileNotFoundError, match=f"ONNX model not found: {model_file}"):
        predict_onnx()
    with pytest.raises(ValueError, match="runs on the CPU"):
        predict([runs["multi"]], demo_data.eval_dir, tmp_path / "x.csv", backend="onnx", accelerator="cuda")


def test_export_refuses_a_graph_that_differs_from_pytorch(runs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["multi"], run, ignore=shutil.ignore_patterns("onnx"))
    real_export = export_module._export_graph

    def export_other_weights(model, example, file, keys, fixed_size):
        other = load_run(run).model
        with torch.no_grad():
            other.head.tasks["mask"].fc.bias += 1.0
        return real_export(other, example, file, keys, fixed_size)

    monkeypatch.setattr(export_module, "_export_graph", export_other_weights)
    with pytest.raises(ValueError, match="differs from PyTorch beyond the tolerance"):
        export_run(run)
    assert list((run / "onnx").iterdir()) == []  # nothing a later predict could pick up


def test_export_checks_on_given_images_when_the_run_has_no_oof(runs, demo_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["multi"], run, ignore=shutil.ignore_patterns("onnx", "predictions"))
    with pytest.raises(RunError, match="--images"):
        export_run(run)
    result = export_run(run, images=demo_data.eval_dir / "images")
    assert result.check["source"] == str(demo_data.eval_dir / "images") and result.check["images"] > 0


def test_cli_export_and_predict_onnx(runs, demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["years"], run, ignore=shutil.ignore_patterns("onnx"))
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(run), "--data", str(demo_data.eval_dir), "--out", str(out),
                 "--backend", "onnx"]) == 2
    assert f"ONNX model not found: {onnx_path(run)}" in capsys.readouterr().err
    assert main(["export", str(run)]) == 0
    printed = capsys.readouterr().out
    assert str(onnx_path(run)) in printed and "same class on" in printed
    assert main(["predict", "--run", str(run), "--data", str(demo_data.eval_dir), "--out", str(out),
                 "--backend", "onnx"]) == 0
    onnx_answers = pd.read_csv(out)["ans"].to_numpy()
    assert main(["predict", "--run", str(run), "--data", str(demo_data.eval_dir), "--out", str(out)]) == 0
    assert (pd.read_csv(out)["ans"].to_numpy() == onnx_answers).mean() >= AGREEMENT


def test_cli_ensemble_predicts_with_onnx(runs, demo_data, tmp_path, capsys):
    members = [str(runs["multi"]), str(runs["years"])]
    common = ["ensemble", "--run", members[0], "--run", members[1], "--weights", "2,1", "--tta", "hflip",
              "--data", str(demo_data.eval_dir)]
    assert main([*common, "--out", str(tmp_path / "t.csv")]) == 0
    assert main([*common, "--out", str(tmp_path / "o.csv"), "--backend", "onnx"]) == 0
    assert "submission:" in capsys.readouterr().out
    expected = pd.read_csv(tmp_path / "t.probs.csv")[PROB_COLUMNS].to_numpy()
    got = pd.read_csv(tmp_path / "o.probs.csv")[PROB_COLUMNS].to_numpy()
    _assert_same_answers(expected, got)
    # the weights reach the ONNX path: weighted the other way, the probabilities move
    assert main([*common[:5], "--weights", "1,2", *common[7:], "--out", str(tmp_path / "w.csv"),
                 "--backend", "onnx"]) == 0
    assert np.abs(pd.read_csv(tmp_path / "w.probs.csv")[PROB_COLUMNS].to_numpy() - got).max() > 1e-4
    # a member without its export is an error naming the file, as in predict
    bare = tmp_path / "bare"
    shutil.copytree(runs["multi"], bare, ignore=shutil.ignore_patterns("onnx"))
    assert main(["ensemble", "--run", str(bare), "--data", str(demo_data.eval_dir), "--out", str(tmp_path / "b.csv"),
                 "--backend", "onnx"]) == 2
    assert f"ONNX model not found: {onnx_path(bare)}" in capsys.readouterr().err


class _SamePadNet(torch.nn.Module):
    """Two strided TF-style "same" convolutions: traced, their padding is shape arithmetic feeding a Pad."""

    def __init__(self):
        super().__init__()
        from timm.layers import create_conv2d

        self.a = create_conv2d(3, 4, 3, stride=2, padding="same")
        self.b = create_conv2d(4, 2, 5, stride=2, padding="same")

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_simplify_folds_same_padding_into_the_convolutions(tmp_path):
    import onnx
    import onnxruntime as ort

    model, file = _SamePadNet().eval(), tmp_path / "net.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 48, 36),), str(file), dynamo=False, opset_version=export_module.OPSET,
                      input_names=["image"], output_names=["out"],
                      dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}})
    ops = lambda: {n.op_type for n in onnx.load(str(file)).graph.node}  # noqa: E731
    assert {"Pad", "Shape"} <= ops()  # what the export leaves for onnxsim to fold
    assert export_module._simplify(file) is True
    assert not {"Pad", "Shape"} & ops() and "Conv" in ops()
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis stays dynamic
        x = torch.randn(batch, 3, 48, 36, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-5)


def test_a_graph_onnxsim_cannot_simplify_is_kept_and_still_checked(runs, tmp_path, monkeypatch, caplog):
    import onnxsim

    run = tmp_path / "run"
    shutil.copytree(runs["multi"], run, ignore=shutil.ignore_patterns("onnx"))

    def fail(model):
        raise RuntimeError("no simplification today")

    monkeypatch.setattr(onnxsim, "simplify", fail)
    result = export_run(run)
    meta = json.loads(result.sidecar.read_text())
    assert meta["export"]["simplified"] is False and meta["check"]["class_agreement"] >= AGREEMENT
    assert "no simplification today" in caplog.text
