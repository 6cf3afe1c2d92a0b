"""Ablation on the proxy data: one row per technique, same fold, same epoch budget.

    python benchmarks/ablation.py                       # run every row not yet measured, then write the table
    python benchmarks/ablation.py --rows "EMA 0.999"    # just these rows
    python benchmarks/ablation.py --table-only          # rewrite ablation.md from the JSONs present

Each row runs benchmarks/proxy.py's measurement and keeps its JSON under
benchmarks/results/ablation/, so the table can be built over several sessions
(a CPU row takes about 20 minutes) and rows measured elsewhere can be added.
Rows without a JSON are listed as not run, never guessed.

Three kinds of row train nothing themselves and are scored from other rows' runs:
``ensemble: [row, ...]`` soft-votes those rows' out-of-fold predictions (a cascade
of per-task models and mask-state experts); ``tune_age_of: row`` tunes an age
regression row's cut points, reporting the cross-fitted F1 (cuts tuned on half of
the held-out people, scored on the other half), not the optimistic in-sample one;
``tta_of: row`` with ``tta: [view, ...]`` predicts that row's held-out fold again
with its best weights and test-time augmentation, so the only change is the TTA
(the same weights without TTA are re-scored too, as a control).

A row with ``pseudo_from: row`` trains with pseudo labels: the eval images as that
measured row's run predicts them, selected by ``pseudo: {threshold, task_thresholds}``.
A row with ``pseudo_teachers: [CV_DIR, ...]`` takes them instead from the soft vote of those
CV folders' models of the row's fold (``maskstatus pseudo-label``): teachers that never saw
its held-out people; it trains on the teachers' folds, which must be the reference's.
A row with ``distill: {weight: w}`` trains a teacher CV over the other folds only (same
recipe and overrides) and distils it into the fold's model (benchmarks/distill.py); its
train time counts the teachers' training too. A row with ``label_loop: {oof: CV_DIR}`` retrains
the fold with the label-error finder's relabel draft from that CV folder's out-of-fold
predictions, less the held-out people's fixes (benchmarks/label_loop.py).

A row with ``loop_result: FILE`` trains nothing here: it shows ``benchmarks/results/FILE``, written by
benchmarks/label_loop_cv.py (a whole pooled CV trained again on every accepted suggestion of
find-label-errors), once that file exists. Its F1 is pooled over all folds, not fold 0's, so its Δ is the
paired change against the same CV without the fixes (over the same people), not against the reference row.

Every row gets the 90 % person-bootstrap interval of its OOF macro F1 and task
F1s (``oof_f1_ci`` etc. in its JSON) when it is measured; a row measured before
that gets it added from its run's OOF predictions if they are still at hand
(TTA rows re-predict, so theirs are not kept), else the table says "no OOF kept".
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import proxy  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(path.read_text())
    names = [r["name"] for r in plan["rows"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: row names must be unique")
    return plan


def _source(out_dir: Path, name: str) -> dict:
    path = out_dir / f"{slug(name)}.json"
    if not path.is_file():
        raise SystemExit(f"row {name!r} must be measured first (no {path})")
    return json.loads(path.read_text())


def _cpu_name(machine: dict) -> str:
    # Rows of one table may come from different CPUs whose speeds differ 2x: name the chip, not just the cores.
    cpu = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b|@.*", "", machine.get("cpu", "")).split()
    return " ".join([f"{machine['cores']}-core", *cpu[:3]]) if cpu else f"{machine['cores']}-core CPU"


def _tta_row(row: dict, out_dir: Path) -> tuple[dict, dict]:
    """Metrics of a measured row's held-out fold predicted again with ``row['tta']``, and the report."""
    from lightning_fabric import Fabric

    from maskstatus.scoring.oof import read_oof
    from maskstatus.infer.pipeline import Pipeline, load_run
    from maskstatus.labels import PROB_COLUMNS
    from maskstatus.scoring.metrics import model_metrics

    source = _source(out_dir, row["tta_of"])
    run = load_run(source["run_dir"])
    oof = read_oof(source["run_dir"])  # the held-out images, with their labels
    fabric = Fabric(accelerator="auto", devices=1, precision=run.cfg.train.precision)
    scores, seconds, tables = {}, {}, {}
    for name, views in (("tta", list(row["tta"])), ("no_tta", [])):
        t0 = time.perf_counter()
        probs = Pipeline.of_runs([run], fabric).predict_files(oof["image_path"].tolist(), progress=False, tta=views)[0]
        seconds[name] = time.perf_counter() - t0
        scores[name] = model_metrics(probs, oof["label"].to_numpy(), run.cfg.model.tasks, run.cfg.data.mask_codes())
        tables[name] = oof.assign(**dict(zip(PROB_COLUMNS, probs.T)))
    report = {"tta_of": row["tta_of"], "tta": list(row["tta"]), "run_dir": source["run_dir"],
              "images": len(oof), "predict_s": seconds["tta"], "predict_s_no_tta": seconds["no_tta"],
              # The control: these weights without TTA, which should match the source row's F1.
              "oof_f1_no_tta": scores["no_tta"]["f1"], "source_oof_f1": source["oof_f1"],
              "machine": common.machine(),
              **common.oof_intervals(tables["tta"], run.cfg.model.tasks, run.cfg.data.mask_codes())}
    if "train_s" in source:
        report["train_s"] = source["train_s"]
    return scores["tta"], report


