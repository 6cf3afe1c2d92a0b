"""Recall of the label-error finder's rankers on errors planted in an out-of-fold table's labels.

    python benchmarks/label_errors.py --oof CV_DIR_OR_RUN_OR_OOF_CSV \
        --out benchmarks/results/label-errors-rankers-X.json [--gender 27 --age 14 --swap 8 --draws 20 --top 50]

Per draw, plants gender flips, age-group moves and incorrect_mask/normal swaps
on disjoint random people (the defaults are the scale of the known set on 2,700
people; scale them to the table's people) and runs every ranker of
``find-label-errors --ranker`` (``--rankers``, default all) on the SAME planted
table with the same ``--top`` and ``--min-score``. The draws run twice, once
moving ages to a neighbouring group and once to a random other group (gender
and swap recall come from both). Why planting in OOF labels is faithful, and its
caveats: see ``maskstatus.scoring.label_error_recall``.

The JSON: ``results`` keyed by ranker, then by age mode, each with the recall
per task and pooled over tasks (mean over draws, min, max, and lo..hi the
central 90 % of the draws); ``differences`` per age mode and ranker pair ("B -
A"), the per-draw recall of B minus A's on the same draws, with the central 90 %
of the draws and the 90 % bootstrap interval of the mean difference (mean_lo,
mean_hi); ``better`` names, per age mode, the ranker with the highest pooled
recall and whether that lead is beyond the noise of the draws. Also what each
ranker lists on the untouched table (its real suspects, which compete with the
planted ones for the top places). Files written before the rankers (results
keyed by age mode) are the ``confidence`` ranker's. Fast (seconds to a minute
per ranker on a CPU); no model runs.
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
from maskstatus.choices import LABEL_ERROR_RANKERS  # noqa: E402
from maskstatus.defaults import LABEL_ERRORS_MIN_SCORE, LABEL_ERRORS_RANKER, LABEL_ERRORS_TOP  # noqa: E402
from maskstatus.scoring.label_error_recall import AGE_MODES, compare_rankers  # noqa: E402
from maskstatus.scoring.label_errors import TASK_NAMES, find_label_errors, load_oof  # noqa: E402

logger = logging.getLogger("label_errors")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def best_ranker(report: dict) -> dict:
    """The ranker with the highest mean pooled recall, and whether its lead over each other one is beyond noise.

    Beyond noise: the 90 % bootstrap interval of the mean paired difference lies wholly above zero.
    """
    pooled = {r: res["overall"]["recall"]["mean"] for r, res in report["rankers"].items() if "overall" in res}
    if not pooled:
        return {}
    best = max(pooled, key=lambda r: pooled[r])
    leads = {}
    for pair, diff in report["differences"].items():
        b, a = pair.split(" - ")
        if best in (a, b) and "overall" in diff:
            sign = 1 if best == b else -1
            low = diff["overall"]["mean_lo"] if sign > 0 else -diff["overall"]["mean_hi"]
            leads[a if best == b else b] = low > 0
    return {"ranker": best, "pooled_recall": pooled[best], "beyond_noise_against": leads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--oof", required=True, type=Path, help="CV folder, run folder or oof.csv")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--gender", type=int, default=27, help="gender flips per draw")
    p.add_argument("--age", type=int, default=14, help="age-group moves per draw")
    p.add_argument("--swap", type=int, default=8, help="incorrect_mask/normal swaps per draw")
    p.add_argument("--draws", type=int, default=20, help="random draws per age mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=LABEL_ERRORS_TOP, help="finder: rows kept per task")
    p.add_argument("--min-score", type=float, default=LABEL_ERRORS_MIN_SCORE, help="finder: lowest score kept")
    p.add_argument("--rankers", default=",".join(LABEL_ERROR_RANKERS),
                   help=f"comma-separated rankers to compare (default {','.join(LABEL_ERROR_RANKERS)})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = common.commit()
    rankers = [r.strip() for r in args.rankers.split(",") if r.strip()]

    oof = load_oof(args.oof)
    counts = {"gender": args.gender, "age": args.age, "mask_swap": args.swap}
    untouched = {}
    for ranker in rankers:
        listed = find_label_errors(oof, top=args.top, min_score=args.min_score, ranker=ranker)
        untouched[ranker] = {t: int((listed["task"] == t).sum()) for t in TASK_NAMES}
    results: dict = {r: {} for r in rankers}
    differences, better = {}, {}
    for mode in AGE_MODES:
        logger.info("age moves to a %s group: %d draws, rankers %s", mode, args.draws, ", ".join(rankers))
        report = compare_rankers(oof, counts, rankers, args.draws, args.seed, args.top, args.min_score, age_mode=mode)
        for ranker in rankers:
            results[ranker][f"age_{mode}"] = report["rankers"][ranker]
        differences[f"age_{mode}"] = report["differences"]
        better[f"age_{mode}"] = best_ranker(report)

    report = {
        "measures": "recall of planted label errors per ranker, on the same draws: share found within the top "
        "--top rows of their task with score >= --min-score (per task, and pooled over tasks per draw); mean, "
        "min, max and lo..hi (central 90 %) over draws; differences: per-draw recall of one ranker minus "
        "another's, with the 90 % bootstrap interval of the mean difference (mean_lo, mean_hi); "
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
        "rankers": rankers,
        "default_ranker": LABEL_ERRORS_RANKER,
        "untouched_listed": untouched,
        "results": results,
        "differences": differences,
        "better": better,
        "wall_s": time.perf_counter() - started,
        **common.provenance(code_version),
    }
    common.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
