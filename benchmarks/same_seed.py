"""Does a change keep the results? `maskstatus demo` at two commits, same seed, compared column by column.

    python benchmarks/same_seed.py --base 80748d3 --out benchmarks/results/same-seed-demo.json
    python benchmarks/same_seed.py --base-demo /tmp/demo-old --new-demo /tmp/demo-new --out FILE.json

With commits, each one is checked out into a temporary git worktree and its
`maskstatus demo` run with this interpreter (the demo data, config and seed are
the commit's own); `--new` defaults to the working tree. With `--base-demo` /
`--new-demo`, two demo folders made before are compared. Reports, for every
column of the runs' metrics.csv except the timings, the largest absolute
difference, and whether the eval submissions are byte-identical. Not run by CI:
two demo runs take a few minutes.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, commit, provenance, write_report  # noqa: E402

TIMING_WORDS = ("time", "per_s")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def run_demo(source: Path, out: Path) -> Path:
    """`maskstatus demo --out OUT` with the package of `source` (a checkout); returns OUT."""
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run([sys.executable, "-m", "maskstatus.cli", "-q", "demo", "--out", str(out)], cwd=source, env=env,
                   check=True)
    return out


def demo_metrics(demo: Path) -> pd.DataFrame:
    runs = sorted((demo / "runs").glob("demo-*/metrics.csv"))
    if len(runs) != 1:
        raise SystemExit(f"{demo}: expected one demo run folder with metrics.csv, found {len(runs)}")
    return pd.read_csv(runs[0])


def compare(base: Path, new: Path) -> dict:
    a, b = demo_metrics(base), demo_metrics(new)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return {"same_shape": False, "base_columns": list(a.columns), "new_columns": list(b.columns),
                "base_epochs": len(a), "new_epochs": len(b)}
    columns = [c for c in a.columns if not any(w in c for w in TIMING_WORDS)]
    diff = {c: float((a[c] - b[c]).abs().max()) for c in columns}
    return {
        "same_shape": True,
        "epochs": len(a),
        "max_abs_diff": diff,
        "identical_columns": [c for c in columns if (a[c] == b[c]).all()],
        "differing_columns": [c for c in columns if not (a[c] == b[c]).all()],
        "base_val_f1": a["val_f1"].tolist(),
        "new_val_f1": b["val_f1"].tolist(),
        "submission_identical": filecmp.cmp(base / "submission.csv", new / "submission.csv", shallow=False),
    }


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=REPO, check=True,
                   capture_output=True)
    return where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default=None, help="commit before the change")
    p.add_argument("--new", default=None, help="commit after the change (default: the working tree)")
    p.add_argument("--base-demo", type=Path, default=None, help="a demo folder made before the change")
    p.add_argument("--new-demo", type=Path, default=None, help="a demo folder made after the change")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    args = p.parse_args(argv)
    if (args.base is None) == (args.base_demo is None):
        p.error("give --base COMMIT or --base-demo DIR")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        worktrees = []
        try:
            base_demo = args.base_demo
            if base_demo is None:
                worktrees.append(checkout(args.base, tmp / "base"))
                base_demo = run_demo(worktrees[-1], tmp / "base-demo")
            new_demo = args.new_demo
            if new_demo is None:
                source = REPO
                if args.new is not None:
                    worktrees.append(checkout(args.new, tmp / "new"))
                    source = worktrees[-1]
                new_demo = run_demo(source, tmp / "new-demo")
            report = compare(base_demo, new_demo)
        finally:
            for w in worktrees:
                subprocess.run(["git", "worktree", "remove", "--force", str(w)], cwd=REPO, capture_output=True)
    report.update({
        "base": args.base or str(args.base_demo),
        "new": args.new or (str(args.new_demo) if args.new_demo else f"working tree at {commit()}"),
        "wall_s": time.perf_counter() - started,
        **provenance(commit()),
    })
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
