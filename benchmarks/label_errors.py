"""Recall of the label-error finder on errors planted in an out-of-fold table's labels.

    python benchmarks/label_errors.py --oof CV_DIR_OR_RUN_OR_OOF_CSV \
        --out benchmarks/results/label-errors.json [--gender 27 --age 14 --swap 8 --draws 20 --top 50]

Per draw, plants gender flips, age-group moves and incorrect_mask/normal swaps
on disjoint random people (the defaults are the scale of the known set on 2,700
people; scale them to the table's people) and runs the finder with ``--top``
and ``--min-score``. The draws run twice, once moving ages to a neighbouring
group and once to a random other group (gender and swap recall come from
both). Why planting in OOF labels is faithful, and its caveats: see
``maskstatus.scoring.label_error_recall``. Also lists what the finder reports on
the untouched table (its real suspects, which compete with the planted ones for
the top places). Fast (seconds to a minute on a CPU); no model runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from maskstatus.age import AGE_MEAN  # noqa: E402
from maskstatus.scoring.label_error_recall import AGE_MODES, simulate_recall  # noqa: E402
from maskstatus.scoring.label_errors import TASK_NAMES, find_label_errors, load_oof  # noqa: E402

logger = logging.getLogger("label_errors")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--oof", required=True, type=Path, help="CV folder, run folder or oof.csv")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--gender", type=int, default=27, help="gender flips per draw")
    p.add_argument("--age", type=int, default=14, help="age-group moves per draw")
    p.add_argument("--swap", type=int, default=8, help="incorrect_mask/normal swaps per draw")
    p.add_argument("--draws", type=int, default=20, help="random draws per age mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=50, help="finder: rows kept per task")
    p.add_argument("--min-score", type=float, default=0.5, help="finder: lowest score kept")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = common.commit()

    oof = load_oof(args.oof)
    untouched = find_label_errors(oof, top=args.top, min_score=args.min_score)
    counts = {"gender": args.gender, "age": args.age, "mask_swap": args.swap}
    results = {}
    for mode in AGE_MODES:
        logger.info("age moves to a %s group: %d draws", mode, args.draws)
        results[f"age_{mode}"] = simulate_recall(
            oof, counts, args.draws, args.seed, args.top, args.min_score, age_mode=mode
        )

    report = {
        "measures": "recall of planted label errors: share found within the top --top rows of their task with "
        "score >= --min-score (per task, and pooled over tasks per draw), mean/min/max over draws; "
        "listed_injected = planted rows among the task's listed rows",
        "oof": str(args.oof),
        "people": int(oof["person_id"].nunique()),
        "images": int(len(oof)),
        "folds": sorted(int(f) for f in oof["fold"].unique()),
        "has_age_years": AGE_MEAN in oof.columns,
        "injected_per_draw": counts,
        "draws": args.draws,
        "seed": args.seed,
        "top": args.top,
        "min_score": args.min_score,
        "untouched_listed": {t: int((untouched["task"] == t).sum()) for t in TASK_NAMES},
        "results": results,
        "wall_s": time.perf_counter() - started,
        **common.provenance(code_version),
    }
    common.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
