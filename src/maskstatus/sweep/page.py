"""The sweep page: index.html in the sweep folder, in the look of the report pages (analysis.html).

Trials table, optimisation history, every trial's per-epoch validation F1 (what the pruner judged), parameter
importance and the best trial's learning curves. Unlike the report pages, the pictures are PNG files in
``plots/`` beside the page, so the page and its pictures can be copied into a results folder and diffed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..analysis import html as H
from ..runs import METRICS, SweepDir
from ..scoring.metrics import plot_curves

GENERATOR = "maskstatus sweep"
STATE_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray"}


def _img(sweep: SweepDir, name: str, alt: str) -> str:
    return f'<img class="fig" alt="{H.esc(alt)}" src="{H.esc(sweep.plots.name)}/{H.esc(name)}">'


def _save(fig: Any, sweep: SweepDir, name: str) -> None:
    from ..runs import atomic_write

    sweep.plots.mkdir(parents=True, exist_ok=True)
    atomic_write(sweep.plots / name, lambda p: fig.savefig(p, format="png", dpi=90))


def _history(data: dict[str, Any], sweep: SweepDir) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [t for t in data["trials"] if t["value"] is not None or t["last_reported"] is not None]
    if not rows:
        return H.note("No trial has reported a score yet.")
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for state, colour in STATE_COLOURS.items():
        xs = [t["number"] for t in rows if t["state"] == state]
        ys = [t["value"] if t["value"] is not None else t["last_reported"] for t in rows if t["state"] == state]
        if xs:
            ax.scatter(xs, ys, color=colour, label=state.lower(), marker="x" if state != "COMPLETE" else "o")
    done = sorted((t["number"], t["value"]) for t in rows if t["value"] is not None)
    if done:
        best, xs, ys = -math.inf, [], []
        for number, value in done:
            best = max(best, value)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation macro F1")
    ax.set_title("optimisation history (pruned and failed: their last reported score)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sweep, "history.png")
    return _img(sweep, "history.png", "optimisation history")


def _intermediate(data: dict[str, Any], sweep: SweepDir) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [t for t in data["trials"] if t["intermediate"]]
    if not rows:
        return H.note("No trial has reported a per-epoch score yet.")
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for t in rows:
        steps = sorted(t["intermediate"], key=int)
        colour = STATE_COLOURS.get(t["state"], "tab:gray")
        ax.plot(
            [int(s) for s in steps],
            [t["intermediate"][s] for s in steps],
            color=colour,
            marker=".",
            ls="--" if t["state"] == "PRUNED" else "-",
            alpha=0.8,
        )
        ax.annotate(str(t["number"]), (int(steps[-1]), t["intermediate"][steps[-1]]), fontsize=7)
    ax.set_xlabel("epoch (fold with --cv)")
    ax.set_ylabel("validation macro F1")
    ax.set_title("each trial's reported scores (dashed: pruned there)", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, sweep, "intermediate.png")
    return _img(sweep, "intermediate.png", "per-epoch scores")


def _importance(data: dict[str, Any], sweep: SweepDir) -> str:
    from matplotlib.figure import Figure

    imp = data["importance"]
    if not imp:
        return H.note("Parameter importance needs at least two finished trials whose values differ.")
    names = sorted(imp, key=imp.get)
    fig = Figure(figsize=(7, 0.5 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's PED-ANOVA, normalised)")
    _save(fig, sweep, "importance.png")
    return _img(sweep, "importance.png", "parameter importance") + H.table(
        [[n, imp[n]] for n in reversed(names)], ["parameter", "importance"]
    )


def _best(data: dict[str, Any], sweep: SweepDir) -> str:
    best = data["best"]
    if best is None:
        return H.note("No trial has finished yet.")
    parts = [H.table([[k, _value(v)] for k, v in best["params"].items()], ["parameter", "value"])]
    parts.append(
        H.note(
            f"Trial {best['number']}: {best['value']:.4f}, run folder {best['run_dir']}; its config "
            f"with the base: {sweep.best.name} (maskstatus cv --config {sweep.best.name})."
        )
    )
    metrics = sweep.root / best["run_dir"] / METRICS if best["run_dir"] else None
    if metrics is not None and metrics.is_file():
        plot_curves(metrics, sweep.plots / "best-curves.png")
        parts.append(_img(sweep, "best-curves.png", "best trial's learning curves"))
    elif best["run_dir"]:
        parts.append(H.note("A CV trial: see each fold run's plots/curves.png in its folder."))
    return "".join(parts)


def _value(v: Any) -> str:
    """A drawn value as text: floats to 4 significant digits (0.30000000000000004 is 0.3)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trials(data: dict[str, Any]) -> str:
    keys = sorted({k for t in data["trials"] for k in t["params"]})
    rows = []
    for t in data["trials"]:
        score = t["value"] if t["value"] is not None else t["last_reported"]
        rows.append(
            [
                t["number"],
                t["state"].lower(),
                float("nan") if score is None else score,
                *[_value(t["params"].get(k, "")) for k in keys],
                t["epochs_run"],
                "" if t["wall_s"] is None else f"{t['wall_s']:.0f}",
                t["run_dir"] or "",
            ]
        )
    header = ["trial", "state", "score", *keys, "epochs", "wall s", "run folder"]
    return H.note("score: the trial's value; for a pruned trial its last reported score.") + H.table(
        rows, header, digits=4
    )


def render(data: dict[str, Any], sweep: SweepDir) -> str:
    counts, epochs = data["counts"], data["epochs"]
    best = data["best"]
    head = H.kpis(
        [
            ("trials", len(data["trials"])),
            ("finished", counts.get("COMPLETE", 0)),
            ("pruned", counts.get("PRUNED", 0)),
            ("failed", counts.get("FAIL", 0)),
            ("best score", "-" if best is None else f"{best['value']:.4f}"),
            ("epochs run / without pruning", f"{epochs['run_by_finished_or_pruned']} / {epochs['if_none_pruned']}"),
        ]
    ) + H.note(f"Objective: {data['objective']}, maximised.")
    sections = [
        H.Section("summary", "Summary", head),
        H.Section("trials", "Trials", _trials(data)),
        H.Section("history", "Optimisation history", _history(data, sweep) + _intermediate(data, sweep)),
        H.Section("importance", "Parameter importance", _importance(data, sweep)),
        H.Section("best", "Best trial", _best(data, sweep)),
    ]
    return H.page(f"Sweep {data['study']}", str(sweep.root), sections, generator=GENERATOR)


def write_page(data: dict[str, Any], sweep: SweepDir) -> Path:
    """Write index.html and its plots/ into the sweep folder from a summary (``results.summary``)."""
    return H.write_page(render(data, sweep), sweep.page)
