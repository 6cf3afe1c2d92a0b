"""int8 post-training quantization of a run's ONNX export: speed, and agreement with the float32 export.

    python benchmarks/quantize_int8.py --run RUN [--out benchmarks/results/quantize-int8.json] \
        [--methods minmax,percentile] [--keep-float none,depthwise] [--calibration 256] [--held-out N] [--repeats 3]

Exports the run to a temporary folder (the run folder is only read), decodes the
images of its predictions/oof.csv with the run's eval transforms, and splits
them by person: the people of a tenth of the table calibrate, the others are
held out. Each calibration method gives one static int8 model (ONNX Runtime
QDQ, per-channel int8 weights, uint8 activations). On the held-out images the
report gives each model's 18-class agreement with the float32 export, the
macro F1 of both against the labels, and the largest probability difference;
then each model's images/s on in-memory batches, timed in alternating order so
that a change in the machine's load hits all of them, with the load average.
With ``--keep-float`` some layers stay in float32 (mixed precision): ``depthwise``
(the depthwise convolutions: one 3x3 or 5x5 filter per channel, few operations but
per-channel ranges that int8 fits worst in MobileNet-style networks), ``ends`` (the
stem convolution, the last 1x1 convolution and the heads), or ``depthwise+ends``;
each calibration method is tried with each set. Dynamic quantization is left out: it turns every convolution into ConvInteger,
which ran several times slower than float32 here.

The graph's shape arithmetic (the "same" padding of TF-ported EfficientNets,
computed from the input's size) is kept in float: quantizing it moves the
padding by a pixel and broke half of the answers.

Not run by CI (minutes on a 2-core CPU).
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
from typing import Iterable, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import commit, provenance, run_configs, write_report  # noqa: E402

from maskstatus.data.cache import available_cores  # noqa: E402
from maskstatus.infer.export import export_run  # noqa: E402
from maskstatus.infer.onnx_model import open_session  # noqa: E402
from maskstatus.infer.pipeline import load_run, model_inputs  # noqa: E402
from maskstatus.labels import NUM_CLASSES  # noqa: E402
from maskstatus.scoring.metrics import macro_f1  # noqa: E402
from maskstatus.models import outputs_to_probs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.995  # the ONNX backend's bar: the same 18-class answer on at least this share of images
logger = logging.getLogger("quantize_int8")

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


def shape_nodes(model) -> list[str]:
    """Nodes whose outputs do not depend on the input's values, only on its shape (or on nothing).

    ONNX Runtime's quantizer would otherwise put Clip, Sub, Concat... of the padding arithmetic through uint8.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    data = {i.name for i in graph.input} - initializers
    for node in graph.node:  # exporters write nodes in topological order
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
    return [node.name for node in graph.node if not any(name in data for name in node.output)]


KEEP_FLOAT_SETS = ("none", "depthwise", "ends", "depthwise+ends")


