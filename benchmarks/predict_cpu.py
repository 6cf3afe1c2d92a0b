"""CPU prediction benchmark: the same run predicted end to end with the PyTorch and the ONNX backend.

    python benchmarks/predict_cpu.py --run RUN_OR_CV_DIR [--data EVAL_DIR] \
        [--out benchmarks/results/predict-cpu.json] [--repeats 2] [--bf16]

Exports the run to ONNX into a temporary folder (the run folder is only read;
the export time is reported apart), then times ``predict`` end to end (load,
decode, infer, write the submission) with each backend on the CPU, in
alternating order when repeated so that a change in the machine's load hits
both. Reports wall and CPU times, images/s, the share of images given the same
18-class answer, the largest probability difference, each backend's model-only
throughput on in-memory batches, the load average around each timing, the
machine, the commit and the command. ``--bf16`` adds a third variant, PyTorch
under bfloat16 autocast (``predict --precision bf16-mixed``), compared with
float32 PyTorch the same way. Before any timing every image file is read once
(the page cache) and each variant predicts ``--warmup-images`` of them untimed
(first-call costs: imports, kernel choice), so the first timed variant pays
nothing the others do not. Not run by CI (minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import DEFAULT_DATA, commit, provenance, run_configs, write_report  # noqa: E402

from maskstatus.data.cache import available_cores  # noqa: E402
from maskstatus.runs import expand_runs  # noqa: E402
from maskstatus.infer.export import export  # noqa: E402
from maskstatus.infer.onnx_model import OnnxModel, onnx_path  # noqa: E402
from maskstatus.infer.pipeline import load_run  # noqa: E402
from maskstatus.infer.predict import predict, read_images  # noqa: E402
from maskstatus.labels import PROB_COLUMNS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# variant -> (predict backend, precision); "torch" is today's PyTorch path, the one the others are measured against
VARIANTS = {"torch": ("torch", None), "onnx": ("onnx", None), "torch_bf16": ("torch", "bf16-mixed")}
logger = logging.getLogger("predict_cpu")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


@torch.no_grad()
def model_only_images_per_s(run_dir: Path, onnx_dir: Path, batch: int, variants: Sequence[str],
                            batches: int = 3) -> dict[str, float]:
    """Forward passes on one in-memory batch of the run's input shape, per variant (no decoding, no TTA)."""
    torch_run = load_run(run_dir)
    model = torch_run.model
    if torch_run.cfg.train.channels_last:  # as predict runs it
        model = model.to(memory_format=torch.channels_last)
    onnx_model = OnnxModel(onnx_path(run_dir, onnx_dir=onnx_dir))
    _, channels, h, w = onnx_model.meta["input"]["shape"]
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(0))
    x_torch = x
    if torch_run.cfg.train.channels_last:
        x_torch = x.to(memory_format=torch.channels_last)
    forwards = {"torch": (model, x_torch), "onnx": (onnx_model, x), "torch_bf16": (model, x_torch)}
    out = {}
    for name in variants:
        forward, inputs = forwards[name]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=VARIANTS[name][1] == "bf16-mixed"):
            forward(inputs)  # warm-up: first-call allocations and kernel choice
            started = time.perf_counter()
            for _ in range(batches):
                forward(inputs)
        out[name] = batch * batches / (time.perf_counter() - started)
    return out


