"""Does grouping the photos of one person help? One trained run's held-out fold, with and without it.

    python benchmarks/group_people.py --run RUN \
        --out benchmarks/results/group-people-fold0.json

Re-infers the run's held-out fold (its folds.csv, its split.fold) with its best
weights once, keeping the face embeddings, and scores the predictions as they are
and after ``predict.group_people`` (same weights, same images): OOF macro F1 and
task F1s with 90 % person-bootstrap intervals, and the paired interval of the
difference (the same resampled people for both). The clustering is checked against
the true people: the share of groups holding one person, of people split over
several groups, of people whose photos form exactly one group. Also times the
clustering on 12,600 embeddings (the eval set's size). Writes nothing into the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from maskstatus.scoring.bootstrap import person_bootstrap  # noqa: E402
from maskstatus.data.cache import ImageCache  # noqa: E402
from maskstatus.data.dataset import FaceDataset  # noqa: E402
from maskstatus.data.folds import attach_folds, read_folds  # noqa: E402
from maskstatus.data.transforms import build_transforms  # noqa: E402
from maskstatus.infer.evaluate import eval_loader, infer  # noqa: E402
from maskstatus.scoring.oof import read_oof  # noqa: E402
from maskstatus.infer.pipeline import load_run  # noqa: E402
from maskstatus.data.tables import load_train_table  # noqa: E402
from maskstatus.infer.tta import tta_views  # noqa: E402
from maskstatus.infer.grouping import cluster_people, group_people, region_embedding  # noqa: E402
from maskstatus.labels import PROB_COLUMNS  # noqa: E402
from maskstatus.scoring.metrics import compute_metrics  # noqa: E402
from maskstatus.models import model_data_config  # noqa: E402

logger = logging.getLogger("group_people")

KIND = "study"  # answered one question; its results stay as measured (benchmarks/README.md)


class PlainViewEmbeddings:
    """Collects the grouping layer's embeddings of the plain view (the first of each batch's TTA views)."""

    def __init__(self, module: torch.nn.Module, views: int, grouping) -> None:
        self.module, self.views, self.g = module, views, grouping
        self.calls, self.parts = 0, []

    def _hook(self, module, args, output) -> None:
        if self.calls % self.views == 0:
            self.parts.append(region_embedding(output, self.g.upper_fraction, self.g.columns).cpu())
        self.calls += 1

    def __enter__(self) -> "PlainViewEmbeddings":
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def purity(groups: np.ndarray, people: np.ndarray) -> dict:
    df = pd.DataFrame({"group": groups, "person": people})
    per_group = df.groupby("group")["person"].nunique()
    sizes = df.groupby("group").size()
    per_person = df.groupby("person")["group"].nunique()
    # A person is found whole when one group holds all their photos and nobody else's.
    whole = df.groupby("person")["group"].agg(lambda g: g.nunique() == 1 and sizes[g.iloc[0]] == len(g))
    return {
        "groups": int(len(sizes)),
        "group_sizes": {int(k): int(v) for k, v in sizes.value_counts().sort_index().items()},
        "groups_one_person": float((per_group == 1).mean()),
        "groups_of_2plus_one_person": float((per_group[sizes > 1] == 1).mean()),
        "people_split": float((per_person > 1).mean()),
        "people_found_whole": float(whole.mean()),
        "photos_with_another_person": float(df["group"].map(per_group > 1).mean()),
    }


def scored(probs: np.ndarray, labels: np.ndarray, people: np.ndarray) -> tuple[dict, object]:
    interval = person_bootstrap(probs, labels, people)
    out = {f"oof_{k}": v for k, v in interval.point.items()}
    out.update({f"oof_{k}_ci": list(interval.ci[k]) for k in ("f1", "mask_f1", "gender_f1", "age_f1", "acc")})
    return out, interval


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="trained run folder (config.yaml, folds.csv, checkpoints/)")
    p.add_argument("--out", required=True, type=Path, help="result JSON")
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="folder holding train/ (default: maskproxy)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("overrides", nargs="*", metavar="predict.grouping.KEY=VALUE",
                   help="grouping settings to try instead of the defaults, e.g. predict.grouping.min_similarity=0.6")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    code_version = common.commit()

    run = load_run(args.run)
    cfg = run.cfg
    if args.overrides:
        from maskstatus.config import load_config

        bad = [o for o in args.overrides if not o.startswith("predict.grouping.")]
        if bad:
            raise SystemExit(f"only predict.grouping.* may be overridden, got {bad}")
        cfg = load_config(args.run / "config.yaml", args.overrides)
    g = cfg.predict.grouping
    table_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": args.data, "check_images": False})})
    table = attach_folds(load_train_table(table_cfg), read_folds(args.run / "folds.csv"), cfg.split.folds)
    held = table[table["fold"] == cfg.split.fold].reset_index(drop=True)
    logger.info("fold %d: %d images of %d people", cfg.split.fold, len(held), held["person_id"].nunique())

    cache = ImageCache(held["image_path"].tolist(), size=tuple(cfg.cache.size), mode="memory",
                       threads=cfg.cache.decode_threads, progress=False).fill()
    norm = model_data_config(run.model)
    dataset = FaceDataset(cache, np.arange(len(held)), build_transforms(cfg.transforms.eval, norm["mean"], norm["std"]))
    fabric = Fabric(accelerator="auto", devices=1, precision=cfg.train.precision)
    model = run.model.to(memory_format=torch.channels_last) if cfg.train.channels_last else run.model
    model = fabric.setup_module(model)
    collector = PlainViewEmbeddings(run.model.backbone.get_submodule(g.layer), len(tta_views(cfg.predict.tta)), g)
    t0 = time.perf_counter()
    with collector:
        rows, probs, _, years = infer(fabric, model, eval_loader(dataset, args.batch_size, 0, fabric),
                                      tta=cfg.predict.tta, age_cuts=run.age_cuts)
    infer_s = time.perf_counter() - t0
    embeddings = torch.cat(collector.parts).numpy()
    assert np.array_equal(rows, np.arange(len(held))) and len(embeddings) == len(held)

    t0 = time.perf_counter()
    grouped = group_people(probs, embeddings, g.max_size, g.min_similarity, g.neighbors, years, run.age_cuts)
    group_s = time.perf_counter() - t0

    labels, people = held["label"].to_numpy(), held["person_id"].astype(str).to_numpy()
    plain, plain_ci = scored(probs, labels, people)
    with_groups, grouped_ci = scored(grouped.probs, labels, people)
    # The same seed and people draw the same replicates for both: the difference's interval is paired.
    diff = {k: grouped_ci.replicates[k] - plain_ci.replicates[k] for k in ("f1", "gender_f1", "age_f1")}
    paired = {f"{k}_gain": grouped_ci.point[k] - plain_ci.point[k] for k in diff}
    paired.update({f"{k}_gain_ci": np.quantile(v, [0.05, 0.95]).tolist() for k, v in diff.items()})
    paired["f1_gain_share_of_replicates_above_0"] = float((diff["f1"] > 0).mean())

    # Control: the same weights without grouping should reproduce the run's own OOF predictions.
    oof = read_oof(args.run / "predictions" / "oof.csv").set_index("image_path").loc[held["image_path"]]
    control_f1 = compute_metrics(oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy())["f1"]

    # Eval-sized timing: 12,600 embeddings drawn from these with a little noise (the eval set's size).
    rng = np.random.default_rng(0)
    big = embeddings[rng.integers(0, len(embeddings), 12600)]
    big = big + 0.05 * big.std() * rng.normal(size=big.shape)
    t0 = time.perf_counter()
    cluster_people(big, g.max_size, g.min_similarity, g.neighbors)
    cluster_12600_s = time.perf_counter() - t0

    report = {
        "run": str(args.run),
        "config_name": cfg.name,
        "fold": cfg.split.fold,
        "images": len(held),
        "people": int(held["person_id"].nunique()),
        "grouping": g.model_dump(),
        "without_grouping": plain,
        "with_grouping": with_groups,
        "paired": paired,
        "clustering": purity(grouped.groups, people),
        "control_run_oof_f1": control_f1,
        "infer_s": infer_s,
        "group_s": group_s,
        "cluster_12600_embeddings_s": cluster_12600_s,
        "embedding_dim": int(embeddings.shape[1]),
        "wall_s": time.perf_counter() - started,
        "machine": common.machine(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "commit": code_version,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "run_configs": common.run_configs(args.run),
    }
    common.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
