"""Training-step speed of a config under each Fabric precision: is bf16 worth it on this machine?

    python benchmarks/train_step.py --config configs/best-cpu.yaml [key=value ...] \
        [--precision 32-true --precision bf16-mixed] [--repeats 2] [--steps 15] \
        [--out benchmarks/results/train-step-precision.json]

Times forward + backward + optimizer step of the config's model on in-memory
tensors of its training batch shape (``common.model_only_throughput``: no data
loading, random weights), for each precision in turn, repeated in alternating
order so that a change in the machine's load hits every precision. Reports the
images/s of each timing, their median, each precision's speed-up over the first,
the machine, the commit and the command. Seconds to minutes; not run by CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from common import commit, model_only_throughput, provenance, resolved_config, write_report  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.cache import available_cores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("train_step")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--precision", action="append", default=None,
                   help="a Fabric precision to time; repeat (default: 32-true and bf16-mixed; the first is the base)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=15, help="timed steps per timing (3 untimed steps before each)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train-step-precision.json")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    precisions = args.precision or ["32-true", "bf16-mixed"]
    code_version = commit()
    rates: dict[str, list[float]] = {name: [] for name in precisions}
    for i in range(args.repeats):
        for name in precisions if i % 2 == 0 else precisions[::-1]:
            cfg = load_config(args.config, [*args.overrides, f"train.precision={name}"])
            rates[name].append(model_only_throughput(cfg, steps=args.steps))
            logger.info("%s: %.1f img/s", name, rates[name][-1])
    median = {name: statistics.median(r) for name, r in rates.items()}
    base = precisions[0]
    report = {
        "config": str(args.config),
        "overrides": args.overrides,
        "batch_size": cfg.train.batch_size,
        "image_size": list(cfg.cache.size) if cfg.cache.size else None,
        "backbone": cfg.model.backbone,
        "steps": args.steps,
        "train_step_images_per_s_each": {name: [round(v, 1) for v in r] for name, r in rates.items()},
        "train_step_images_per_s": {name: round(v, 1) for name, v in median.items()},
        "speedup_over_first": {name: round(median[name] / median[base], 2) for name in precisions[1:]},
        **provenance(code_version, cores_available=available_cores()),
        # The config as given: each timing replaced its train.precision with the one named in the keys above.
        "resolved_config": resolved_config(load_config(args.config, args.overrides)),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
