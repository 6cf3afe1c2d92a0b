"""GPU benchmark: one fold of a config on synthetic competition-size data, with the GPU's use sampled.

    python benchmarks/gpu.py --config configs/best.yaml [--people 1120] [--eval-people 1800] [--epochs 2] \
        [--out benchmarks/results/gpu-best.json] [key=value ...]

Draws a synthetic set in the competition layout (512x384 JPEGs, `make_demo_data` with
one process per core: nothing has to be carried to the machine), measures the model
alone on in-memory batches (forward, backward and step), trains fold 0 through
``maskstatus train``'s code path while a thread samples the GPU's utilisation (NVML,
else ``nvidia-smi``), predicts the eval images from their JPEG files to a submission
and writes a JSON with:

- ``model_only_train_images_per_s``, ``train_images_per_s`` and their ratio;
- ``gpu_busy_fraction``: the mean utilisation NVML reported (the share of its sample
  period in which a kernel ran) over the samples inside the training epochs' loops,
  and the same for prediction;
- ``predict_images_per_s`` end to end (load, decode, infer, write), and its two
  parts measured apart: ``predict_decode_images_per_s`` (decoding the JPEGs with the
  run's precomputed crops) and ``predict_model_only_images_per_s`` (the network on
  in-memory batches); ``train_s``, ``wall_s`` and each stage's seconds;
- peak GPU memory (PyTorch's allocator and NVML's reading) and peak host memory;
- the settings the config chose (precision, channels_last, compile, normalisation on the device, batch sizes,
  workers as configured and as resolved, cache);
- the machine, the commit and the command.

The model starts from random weights (``model.pretrained=false``): speed does not
depend on them and the GPU machine cannot reach a model hub. On a machine without a
GPU it runs on the CPU and says that no GPU was sampled (the tests do this at a tiny
size). The GPU machine lacks some of maskstatus's packages: ``benchmarks/device_wheels.sh``
fetches them as wheels (see README, "GPU benchmark").
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    REPO,
    bare_model,
    commit,
    model_only_throughput,
    peak_memory_mb,
    provenance,
    resolved_config,
    write_report,
)
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.config import Config, load_config  # noqa: E402
from maskstatus.data.synthetic import make_demo_data, score_submission  # noqa: E402
from maskstatus.infer.evaluate import loader_workers, normalize_on_device  # noqa: E402
from maskstatus.infer.pipeline import decode_images  # noqa: E402
from maskstatus.infer.predict import predict  # noqa: E402
from maskstatus.train.trainer import train  # noqa: E402
from maskstatus.runs import RunDir  # noqa: E402

logger = logging.getLogger("gpu")

# Competition photos are 512 high and 384 wide.
PHOTO_SIZE = (512, 384)

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


class GpuSampler:
    """A thread that reads the GPU's utilisation and memory every ``interval`` seconds.

    Hand-written because neither torch nor Lightning samples the device from outside the
    training loop: NVML (nvidia-ml-py) when it imports, else one ``nvidia-smi`` query per
    sample, else nothing (``source`` is None and ``why`` says why).
    """

    def __init__(self, interval: float = 0.1, index: int = 0) -> None:
        self.interval, self.index = interval, index
        self.samples: list[tuple[float, float, float]] = []  # (unix time, utilisation %, memory used MiB)
        self.source: Optional[str] = None
        self.why = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._read = self._open()

    def _open(self):
        if not torch.cuda.is_available():
            self.why = "no CUDA device"
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "nvml"
            return lambda: (float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                            pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
        except Exception as exc:  # NVML missing or refused: fall back to the command-line tool
            nvml_error = f"NVML: {exc}"
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
                     "--format=csv,noheader,nounits"]

            def read() -> tuple[float, float]:
                util, used = subprocess.run(query, capture_output=True, text=True, check=True).stdout.split(",")
                return float(util), float(used)
            return read
        self.why = f"{nvml_error}; no nvidia-smi"
        return None

    def __enter__(self) -> "GpuSampler":
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                util, used = self._read()
            except Exception as exc:  # a failed read ends the sampling; the report says so
                self.why = f"sampling stopped: {exc}"
                return
            self.samples.append((time.time(), util, used))
            self._stop.wait(self.interval)

    def busy_fraction(self, windows: list[tuple[float, float]]) -> Optional[float]:
        """Mean utilisation (0..1) of the samples inside any of the (start, end) windows; None without samples."""
        inside = [u for t, u, _ in self.samples if any(a <= t <= b for a, b in windows)]
        return sum(inside) / (100.0 * len(inside)) if inside else None

    def count(self, windows: list[tuple[float, float]]) -> int:
        return sum(1 for t, _, _ in self.samples if any(a <= t <= b for a, b in windows))

    def peak_used_mb(self) -> Optional[float]:
        return max((m for _, _, m in self.samples), default=None)


def epoch_windows(history: pd.DataFrame) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of each epoch's training loop, from the run's metrics.csv table."""
    return [(float(s), float(s + d)) for s, d in zip(history["train_start_time"], history["train_time_s"])]


def decode_throughput(cfg: Config, paths: list[str]) -> float:
    """Images/s of predict's first step alone: decoding the JPEGs (with the run's precomputed crops)."""
    t0 = time.perf_counter()
    decode_images(cfg, paths)
    return len(paths) / (time.perf_counter() - t0)