def _scored_row(row: dict, out_dir: Path) -> dict:
    """The JSON of a row scored from other rows' runs (ensemble, tuned age cut points, or TTA)."""
    from maskstatus.scoring.age_cuts import tune_age_cuts
    from maskstatus.infer.ensemble import ensemble_oof

    if "ensemble" in row:
        sources = [_source(out_dir, name) for name in row["ensemble"]]
        oof, metrics = ensemble_oof([s["run_dir"] for s in sources])
        report = {"members": row["ensemble"], "run_dirs": [s["run_dir"] for s in sources],
                  "machine": sources[0]["machine"], **common.oof_intervals(oof)}
        if all("train_s" in s for s in sources):  # every member trains: the ensemble costs their sum
            report["train_s"] = sum(s["train_s"] for s in sources)
    elif "tta_of" in row:
        metrics, report = _tta_row(row, out_dir)
    else:
        source = _source(out_dir, row["tune_age_of"])
        tuned = tune_age_cuts(source["run_dir"], write=False)
        metrics = tuned["cross_fitted"]
        report = {"tuned_from": row["tune_age_of"], "run_dir": source["run_dir"], "age_cuts": tuned,
                  "machine": source["machine"], **common.oof_intervals(_cross_fitted_oof(source["run_dir"]))}
        if "train_s" in source:
            report["train_s"] = source["train_s"]
    report.update({"oof_f1": metrics["f1"], "oof_acc": metrics["acc"], "oof_mask_f1": metrics["mask_f1"],
                   "oof_gender_f1": metrics["gender_f1"], "oof_age_f1": metrics["age_f1"],
                   "commit": common.commit(), "command": "python benchmarks/ablation.py --rows " + repr(row["name"])})
    return report


def _cross_fitted_oof(run_dir: str):
    """An age-regression run's OOF table at cut points cross-fitted the way ``tune_age_cuts`` scores them."""
    from maskstatus.scoring.age_cuts import cross_fitted_oof
    from maskstatus.scoring.oof import member_config, read_oof

    return cross_fitted_oof(read_oof(run_dir), member_config(run_dir).data.age.thresholds())


def _kept_oof(row: dict, r: dict):
    """The OOF table a measured row was scored on, rebuilt from its run folders; None if they are gone.

    With the row's model's tasks and mask states, to score it as it was scored. A TTA row's
    predictions were made on the fly and never kept.
    """
    from maskstatus.infer.ensemble import ensemble_oof
    from maskstatus.scoring.oof import member_config, oof_path, read_oof

    if "tta_of" in row:
        return None
    dirs = r.get("run_dirs") or [r.get("run_dir")]
    if not all(d and (Path(d) / "predictions" / "oof.csv").is_file() for d in dirs):
        return None
    if "ensemble" in row:
        return ensemble_oof(dirs)[0], {}
    if "tune_age_of" in row:
        return _cross_fitted_oof(dirs[0]), {}
    cfg = member_config(dirs[0])
    # The CSV, not the folder: cut points tuned on the run later must not change the trained row.
    return read_oof(oof_path(dirs[0])), {"tasks": cfg.model.tasks, "mask_states": cfg.data.mask_codes()}