def float_nodes(model, keep: str) -> list[str]:
    """Names of the compute nodes ``keep`` (one of KEEP_FLOAT_SETS) leaves in float32."""
    if keep not in KEEP_FLOAT_SETS:
        raise ValueError(f"--keep-float: unknown set {keep!r}; known: {', '.join(KEEP_FLOAT_SETS)}")
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    names: list[str] = []
    if "depthwise" in keep:
        names += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if "ends" in keep and convs:
        names += [convs[0].name, convs[-1].name]
        names += [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return names


def split_by_person(oof: pd.DataFrame, share: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the calibration people (``share`` of them, drawn with ``seed``) and of everyone else."""
    people = np.array(sorted(oof["person_id"].unique()))
    np.random.default_rng(seed).shuffle(people)
    chosen = oof["person_id"].isin(set(people[: max(1, int(len(people) * share))])).to_numpy()
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def quantize(fp32: Path, out: Path, calibration: np.ndarray, method: str, batch: int = 32,
             keep_float: str = "none") -> float:
    """Static QDQ int8 model of ``fp32`` calibrated on ``calibration`` (N, 3, H, W); returns seconds taken.

    The nodes of ``keep_float`` (see :func:`float_nodes`) stay in float32.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self) -> Optional[dict]:
            return next(self.batches, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    graph = onnx.load(str(fp32))
    started = time.perf_counter()
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=shape_nodes(graph) + float_nodes(graph, keep_float),
                    calibrate_method=methods[method])
    return time.perf_counter() - started


def probabilities(session, images: np.ndarray, cuts, batch: int = 256) -> np.ndarray:
    names = [o.name for o in session.get_outputs()]
    out = []
    for i in range(0, len(images), batch):
        values = session.run(names, {"image": images[i:i + batch]})
        out.append(outputs_to_probs({k: torch.from_numpy(v) for k, v in zip(names, values)}, cuts).numpy())
    return np.concatenate(out)


def images_per_s(sessions: dict, images: np.ndarray, batch: int, repeats: int) -> tuple[dict, dict]:
    """Median and every timing of each session over the same images, the order alternating between repeats."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(repeats):
        order: Iterable[str] = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for name in order:
            session = sessions[name]
            outputs = [o.name for o in session.get_outputs()]
            session.run(outputs, {"image": images[:batch]})  # warm-up: first-call allocations
            started = time.perf_counter()
            for i in range(0, len(images), batch):
                session.run(outputs, {"image": images[i:i + batch]})
            times[name].append(len(images) / (time.perf_counter() - started))
    return ({k: round(statistics.median(v), 1) for k, v in times.items()},
            {k: [round(x, 1) for x in v] for k, v in times.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run folder with predictions/oof.csv (read only)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quantize-int8.json")
    p.add_argument("--methods", default="minmax,percentile", help="calibration methods, comma-separated "
                   "(minmax, percentile, entropy)")
    p.add_argument("--keep-float", default="none", help="layer sets left in float32, comma-separated, each tried "
                   f"with each method ({', '.join(KEEP_FLOAT_SETS)}; default none)")
    p.add_argument("--calibration", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--held-out", type=int, default=None, help="compare on at most this many held-out images")
    p.add_argument("--speed-images", type=int, default=1024, help="images per speed timing (default 1024)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="speed timings per model, alternating (default 3)")
    args = p.parse_args(argv)
    # WARNING for the rest: onnxruntime.quantization logs a line per weight channel it rescales, on the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    code_version = commit()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    keep_sets = [k.strip() for k in args.keep_float.split(",") if k.strip()]
    unknown = [k for k in keep_sets if k not in KEEP_FLOAT_SETS]
    if unknown:
        p.error(f"--keep-float: unknown set(s) {unknown}; known: {', '.join(KEEP_FLOAT_SETS)}")

    run = load_run(args.run)
    oof = pd.read_csv(args.run / "predictions" / "oof.csv", dtype={"person_id": str})
    calib_rows, held_rows = split_by_person(oof)
    calib_rows, held_rows = calib_rows[: args.calibration], held_rows[: args.held_out]
    rows = np.concatenate([calib_rows, held_rows])
    images = torch.stack(model_inputs(run, oof["image_path"].iloc[rows].tolist()))
    images = images.numpy()
    calibration, held = images[: len(calib_rows)], images[len(calib_rows):]
    labels = oof["label"].to_numpy()[held_rows]
    logger.info("%d calibration and %d held-out images", len(calibration), len(held))

    with tempfile.TemporaryDirectory(prefix="quantize-int8-") as tmp:
        fp32 = export_run(args.run, Path(tmp)).onnx
        fp32_mb = fp32.stat().st_size / 2**20
        sessions = {"float32": open_session(fp32)}
        reference = probabilities(sessions["float32"], held, run.age_cuts)
        f1_fp32 = macro_f1(labels, reference.argmax(1), NUM_CLASSES)
        models = {}
        for method in methods:
            for keep in keep_sets:
                name = f"int8-{method}" if keep == "none" else f"int8-{method}-float-{keep}"
                path = fp32.with_name(f"{name}.onnx")
                seconds = quantize(fp32, path, calibration, method, keep_float=keep)
                sessions[name] = open_session(path)
                probs = probabilities(sessions[name], held, run.age_cuts)
                answers = probs.argmax(1)
                f1 = macro_f1(labels, answers, NUM_CLASSES)
                models[name] = {
                    "calibration_method": method,
                    "kept_in_float": keep,
                    "quantize_s": round(seconds, 1),
                    "file_mb": round(path.stat().st_size / 2**20, 2),
                    "answer_agreement": round(float((answers == reference.argmax(1)).mean()), 4),
                    "answers_differ": int((answers != reference.argmax(1)).sum()),
                    "macro_f1": round(f1, 4),
                    "macro_f1_change": round(f1 - f1_fp32, 4),
                    "max_prob_diff": round(float(np.abs(probs - reference).max()), 4),
                }
                logger.info("%s: %s", name, models[name])
        load_before = os.getloadavg()[0]
        speed, speed_each = images_per_s(sessions, images[: args.speed_images], args.batch_size, args.repeats)
        load_after = os.getloadavg()[0]

    best = max(models.values(), key=lambda m: m["answer_agreement"]) if models else None
    report = {
        "run": str(args.run),
        "images": {"calibration": len(calibration), "held_out": len(held),
                   "split": "by person: a tenth of the people of predictions/oof.csv calibrate (seed 0)"},
        "quantization": "onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights, uint8 "
                        "activations, shape arithmetic kept in float",
        "float32": {"macro_f1": round(f1_fp32, 4), "file_mb": round(fp32_mb, 2)},
        "int8": models,
        "goal": f"same 18-class answer as float32 on >= {GOAL:.1%} of held-out images",
        "goal_met": bool(best and best["answer_agreement"] >= GOAL),
        "model_only_images_per_s": speed,
        "model_only_images_per_s_each": speed_each,
        "model_only": {"images": min(args.speed_images, len(images)), "batch": args.batch_size,
                       "session": "infer.onnx_model.session_options (all graph optimisations, one intra-op "
                                  "thread per core)"},
        # 1-minute load average before and after the speed timings; above the core count, others shared the CPU.
        "load_average_1m": [load_before, load_after],
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
        **provenance(code_version, cores_available=available_cores()),
        "run_configs": run_configs(args.run),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
