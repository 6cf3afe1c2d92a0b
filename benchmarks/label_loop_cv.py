"""The label-cleaning loop over a whole pooled CV: accept every suggestion, train the same CV again, compare paired.

    python benchmarks/label_loop_cv.py --cv runs/best-cpu-128-cv-… \
        --out benchmarks/results/label-loop-cv5-128px.json [--runs runs/label-loop-cv]

1. ``find-label-errors`` with its defaults (ranker, ``--top``, ``--min-score``: ``maskstatus.defaults``) on
   the CV's pooled out-of-fold predictions; every suggestion accepted, as a user pressing "accept" on
   each would (``label_errors.accepted_fixes``): the relabel CSV goes to ``--runs``, never into the
   tracked tree (it holds the data's ids). A CV trained with a relabel file keeps its rows, the new
   fixes replacing those of the same person and field.
2. The same CV trained again (``run_cv``: the CV's own ``cv_config.yaml``, seed and ``folds.csv``)
   with ``data.relabel`` set to that file.
3. The two pooled OOF tables compared on the same people, paired (the same person-bootstrap
   replicates for both, ``scoring.bootstrap``): ``own_labels``, each side scored on the labels it
   trained on (the relabelled people on their fixed labels after, their old ones before);
   ``unchanged_people``, only the people no fix touched, whose labels are the same both ways;
   ``fixed_labels``, both sides scored on the fixed labels.

Trains a whole CV: hours on a CPU for the proxy. Test overrides (``key=value``) go after the options
and are recorded; the measurement itself takes none.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, provenance, resolved_config, write_report  # noqa: E402
from cv_ensemble import paired_gain, summary  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.relabel import RELABEL_COLUMNS, read_relabel, resolve_relabel  # noqa: E402
from maskstatus.defaults import LABEL_ERRORS_MIN_SCORE, LABEL_ERRORS_RANKER, LABEL_ERRORS_TOP  # noqa: E402
from maskstatus.runs import CV_CONFIG, FOLDS, atomic_write_csv, oof_path  # noqa: E402
from maskstatus.scoring.label_errors import accepted_fixes, find_label_errors  # noqa: E402
from maskstatus.scoring.oof import KEY_COLUMNS, read_oof  # noqa: E402
from maskstatus.scoring.score import oof_interval, scored_scope  # noqa: E402
from maskstatus.train.cv import run_cv  # noqa: E402

logger = logging.getLogger("label_loop_cv")

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)

RELABEL_FILE = "accepted_relabel.csv"


def merged_relabel(previous: str | None, fixes: pd.DataFrame) -> pd.DataFrame:
    """The CV's own relabel rows (if it had a file) with ``fixes`` replacing those of the same id and field."""
    path = resolve_relabel(previous)
    if path is None:
        return fixes[list(RELABEL_COLUMNS)]
    old = read_relabel(path)[list(RELABEL_COLUMNS)]
    new_keys = set(zip(fixes["id"], fixes["field"], strict=True))
    keep = [(i, f) not in new_keys for i, f in zip(old["id"], old["field"], strict=True)]
    return pd.concat([old[keep], fixes[list(RELABEL_COLUMNS)]], ignore_index=True)


