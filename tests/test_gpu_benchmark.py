"""benchmarks/gpu.py: its sampler's arithmetic, and a tiny run on the CPU (the real run needs a GPU)."""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def test_busy_fraction_counts_only_samples_inside_the_epochs():
    sampler = gpu.GpuSampler()
    # Busy 100 % inside the first epoch, 50 % inside the second, idle in between (validation) and after.
    sampler.samples = [(0.5, 100.0, 10.0), (1.0, 100.0, 12.0), (1.5, 0.0, 12.0), (2.5, 50.0, 30.0),
                       (3.5, 0.0, 5.0)]
    history = pd.DataFrame({"epoch": [0, 1], "train_start_time": [0.0, 2.0], "train_time_s": [1.0, 1.0]})
    windows = gpu.epoch_windows(history)
    assert windows == [(0.0, 1.0), (2.0, 3.0)]
    assert sampler.busy_fraction(windows) == pytest.approx((100 + 100 + 50) / 300)
    assert sampler.count(windows) == 3
    assert sampler.busy_fraction([(10.0, 11.0)]) is None  # no sample there: unknown, not idle
    assert sampler.peak_used_mb() == 30.0


def test_sampler_collects_from_its_reader_until_stopped():
    sampler = gpu.GpuSampler(interval=0.01)
    sampler._read = lambda: (42.0, 100.0)  # stands in for NVML on a machine without a GPU
    with sampler:
        time.sleep(0.1)
    n = len(sampler.samples)
    assert n >= 2 and all(u == 42.0 for _, u, _ in sampler.samples)
    time.sleep(0.05)
    assert len(sampler.samples) == n  # the thread has stopped


@pytest.mark.slow
def test_gpu_benchmark_runs_a_tiny_fold_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    assert gpu.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--people", "8", "--eval-people", "6",
                     "--size", "64", "48", "--epochs", "1", "--workers", "2", "--work", str(tmp_path / "w"),
                     "--out", str(out), "model.backbone=test_efficientnet", "cache.size=[48, 36]",
                     "train.batch_size=16", "train.progress=false", "split.folds=4", "scheduler.warmup_epochs=0"]) == 0
    report = json.loads(out.read_text())
    for key in ("model_only_train_images_per_s", "train_images_per_s", "predict_images_per_s", "train_s",
                "predict_decode_images_per_s", "predict_model_only_images_per_s",
                "wall_s", "draw_s", "peak_memory_mb", "machine", "commit", "command"):
        assert report[key], key
    assert report["settings"]["pretrained"] is False and report["settings"]["batch_size"] == 16
    assert report["people"] == 8 and report["epochs"] == 1
    # The settings it ran with, after the overrides, not only the config's path.
    resolved = report["resolved_config"]
    assert resolved["model"]["backbone"] == "test_efficientnet" and resolved["train"]["epochs"] == 1
    assert resolved["model"]["pretrained"] is False and resolved["cache"]["size"] == [48, 36]
    # Without a GPU nothing is sampled, and the report says why instead of claiming an idle GPU.
    assert report["gpu_busy_fraction"] is None and report["gpu_sampler"].startswith("none")
    assert len(list((tmp_path / "w" / "data" / "eval" / "images").iterdir())) == 6 * 7