def warm_up(run: Path, data: Path, tmp: Path, variants: Sequence[str], onnx_dir: Path, batch_size: Optional[int],
            images: int) -> None:
    """Read every image file once, then predict ``images`` of them with each variant, untimed."""
    table, _ = read_images(data)
    for path in table["image_path"]:
        Path(path).read_bytes()
    if images <= 0:
        return
    subset = tmp / "warmup"
    subset.mkdir()
    for i, path in enumerate(table["image_path"].iloc[:images]):
        (subset / f"{i:06d}{Path(path).suffix}").symlink_to(Path(path).resolve())
    for variant in variants:
        backend, precision = VARIANTS[variant]
        predict([run], subset, tmp / f"warmup-{variant}.csv", accelerator="cpu", progress=False, backend=backend,
                onnx_dir=onnx_dir, batch_size=batch_size, precision=precision)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run or CV folder (read only)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA / "eval", help="eval folder (default: the proxy eval set)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict-cpu.json")
    p.add_argument("--repeats", type=int, default=1, help="timings per backend, alternating (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="predict batch size (default: the run's)")
    p.add_argument("--bf16", action="store_true", help="also time PyTorch under bfloat16 autocast")
    p.add_argument("--warmup-images", type=int, default=256,
                   help="images each variant predicts untimed before the timings (default 256; 0: none)")
    args = p.parse_args(argv)
    variants = list(VARIANTS) if args.bf16 else ["torch", "onnx"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = commit()
    n_images = len(pd.read_csv(args.data / "info.csv")) if (args.data / "info.csv").is_file() else None

    with tempfile.TemporaryDirectory(prefix="predict-cpu-") as tmp:
        tmp = Path(tmp)
        onnx_dir = tmp / "onnx"
        t0 = time.perf_counter()
        exported = export(args.run, out_dir=onnx_dir)
        export_s = time.perf_counter() - t0

        warm_up(args.run, args.data, tmp, variants, onnx_dir, args.batch_size, args.warmup_images)
        walls: dict[str, list[float]] = {v: [] for v in variants}
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        loads: dict[str, list[list[float]]] = {v: [] for v in variants}
        probs: dict[str, np.ndarray] = {}
        answers: dict[str, np.ndarray] = {}
        for i in range(args.repeats):
            order = variants if i % 2 == 0 else variants[::-1]
            for variant in order:
                backend, precision = VARIANTS[variant]
                out = tmp / f"{variant}.csv"
                load_before = os.getloadavg()[0]
                t0, c0 = time.perf_counter(), time.process_time()
                predict([args.run], args.data, out, accelerator="cpu", progress=False, backend=backend,
                        onnx_dir=onnx_dir, batch_size=args.batch_size, precision=precision)
                walls[variant].append(time.perf_counter() - t0)
                cpus[variant].append(time.process_time() - c0)
                loads[variant].append([load_before, os.getloadavg()[0]])
                logger.info("%s: %.1f s", variant, walls[variant][-1])
                answers[variant] = pd.read_csv(out)["ans"].to_numpy()
                probs[variant] = pd.read_csv(out.with_name(out.stem + ".probs.csv"))[PROB_COLUMNS].to_numpy()
        n_images = n_images or len(answers["torch"])
        first_run = expand_runs([args.run])[0]
        batch = args.batch_size or load_run(first_run).cfg.train.eval_batch_size
        model_only = model_only_images_per_s(first_run, onnx_dir, batch, variants)

    wall = {v: statistics.median(walls[v]) for v in variants}
    others = [v for v in variants if v != "torch"]
    report = {
        "run": str(args.run),
        "data": str(args.data),
        "images": int(n_images),
        "fold_models": len(exported),
        "export_s": round(export_s, 2),
        "export_check": [r.check for r in exported],
        "wall_s": {v: round(wall[v], 3) for v in variants},
        "wall_s_each": {v: [round(w, 3) for w in walls[v]] for v in variants},
        "images_per_s": {v: round(n_images / wall[v], 1) for v in variants},
        # CPU seconds of this process (all threads): less sensitive than wall time to other processes on the
        # machine, but it counts ONNX Runtime's threads spinning while they wait for work.
        "cpu_s": {v: round(statistics.median(cpus[v]), 2) for v in variants},
        "cpu_s_each": {v: [round(c, 2) for c in cpus[v]] for v in variants},
        "onnx_wall_share": round(wall["onnx"] / wall["torch"], 3),
        "speedup_over_torch": {v: round(wall["torch"] / wall[v], 2) for v in others},
        "goal": "issue 11: at least 3x the PyTorch path's speed end to end on 2 CPU cores (wall share <= 0.333), "
                "same answers on >= 99.5% of images",
        "goal_met": {v: bool(wall[v] * 3 <= wall["torch"]
                             and (answers["torch"] == answers[v]).mean() >= 0.995) for v in others},
        "answer_agreement": float((answers["torch"] == answers["onnx"]).mean()),
        "max_prob_diff": float(np.abs(probs["torch"] - probs["onnx"]).max()),
        "agreement_with_torch": {v: float((answers["torch"] == answers[v]).mean()) for v in others},
        "max_prob_diff_to_torch": {v: float(np.abs(probs["torch"] - probs[v]).max()) for v in others},
        "model_only_images_per_s": {b: round(v, 1) for b, v in model_only.items()},
        "model_only_batch": batch,
        "warmup_images": args.warmup_images,
        # 1-minute load average before and after each timing; above the core count, other processes shared the CPU.
        "load_average_1m": loads,
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
        **provenance(code_version, cores_available=available_cores()),
        "run_configs": run_configs(args.run),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
