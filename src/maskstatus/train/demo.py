"""The main job on built-in data: draw demo data, train a tiny model, predict, score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config
from ..defaults import DEFAULT_SEED, DEMO_DIR, DEMO_PEOPLE

# The package's configs/: a link to the repository's configs/ in a checkout, a copy of it in the wheel.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@dataclass
class DemoResult:
    run_dir: Path
    submission: Path
    val_f1: float
    eval_f1: float
    eval_acc: float


def run_demo(
    out_dir: Path | str = DEMO_DIR, people: int = DEMO_PEOPLE, seed: int = DEFAULT_SEED, overrides: Sequence[str] = ()
) -> DemoResult:
    out_dir = Path(out_dir)
    # The overrides are checked before the data is drawn and torch and sklearn imported (seconds), so a typo is
    # answered at once.
    cfg = load_config(DEMO_CONFIG, [f"data.root={out_dir / 'data'}", f"output_dir={out_dir / 'runs'}", *overrides])
    from ..data.synthetic import make_demo_data, score_submission
    from ..infer.predict import predict
    from .trainer import train

    # The demo owns this folder: redraw it, so `make demo` can run again and again.
    data = make_demo_data(out_dir / "data", people=people, seed=seed, overwrite=True)
    result = train(cfg)
    submission = out_dir / "submission.csv"
    predict([result.run_dir], data.eval_dir, submission, progress=cfg.train.progress)
    scores = score_submission(submission, data.truth_csv)
    return DemoResult(result.run_dir, submission, result.best_f1, scores["f1"], scores["accuracy"])