@torch.no_grad()
def inference_throughput(cfg: Config, steps: int = 20, warmup: int = 3) -> float:
    """Images/s of the model alone predicting in-memory batches of ``train.eval_batch_size``, as predict runs it."""
    fabric, model, hw = bare_model(cfg)
    model = fabric.setup_module(model).eval()
    x = torch.randn(cfg.train.eval_batch_size, 3, *hw, device=fabric.device)
    for i in range(warmup + steps):
        if i == warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with fabric.autocast():
            model(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def settings(cfg: Config) -> dict:
    """What the config chose for speed, so the JSON says what was measured."""
    t = cfg.train
    fabric = Fabric(accelerator=t.accelerator, devices=1)
    return {"backbone": cfg.model.backbone, "precision": t.precision, "channels_last": t.channels_last,
            "compile": t.compile, "normalize_on_device": normalize_on_device(t.normalize_on, fabric),
            "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size, "num_workers": t.num_workers,
            "loader_workers": loader_workers(t.num_workers, fabric),
            "cache_mode": cfg.cache.mode, "cache_size": list(cfg.cache.size) if cfg.cache.size else None,
            "decode_threads": cfg.cache.decode_threads, "pretrained": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="maskstatus YAML config")
    p.add_argument("--people", type=int, default=1120, help="synthetic training people, 7 photos each")
    p.add_argument("--eval-people", type=int, default=1800,
                   help="synthetic eval people (default 1800: the competition's 12,600 eval images)")
    p.add_argument("--size", type=int, nargs=2, default=PHOTO_SIZE, metavar=("H", "W"), help="photo size")
    p.add_argument("--epochs", type=int, default=2, help="epochs of fold 0 (default 2)")
    p.add_argument("--work", type=Path, default=None, help="folder for the data and run (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/gpu-NAME.json)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing the data")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = commit()

    with tempfile.TemporaryDirectory(prefix="maskstatus-gpu-") as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        data = make_demo_data(work / "data", people=args.people, eval_people=args.eval_people, seed=0,
                              size=tuple(args.size), overwrite=True, workers=args.workers)
        draw_s = time.perf_counter() - t0
        logger.info("drew %d + %d people in %.1f s", args.people, args.eval_people, draw_s)
        cfg = load_config(args.config, [f"data.root={data.root}", f"output_dir={work / 'runs'}",
                                        f"cache.dir={work / 'cache'}", "split.fold=0", f"train.epochs={args.epochs}",
                                        "model.pretrained=false", "model.pretrained_path=null", *args.overrides])
        model_only = model_only_throughput(cfg)
        logger.info("model only: %.1f images/s", model_only)

        with GpuSampler() as sampler:
            t0 = time.perf_counter()
            result = train(cfg)
            train_wall_s = time.perf_counter() - t0
            run = RunDir(result.run_dir)
            submission = work / "submission.csv"
            predict_start, t0 = time.time(), time.perf_counter()
            predict([run.root], data.eval_dir, submission, accelerator=cfg.train.accelerator,
                    num_workers=cfg.train.num_workers, progress=False)
            predict_s = time.perf_counter() - t0
            predict_window = [(predict_start, predict_start + predict_s)]
        history = pd.read_csv(run.metrics)
        windows = epoch_windows(history)
        score = score_submission(submission, data.truth_csv)
        eval_paths = sorted(str(p) for p in (data.eval_dir / "images").iterdir())
        n_eval = len(eval_paths)
        # Where prediction's time goes: the decoding and the network apart, after the end-to-end timing.
        decode_rate = decode_throughput(cfg, eval_paths)
        inference_rate = inference_throughput(cfg)

    train_s = float(history["train_time_s"].sum())
    train_rate = float(history["train_images"].sum() / train_s)
    report = {
        "config": str(args.config),
        "name": cfg.name,
        "people": args.people,
        "eval_people": args.eval_people,
        "photo_size": list(args.size),
        "epochs": int(len(history)),
        "settings": settings(cfg),
        "overrides": list(args.overrides),
        "model_only_train_images_per_s": model_only,
        "train_images_per_s": train_rate,
        "train_share_of_model_only": train_rate / model_only,
        "gpu_busy_fraction": sampler.busy_fraction(windows),
        "gpu_busy_samples": sampler.count(windows),
        "gpu_busy_fraction_predict": sampler.busy_fraction(predict_window),
        "gpu_sampler": sampler.source or f"none ({sampler.why})",
        "predict_images_per_s": n_eval / predict_s,
        "predict_decode_images_per_s": decode_rate,
        "predict_model_only_images_per_s": inference_rate,
        "train_s": train_s,
        "train_wall_s": train_wall_s,
        "predict_s": predict_s,
        "draw_s": draw_s,
        "eval_f1_synthetic": score["f1"],
        "peak_memory_mb": peak_memory_mb(),
        "gpu_peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "gpu_peak_used_mb": sampler.peak_used_mb(),
        "wall_s": time.perf_counter() - started,
        **provenance(code_version, cores_available=len(os.sched_getaffinity(0))),
        "resolved_config": resolved_config(cfg),
    }
    if sampler.why and sampler.source:
        report["gpu_sampler_note"] = sampler.why
    write_report(report, args.out or REPO / "benchmarks" / "results" / f"gpu-{cfg.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
