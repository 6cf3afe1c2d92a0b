"""predict, serve and export share one prediction pipeline: a run's eval transform reaches all three alike."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from maskstatus.config import load_config
from maskstatus.data.images import load_rgb
from maskstatus.infer.export import export
from maskstatus.infer.onnx_model import onnx_path, sidecar_path
from maskstatus.infer.pipeline import Pipeline, model_inputs
from maskstatus.infer.pipeline import load_run
from maskstatus.infer.predict import predict
from maskstatus.labels import PROB_COLUMNS
from maskstatus.runs import RunDir
from maskstatus.train.trainer import train

pytest.importorskip("onnxruntime")

# A leading crop (run once in the cache) that changes what the model sees and the size it sees it at: the top
# left quarter of the 48x36 image.
CROP = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 18, "y_max": 24}]


def _with_eval_transform(run: RunDir, specs: list) -> None:
    """Set ``transforms.eval`` in the run's config.yaml and in the config its checkpoint stores, as if trained so."""
    cfg = yaml.safe_load(run.config.read_text())
    cfg["transforms"]["eval"] = specs
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = torch.load(run.best, map_location="cpu", weights_only=True)
    state["config"]["transforms"]["eval"] = specs
    torch.save(state, run.best)


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory, tiny_overrides):
    """One tiny trained run, and a copy of it whose eval transform crops."""
    out = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "model.head=multitask", "train.epochs=1", "train.limit_train_batches=2"])
    plain = train(cfg).run_dir
    cropped = shutil.copytree(plain, out / "cropped")
    _with_eval_transform(RunDir(cropped), CROP)
    return {"plain": plain, "cropped": cropped}


@pytest.fixture(scope="module")
def images(demo_data):
    return sorted((demo_data.eval_dir / "images").iterdir())[:6]


def _predict(run, images, out, **kwargs) -> np.ndarray:
    folder = out.parent / (out.stem + "-images")
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    _, probs_path = predict([run], folder, out, progress=False, accelerator="cpu", **kwargs)
    table = pd.read_csv(probs_path).set_index("image")
    return table.loc[[p.name for p in images], PROB_COLUMNS].to_numpy()


def _served(run, images) -> np.ndarray:
    from maskstatus.serve.predictor import Predictor

    predictor = Predictor([run], accelerator="cpu", face_crop=False)
    return predictor.probs([load_rgb(p) for p in images]).astype(np.float64)


def test_an_eval_transform_reaches_predict_serve_and_export_alike(runs, images, tmp_path):
    pytest.importorskip("fastapi")
    predicted = {k: _predict(run, images, tmp_path / f"{k}.csv") for k, run in runs.items()}
    # The crop changes the answers (a tiny model's answers are all near 1/18: the changes are small, but far
    # above the 1e-6 the probabilities are written with), and each route must follow it much more closely.
    changed = np.abs(predicted["plain"] - predicted["cropped"]).max()
    assert changed > 2e-5
    close = changed / 10

    for kind, run in runs.items():
        np.testing.assert_allclose(_served(run, images), predicted[kind], rtol=0, atol=close)

    for kind, run in runs.items():
        export(run)
        meta = json.loads(sidecar_path(onnx_path(run)).read_text())
        shape = list(model_inputs(load_run(run), [str(images[0])])[0].shape)
        assert meta["input"]["shape"] == ["batch", *shape]
        assert meta["input"]["transforms_eval"] == ([] if kind == "plain" else CROP)
        onnx = _predict(run, images, tmp_path / f"{kind}-onnx.csv", backend="onnx")
        np.testing.assert_allclose(onnx, predicted[kind], rtol=0, atol=close)
    assert shape == [3, 24, 18]  # the cropped run's model input, as the export recorded it


def test_a_cv_folder_is_one_member_of_its_fold_runs(runs, tmp_path):
    cv = tmp_path / "cv"
    cv.mkdir()
    for kind, run in runs.items():
        shutil.copytree(run, cv / f"fold-{kind}")
    pipeline = Pipeline.load([cv], accelerator="cpu")
    assert len(pipeline.members) == 1
    assert sorted(r.name for r in pipeline.runs) == ["fold-cropped", "fold-plain"]
    assert pipeline.fabric.device.type == "cpu"