def add_intervals(plan: dict, out_dir: Path) -> list[str]:
    """Add the intervals to measured rows' JSONs that lack them, where the row's OOF is at hand; the names done."""
    done = []
    for row in plan["rows"]:
        path = out_dir / f"{slug(row['name'])}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        if "oof_f1_ci" in r:
            continue
        kept = _kept_oof(row, r)
        if kept is None:
            continue
        oof, scope = kept
        intervals = common.oof_intervals(oof, **scope)
        point = _point_f1(oof, scope)
        if r["oof_f1"] is not None and not math.isnan(r["oof_f1"]) and abs(point - r["oof_f1"]) > 1e-3:
            # The run folder no longer holds what the row measured (trained again, relabelled...).
            print(f"{row['name']}: its run's OOF F1 {point:.4f} is not the row's {r['oof_f1']:.4f}; no interval added",
                  file=sys.stderr)
            continue
        path.write_text(json.dumps({**r, **intervals}, indent=2) + "\n")
        done.append(row["name"])
    return done


def _point_f1(oof, scope: dict) -> float:
    from maskstatus.labels import PROB_COLUMNS
    from maskstatus.scoring.metrics import model_metrics

    return model_metrics(oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy(), **scope)["f1"]


def _row_config(plan: dict, row: dict, data: Path, extra: list[str] = ()):
    from maskstatus.config import load_config

    return load_config(REPO / row.get("recipe", plan["reference"]),
                       [f"data.root={data}", *row.get("overrides", []), *extra])


def reference_folds(plan: dict, data: Path, runs: Path) -> Path:
    """The first row's person folds, written under ``runs`` for the rows of this invocation to share.

    A row that changes labels (label fixes, pseudo labels) would otherwise get other folds from the
    stratified split, and so another held-out fold: its F1 would not be comparable.
    """
    from maskstatus.data.folds import make_folds
    from maskstatus.data.tables import load_train_table

    # Fold assignment needs ids and labels only: skip decoding every image.
    cfg = _row_config(plan, plan["rows"][0], data, ["data.check_images=false"])
    folds = make_folds(load_train_table(cfg), cfg.split.folds, cfg.split.seed)
    path = runs / "folds.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(path, index=False)
    return path


def _trains(row: dict) -> bool:
    return not ("ensemble" in row or "tune_age_of" in row or "tta_of" in row or "loop_result" in row)


def _row_json(row: dict, out_dir: Path) -> Path:
    """Where a row's result lives: its own JSON under ``out_dir``, or the loop result it shows."""
    # Beside the ablation folder: benchmarks/results/FILE for the default benchmarks/results/ablation.
    return out_dir.parent / row["loop_result"] if "loop_result" in row else out_dir / f"{slug(row['name'])}.json"


def _shares_reference_split(plan: dict, row: dict, data: Path) -> bool:
    # A row whose split differs on purpose (an image split, another fold count or seed) keeps its own.
    ref, cfg = _row_config(plan, plan["rows"][0], data).split, _row_config(plan, row, data).split
    return cfg.folds_file is None and ref.by == "person" and (cfg.by, cfg.folds, cfg.seed) == (ref.by, ref.folds, ref.seed)


