"""How fast does the command line answer a mistake? Wall clock and peak memory of one-line errors.

    python benchmarks/cli_errors.py --out benchmarks/results/cli-errors.json
    git archive fc738a8 src | tar -x -C /tmp/old       # the code before the checks moved ahead of torch
    python benchmarks/cli_errors.py --source /tmp/old --commit fc738a8 --out /tmp/cli-errors-fc738a8.json

Each case runs `python -m maskstatus.cli ...` in a fresh process (as a user's shell would), --repeats
times; the median wall clock and the largest peak resident memory (the child's ru_maxrss) are
reported, with the exit code and the last line of its error output. The cases: `--help`; a misspelt
config key for train and cv (`train.epoch=3`); a bad precision and accelerator in the config; bad
arguments of predict (`--batch-size -3`, `--tta bogus`, `--accelerator tpu9`). None of them needs a
run or data folder: each must be refused before anything is read. `--source` measures another
checkout's package (e.g. `git archive OLD src | tar -x -C DIR`), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "configs" / "demo.yaml"

# name -> arguments of `maskstatus`; the run and data folders named do not exist, on purpose.
PREDICT = ["predict", "--run", "no-such-run", "--data", "no-such-data", "--out", "no-such-dir/submission.csv"]
CASES: dict[str, list[str]] = {
    "help": ["--help"],
    "train misspelt key (train.epoch=3)": ["train", "--config", str(DEMO_YAML), "train.epoch=3"],
    "cv misspelt key (train.epoch=3)": ["cv", "--config", str(DEMO_YAML), "train.epoch=3"],
    "train bad precision (train.precision=float7)": ["train", "--config", str(DEMO_YAML), "train.precision=float7"],
    "train bad accelerator (train.accelerator=tpu9)": ["train", "--config", str(DEMO_YAML), "train.accelerator=tpu9"],
    "predict --batch-size -3": [*PREDICT, "--batch-size", "-3"],
    "predict --tta bogus": [*PREDICT, "--tta", "bogus"],
    "predict --accelerator tpu9": [*PREDICT, "--accelerator", "tpu9"],
}

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def run_once(args: list[str], source: Path, cwd: Path) -> dict:
    """One fresh process: its wall clock, peak memory, exit code and last line of stderr."""
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "maskstatus.cli", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        # wait4, not proc.wait: it returns this child's own resource use (its peak memory).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"seconds": seconds, "max_rss_mb": rss_mb, "exit_code": proc.returncode,
            "last_error_line": lines[-1] if lines else "", "error_lines": len(lines)}


def measure(name: str, args: list[str], repeats: int, source: Path, cwd: Path) -> dict:
    runs = [run_once(args, source, cwd) for _ in range(repeats)]
    times = [r["seconds"] for r in runs]
    return {
        "case": name,
        "argv": shlex.join(["maskstatus", *args]),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "times_s": [round(t, 3) for t in times],
        "max_rss_mb": round(max(r["max_rss_mb"] for r in runs), 1),
        "exit_codes": sorted({r["exit_code"] for r in runs}),
        "last_error_line": runs[-1]["last_error_line"],
    }


def commit(source: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict:
    return {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per case (default 5); the median is kept")
    p.add_argument("--source", type=Path, default=REPO, help="checkout whose src/ is measured (default this one)")
    p.add_argument("--commit", default=None, help="the commit --source holds, when it is not a git checkout")
    p.add_argument("--only", action="append", default=None, metavar="CASE",
                   help="measure only the cases whose name contains this (repeatable)")
    args = p.parse_args(argv)
    source = args.source.resolve()
    cases = {k: v for k, v in CASES.items() if args.only is None or any(o in k for o in args.only)}
    with tempfile.TemporaryDirectory() as cwd:  # nothing a case might write lands in the checkout
        results = [measure(name, case, args.repeats, source, Path(cwd)) for name, case in cases.items()]
    report = {
        "what": "wall clock (median of fresh processes) and peak memory of `maskstatus` answering a mistake "
                "with its one-line error; every case but --help must exit 2 without reading any run or data",
        "repeats": args.repeats,
        "results": results,
        "machine": machine(),
        "source": "this checkout" if source == REPO else str(source),
        "commit": args.commit or commit(source),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
