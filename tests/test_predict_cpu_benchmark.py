"""benchmarks/predict_cpu.py on a tiny run and the demo eval set (the real benchmark is not CI's)."""

import json
import sys
from pathlib import Path

import pytest

from maskstatus.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import predict_cpu  # noqa: E402


@pytest.mark.slow
def test_benchmark_reports_every_variant(demo_data, tmp_path, tiny_config):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=1", "model.age_output=years")).run_dir
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "predict-cpu.json"
    assert predict_cpu.main(["--run", str(run), "--data", str(demo_data.eval_dir), "--out", str(out),
                             "--repeats", "2", "--bf16", "--warmup-images", "5"]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == len(list((demo_data.eval_dir / "images").iterdir()))
    for key in ("wall_s", "cpu_s", "images_per_s", "model_only_images_per_s"):
        assert set(report[key]) == {"torch", "onnx", "torch_bf16"} and all(v > 0 for v in report[key].values())
    assert all(len(v) == 2 for v in report["wall_s_each"].values())
    assert report["answer_agreement"] >= 0.995 and report["max_prob_diff"] < 1e-3
    for key in ("speedup_over_torch", "goal_met", "agreement_with_torch", "max_prob_diff_to_torch"):
        assert set(report[key]) == {"onnx", "torch_bf16"}
    assert report["speedup_over_torch"]["onnx"] == pytest.approx(1 / report["onnx_wall_share"], rel=0.05)
    assert report["agreement_with_torch"]["onnx"] == report["answer_agreement"]
    assert 0 < report["max_prob_diff_to_torch"]["torch_bf16"] < 0.1  # bfloat16 autocast was on, and close
    assert report["goal_met"]["onnx"] == (report["onnx_wall_share"] <= 1 / 3)
    assert report["warmup_images"] == 5
    assert report["export_s"] > 0 and report["fold_models"] == 1
    # wall_s is rounded to ms; the share is computed before rounding
    assert report["onnx_wall_share"] == pytest.approx(report["wall_s"]["onnx"] / report["wall_s"]["torch"], rel=0.05)
    for key in ("machine", "commit", "command", "load_average_1m"):
        assert report[key]
    assert "cpu" in report["machine"] and report["machine"]["cores_available"] >= 1
    # The settings the predicted run was trained with, from its config.yaml.
    assert list(report["run_configs"]) == [run.name]
    assert report["run_configs"][run.name]["model"]["age_output"] == "years"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run folder is only read