def run_row(plan: dict, row: dict, out_dir: Path, data: Path, epochs: int | None, runs: Path,
            folds: Path | None = None) -> Path:
    """Measure one row; a trained row that keeps the reference's split is held to ``folds``."""
    result = out_dir / f"{slug(row['name'])}.json"
    if not _trains(row):
        result.write_text(json.dumps(_scored_row(row, out_dir), indent=2) + "\n")
        return result
    folds_file = [f"split.folds_file={folds}"] if folds is not None and _shares_reference_split(plan, row, data) else []
    pseudo = []
    if "pseudo_from" in row:
        pseudo = [_pseudo_override(row, out_dir, data)]
    elif "pseudo_teachers" in row:
        pseudo = _fold_teachers_overrides(row, plan["fold"], out_dir, data, folds)
        folds_file = []  # the teachers' folds, checked equal to the reference's, come with the overrides
    config = row.get("recipe", plan["reference"])
    args = ["--config", str(REPO / config), "--fold", str(plan["fold"]), "--out", str(result),
            "--submission", str(out_dir / "submissions" / f"{slug(row['name'])}.csv"), "--runs", str(runs),
            "--data", str(data)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if "distill" in row or "label_loop" in row:
        if folds is None:
            folds = reference_folds(plan, data, runs)
        args += ["--folds-file", str(folds)]
    if "distill" in row:
        import distill

        distill.main([*args, "--weight", str(row["distill"].get("weight", 0.5)), *row.get("overrides", []), *pseudo])
    elif "label_loop" in row:
        import label_loop

        label_loop.main([*args, "--oof", str(row["label_loop"]["oof"]), *row.get("overrides", []), *pseudo])
    else:
        proxy.main([*args, *row.get("overrides", []), *pseudo, *folds_file])
    return result


def _pseudo_override(row: dict, out_dir: Path, data: Path) -> str:
    """``data.pseudo=...`` from the eval predictions of the measured row ``row['pseudo_from']`` (the teacher).

    The teacher's run predicts the eval images again (its probabilities file carries its predicted
    years where it regresses the age); ``row['pseudo']`` holds the selection (threshold, task_thresholds).
    """
    from maskstatus.infer.predict import predict

    teacher = _source(out_dir, row["pseudo_from"])
    _, probs = predict([teacher["run_dir"]], data / "eval",
                       out_dir / "submissions" / f"{slug(row['name'])}-teacher.csv", progress=False)
    return "data.pseudo=" + json.dumps({"probs": str(probs), **row.get("pseudo", {})})


def _fold_teachers_overrides(row: dict, fold: int, out_dir: Path, data: Path, folds: Path | None) -> list[str]:
    """``data.pseudo`` from the vote of the teacher CVs' fold models, and ``split.folds_file`` of their folds."""
    from maskstatus.train.cv import sorted_folds
    from maskstatus.train.pseudo_label import FOLDS_COPY, fold_teacher_probs

    teach_dir = out_dir / "submissions" / f"{slug(row['name'])}-teachers"
    [probs] = fold_teacher_probs(row["pseudo_teachers"], data / "eval", teach_dir, folds=[fold], progress=False)
    teacher_folds = teach_dir / FOLDS_COPY
    if folds is not None:
        if not sorted_folds(folds).equals(sorted_folds(teacher_folds)):
            raise ValueError(f"row {row['name']!r}: the teachers' folds ({teacher_folds}) are not the reference's "
                             f"({folds}); its fold {fold} would hold out other people")
    return ["data.pseudo=" + json.dumps({"probs": str(probs), **row.get("pseudo", {})}),
            f"split.folds_file={teacher_folds}"]


def _num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _ci(r: dict, f1) -> str:
    if "oof_f1_ci" not in r:
        return "no OOF kept"
    ci = r["oof_f1_ci"]
    return "—" if ci is None or f1 is None else f"{ci[0]:.3f}–{ci[1]:.3f}"


def render(plan: dict, out_dir: Path) -> str:
    lines = [
        "# Ablation on the proxy data",
        "",
        f"Reference: `{plan['reference']}`, fold {plan['fold']} of 5 (person-grouped; every row that keeps that split holds out the same people), "
        "same epoch budget. Each row switches one part on (or swaps the whole recipe). "
        "F1 columns are out-of-fold macro F1 on the held-out fold; Δ is against the reference row. "
        "Train time is the training loop only, on the machine named in the row's JSON; rows built on other rows' "
        "weights (TTA, tuned cuts, ensembles) show the training time of the models they use. "
        "Each row is a single fold and seed: a small difference may not hold on other folds.",
        "",
        "90 % CI is the person-bootstrap interval of the row's OOF macro F1 (the held-out people resampled with "
        "replacement, each with all their photos, 1,000 times); *in ref. CI* says whether the row's F1 lies inside "
        "the reference row's interval, where a row that does is not told apart from the reference by this fold. "
        "Rows measured before intervals were recorded, whose run folders are gone, show \"no OOF kept\"; "
        "*in ref. CI* stays blank while the reference has no interval.",
        "",
        "| row | overrides | OOF macro F1 | 90 % CI | Δ | in ref. CI | mask F1 | gender F1 | age F1 | train min | machine "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = ref_ci = None
    ref_path = out_dir / f"{slug(plan['rows'][0]['name'])}.json"
    if ref_path.is_file():
        ref_json = json.loads(ref_path.read_text())
        ref, ref_ci = ref_json["oof_f1"], ref_json.get("oof_f1_ci")
    for row in plan["rows"]:
        path = _row_json(row, out_dir)
        what = (row.get("recipe")
                or (" + ".join(row["ensemble"]) if "ensemble" in row else "")
                or (f"cut points of '{row['tune_age_of']}' tuned" if "tune_age_of" in row else "")
                or (f"'{row['tta_of']}' predicted with `tta={row['tta']}`" if "tta_of" in row else "")
                or " ".join(f"`{o}`" for o in row.get("overrides", [])) or "—")
        if "distill" in row:
            what += f", distilled from a teacher CV over the other folds (weight {row['distill'].get('weight', 0.5)})"
        if "label_loop" in row:
            what += ", trained on the label-error finder's relabel draft (held-out people's fixes dropped)"
        if "loop_result" in row:
            what = ("every find-label-errors suggestion accepted, the pooled CV trained again "
                    f"(`benchmarks/results/{row['loop_result']}`)")
        if "pseudo_from" in row:
            what += f", pseudo labels from the eval predictions of '{row['pseudo_from']}'"
        if "pseudo_teachers" in row:
            what += f", pseudo labels from the vote of the fold's models of {len(row['pseudo_teachers'])} teacher CVs"
        note = row.get("note", "")
        if not path.is_file():
            lines.append(f"| {row['name']} | {what} | not run yet | | | | | | | | | {note} |")
            continue
        r = json.loads(path.read_text())
        # A per-task model or cascade expert has no 18-class F1 (NaN, or null in JSON): shown as a dash.
        f1 = r["oof_f1"] if r["oof_f1"] is not None and not math.isnan(r["oof_f1"]) else None
        delta = "" if ref is None or f1 is None or row is plan["rows"][0] else f"{f1 - ref:+.3f}"
        if "loop_result" in row:  # pooled over every fold: its change is paired with the CV it came from
            gain, gain_ci = r.get("f1_gain"), r.get("f1_gain_ci")
            delta = "" if gain is None else f"{gain:+.3f} paired" + (
                f" ({gain_ci[0]:+.3f} to {gain_ci[1]:+.3f})" if gain_ci else "")
        # A distilled row's budget is its teachers' training and its own.
        train_s = r.get("train_s_whole", r.get("train_s"))
        train_min = f"{train_s / 60:.1f}" if train_s is not None else ""
        machine = r["machine"].get("gpu") or _cpu_name(r["machine"])
        ci = _ci(r, f1)
        inside = ("" if ref_ci is None or f1 is None or row is plan["rows"][0] or "loop_result" in row
                  else "yes" if ref_ci[0] <= f1 <= ref_ci[1] else "no")
        lines.append(
            f"| {row['name']} | {what} | {_num(f1)} | {ci} | {delta} | {inside} | {_num(r['oof_mask_f1'])} | "
            f"{_num(r['oof_gender_f1'])} | {_num(r['oof_age_f1'])} | {train_min} | {machine} | {note} |"
        )
    lines += [
        "",
        "Reproduce (rows already measured are skipped; delete a JSON to measure it again):",
        "",
        "```bash",
        "python benchmarks/ablation.py",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, default=HERE / "ablation.yaml", help="rows to run (default benchmarks/ablation.yaml)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ablation", help="folder of per-row JSONs")
    p.add_argument("--table", type=Path, default=HERE / "results" / "ablation.md", help="markdown table to write")
    p.add_argument("--rows", action="append", default=None, help="only this row (repeatable)")
    p.add_argument("--data", type=Path, default=None, help="maskproxy folder (default: ../shared/data/maskproxy)")
    p.add_argument("--epochs", type=int, default=None, help="override every row's train.epochs")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "ablation", help="where the run folders go")
    p.add_argument("--table-only", action="store_true", help="only rewrite the table from the JSONs present")
    args = p.parse_args(argv)

    plan = load_plan(args.plan)
    args.out.mkdir(parents=True, exist_ok=True)
    known = {r["name"] for r in plan["rows"]}
    unknown = sorted(set(args.rows or []) - known)
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows are {sorted(known)}")
    if not args.table_only:
        # A loop_result row is measured by benchmarks/label_loop_cv.py, not here.
        todo = [row for row in plan["rows"] if (not args.rows or row["name"] in args.rows)
                and "loop_result" not in row and not (args.out / f"{slug(row['name'])}.json").is_file()]
        data = common.DEFAULT_DATA if args.data is None else args.data
        folds = reference_folds(plan, data, args.runs) if any(_trains(row) for row in todo) else None
        for row in todo:
            run_row(plan, row, args.out, data, args.epochs, args.runs, folds)
            args.table.write_text(render(plan, args.out))  # after every row, so a stop loses nothing
    for name in add_intervals(plan, args.out):
        print(f"{name}: interval added from its run's OOF predictions")
    args.table.write_text(render(plan, args.out))
    print(args.table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
