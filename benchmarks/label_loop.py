"""The label-cleaning loop as an ablation row: find label errors out of fold, apply the draft, retrain one fold.

    python benchmarks/label_loop.py --oof CV_DIR --folds-file CV_DIR/folds.csv --fold 0 \
        --config configs/best-cpu.yaml --out benchmarks/results/label-loop-fold0-128px.json --submission /tmp/loop.csv 'cache.size=[128,128]'

Runs ``maskstatus find-label-errors`` on the out-of-fold predictions of ``--oof`` (a CV
folder), keeps the fixes of its relabel draft (gender flips and incorrect/normal swaps; age
suspects stay comments, as the draft leaves them for a person to judge), drops the fixes of
people in the held-out fold, so that the fold is scored against the labels as given, and
trains the fold with the rest as ``data.relabel`` through ``benchmarks/proxy.py``. The JSON
is proxy.py's plus the fixes applied. The draft and the review files go under ``--runs``
(git-ignored ``runs/`` by default), never into the tracked tree: they hold the data's ids.

With ``--oof`` a CV over all folds, each training person's suspicion comes from a model that
trained on the held-out people: a slight optimism. A teacher CV over the other folds only
(benchmarks/distill.py makes one) avoids it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from maskstatus.data.folds import read_folds  # noqa: E402
from maskstatus.data.relabel import read_relabel  # noqa: E402
from maskstatus.scoring.label_errors import find_label_errors, load_oof, write_review  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import proxy  # noqa: E402

logger = logging.getLogger("label_loop")

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


def training_draft(oof_dir: Path, folds_file: Path, fold: int, out_dir: Path, top: int = 50) -> tuple[Path, dict]:
    """The finder's relabel draft without the people of ``fold``; returns its path and what it holds.

    The whole review (every suspect) goes to ``out_dir/all``; the review of the training people
    only, whose draft is the one applied, to ``out_dir``.
    """
    suspects = find_label_errors(load_oof(oof_dir), top=top)
    folds = read_folds(folds_file)
    held_out = set(folds.loc[folds["fold"].astype(int) == fold, folds.columns[0]].astype(str))
    found = read_relabel(write_review(suspects, out_dir / "all")["relabel_draft"])
    draft = write_review(suspects[~suspects["person_id"].astype(str).isin(held_out)], out_dir)["relabel_draft"]
    applied = read_relabel(draft)
    return draft, {"draft": str(draft), "fixes_found": len(found), "fixes_applied": len(applied),
                   "fixes_of_held_out_people_dropped": len(found) - len(applied),
                   "fixes_by_field": applied["field"].value_counts().to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_fold_arguments(p)
    p.add_argument("--oof", required=True, type=Path, help="CV folder whose out-of-fold predictions are searched")
    p.add_argument("--folds-file", required=True, type=Path, help="the person folds of the retrained run")
    p.add_argument("--top", type=int, default=50, help="suspects kept per task (find-label-errors --top)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    review = args.runs / f"label-loop-fold{args.fold}"
    draft, loop = training_draft(args.oof, args.folds_file, args.fold, review, args.top)
    logger.info("relabel draft %s: %d fixes, %d of held-out people dropped", draft, loop["fixes_applied"],
                loop["fixes_of_held_out_people_dropped"])
    proxy.main(common.fold_argv(args, f"split.folds_file={args.folds_file}", f"data.relabel={draft}"))
    report = json.loads(args.out.read_text())
    report["label_loop"] = {"oof": str(args.oof), "top": args.top, **loop}
    common.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