def paired_views(base: pd.DataFrame, fixed: pd.DataFrame, changed: set[str], scope: dict, n_boot: int) -> dict:
    """The paired comparisons of the module docstring, each on one set of people resampled alike for both sides."""
    fixed_labels = base.assign(label=fixed["label"].to_numpy())
    unchanged = ~base["person_id"].astype(str).isin(changed).to_numpy()
    views = {"own_labels": (base, fixed), "unchanged_people": (base[unchanged], fixed[unchanged]),
             "fixed_labels": (fixed_labels, fixed)}
    out = {}
    for name, (before, after) in views.items():
        if before.empty:
            continue
        # One seed for both sides of a view: the same people drawn in every replicate, so the difference is paired.
        b, a = (oof_interval(t.reset_index(drop=True), n_boot=n_boot, **scope) for t in (before, after))
        gains = {f"{m}_gain": a.point[m] - b.point[m] for m in ("mask_f1", "gender_f1", "age_f1")}
        out[name] = {"people": a.people, "images": a.images, "before": summary(b), "after": summary(a),
                     **paired_gain(a, b), **gains}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cv", required=True, type=Path, help="the pooled CV folder whose suggestions are accepted")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--runs", type=Path, default=Path("runs") / "label-loop-cv",
                   help="where the relabel file and the new CV folder go (default runs/label-loop-cv)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, for tests only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = commit()

    # The CSV, not the folder: cut points tuned on the CV later would score one side at other cuts.
    base = read_oof(oof_path(args.cv))
    suspects = find_label_errors(base)
    saved = load_config(args.cv / CV_CONFIG)
    fixes = accepted_fixes(suspects, base, saved.data.age.thresholds())
    args.runs.mkdir(parents=True, exist_ok=True)
    relabel = args.runs / RELABEL_FILE
    atomic_write_csv(merged_relabel(saved.data.relabel, fixes), relabel)
    logger.info("%d suspects, %d fixes accepted -> %s", len(suspects), len(fixes), relabel)

    cfg = load_config(args.cv / CV_CONFIG, [f"data.relabel={relabel.resolve()}",
                                             f"split.folds_file={(args.cv / FOLDS).resolve()}",
                                             f"output_dir={args.runs.resolve()}", *args.overrides])
    t0 = time.perf_counter()
    result = run_cv(cfg)
    train_s = time.perf_counter() - t0

    after = read_oof(oof_path(result.cv_dir)).set_index(KEY_COLUMNS)
    before = base.set_index(KEY_COLUMNS)
    if set(before.index) != set(after.index):
        raise SystemExit(f"{result.cv_dir}: its OOF rows are not those of {args.cv}; the same people are needed")
    after = after.loc[before.index].reset_index()
    before = before.reset_index()
    changed = set(fixes["id"].astype(str))
    tasks, mask_states = scored_scope(cfg)
    views = paired_views(before, after, changed, {"tasks": tasks, "mask_states": mask_states}, args.boot)
    own = views["own_labels"]
    report = {
        "measures": "pooled OOF macro F1 of the same CV trained again with every find-label-errors suggestion "
        "accepted, paired with the CV as it was on the same people (person bootstrap): own_labels = each side on "
        "the labels it trained on, unchanged_people = the people no fix touched, fixed_labels = both on the fixed "
        "labels",
        "cv": str(args.cv),
        "loop_cv": str(result.cv_dir),
        "ranker": LABEL_ERRORS_RANKER,
        "top": LABEL_ERRORS_TOP,
        "min_score": LABEL_ERRORS_MIN_SCORE,
        "relabel": str(relabel),
        "suspects": int(len(suspects)),
        "fixes": int(len(fixes)),
        "fixes_by_field": {k: int(v) for k, v in fixes["field"].value_counts().items()},
        "people_changed": len(changed),
        "views": views,
        # The ablation table's keys: the relabelled CV on its own labels, and its paired change.
        "oof_f1": own["after"]["oof_f1"],
        "oof_f1_ci": own["after"]["oof_f1_ci"],
        "oof_mask_f1": own["after"]["oof_mask_f1"],
        "oof_gender_f1": own["after"]["oof_gender_f1"],
        "oof_age_f1": own["after"]["oof_age_f1"],
        "f1_gain": own["f1_gain"],
        "f1_gain_ci": own["f1_gain_ci"],
        "train_s": train_s,
        "fold_runs": [str(r) for r in result.fold_runs],
        "overrides": list(args.overrides),
        "resolved_config": resolved_config(cfg),
        "wall_s": time.perf_counter() - started,
        **provenance(code_version),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
