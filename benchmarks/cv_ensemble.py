"""Pooled out-of-fold score of an ensemble of CV folders (or runs), against each member, with intervals.

    python benchmarks/cv_ensemble.py --member CV_A --member CV_B [--weights 1,1] \
        --out benchmarks/results/cv-ensemble-X.json

Soft-votes the members' out-of-fold predictions (``maskstatus ensemble``'s
``ensemble_oof``; rows matched on person and photo, the members' years averaged),
and reports for each member and for the ensemble the macro F1 overall and per
task with 90 % person-bootstrap intervals; the ensemble's gain over its best
member with a paired interval (the same resampled people for both), and each
member's difference from the first likewise; where the ensemble's score goes
(its F1 with each task's answer made right, and, where the first member's
train table can be read, its age error by band of given age); and, where
the members regress the age, the same after age cut points tuned out of fold
(cross-fitted: tuned on half of the people, scored on the other half). Reads
OOF tables only: seconds, no training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import commit, provenance, write_report  # noqa: E402

from maskstatus.age import AGE_MEAN, AGE_SIGMA  # noqa: E402
from maskstatus.analysis.headroom import given_years, oof_headroom  # noqa: E402
from maskstatus.scoring.bootstrap import Interval  # noqa: E402
from maskstatus.scoring.age_cuts import cross_fitted_oof  # noqa: E402
from maskstatus.infer.ensemble import ensemble_oof  # noqa: E402
from maskstatus.scoring.oof import KEY_COLUMNS, member_config, read_oof  # noqa: E402
from maskstatus.scoring.score import oof_interval  # noqa: E402
from maskstatus.labels import DEFAULT_AGE_THRESHOLDS  # noqa: E402

logger = logging.getLogger("cv_ensemble")
TASK_F1 = ("f1", "mask_f1", "gender_f1", "age_f1")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def summary(interval: Interval) -> dict:
    """The F1s with their intervals, as the other benchmark JSONs name them."""
    out = {f"oof_{m}": interval.point[m] for m in TASK_F1}
    out.update({f"oof_{m}_ci": list(interval.ci[m]) for m in TASK_F1})
    return out


def paired_gain(ensemble: Interval, member: Interval) -> dict:
    """Ensemble minus member, point and 90 % interval over the same bootstrap replicates."""
    diff = ensemble.replicates["f1"] - member.replicates["f1"]
    return {"f1_gain": ensemble.point["f1"] - member.point["f1"],
            "f1_gain_ci": np.quantile(diff, [0.05, 0.95]).tolist(),
            "share_of_replicates_above_0": float((diff > 0).mean())}


def has_years(oof: pd.DataFrame) -> bool:
    return {AGE_MEAN, AGE_SIGMA} <= set(oof.columns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--member", action="append", required=True, type=Path, help="CV folder or run folder (repeat)")
    p.add_argument("--weights", default=None, help="one weight per member, comma-separated (default equal)")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None

    ensemble, _ = ensemble_oof(args.member, weights)
    keys = pd.MultiIndex.from_frame(ensemble[KEY_COLUMNS])
    # Each member scored on exactly the ensemble's rows, so the same seed resamples the same people.
    members = [read_oof(m).set_index(KEY_COLUMNS).loc[keys].reset_index() for m in args.member]
    intervals = [oof_interval(m, n_boot=args.boot) for m in members]
    ens_interval = oof_interval(ensemble, n_boot=args.boot)
    best = int(np.argmax([i.point["f1"] for i in intervals]))
    report = {
        "members": [{"path": str(m), **summary(i)} for m, i in zip(args.member, intervals)],
        "weights": weights,
        "ensemble": summary(ens_interval),
        "gain_over_best_member": {"member": str(args.member[best]), **paired_gain(ens_interval, intervals[best])},
        # Is one member better than another, or is the difference inside the noise of these people?
        "members_against_the_first": [{"member": str(m), **paired_gain(i, intervals[0])}
                                      for m, i in zip(args.member[1:], intervals[1:])],
        "images": len(ensemble),
        "people": ens_interval.people,
    }
    first = member_config(args.member[0])
    # As in the report: the train table is read again only when there are predicted years to band.
    years = given_years(first, ensemble) if first is not None and AGE_MEAN in ensemble.columns else None
    report["where_the_score_goes"] = oof_headroom(ensemble, years)
    if has_years(ensemble) and all(has_years(m) for m in members):
        tuned = [oof_interval(cross_fitted_oof(t, DEFAULT_AGE_THRESHOLDS), n_boot=args.boot)
                 for t in (*members, ensemble)]
        report["tuned_cuts_cross_fitted"] = {
            "members": [summary(i) for i in tuned[:-1]],
            "ensemble": summary(tuned[-1]),
            "gain_over_best_member": paired_gain(tuned[-1], tuned[best]),
        }
    report["wall_s"] = time.perf_counter() - started
    report.update(provenance(commit()))
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
