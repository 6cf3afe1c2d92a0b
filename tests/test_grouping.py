"""Grouping the photos of one person: clustering, consistent gender/age, and only pixels count."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.age import group_probs_np
from maskstatus.config import ConfigError, load_config
from maskstatus.infer.grouping import FeatureCapture, cluster_people, consistent_probs, group_people, region_embedding
from maskstatus.labels import PROB_COLUMNS, combine_task_probs, split_class_probs


def _people(n_people=40, per=7, dim=32, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    person = np.repeat(np.arange(n_people), per)
    return centres[person] + noise * rng.normal(size=(len(person), dim)), person


def _same_partition(a, b) -> bool:
    # Group numbers are arbitrary: compare which rows share a group.
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]))


def test_cluster_people_recovers_known_people():
    emb, person = _people()
    groups = cluster_people(emb, max_size=7, min_similarity=0.5, neighbors=10)
    assert _same_partition(groups, person)


def test_cluster_people_caps_group_size_and_keeps_strangers_apart():
    emb, person = _people(n_people=5, per=12)
    groups = cluster_people(emb, max_size=7)
    assert np.bincount(groups).max() <= 7
    # No group mixes people, though each person has more photos than fit in one group.
    assert all(len(set(person[groups == g])) == 1 for g in np.unique(groups))
    far = np.eye(20) * 10.0  # orthogonal after centring: nobody is similar enough
    assert len(np.unique(cluster_people(far, min_similarity=0.5))) == 20


def test_cluster_people_ignores_row_order():
    emb, person = _people(n_people=30, noise=0.4, seed=1)
    groups = cluster_people(emb)
    order = np.random.default_rng(0).permutation(len(emb))
    shuffled = cluster_people(emb[order])
    back = np.empty_like(shuffled)
    back[order] = shuffled
    assert _same_partition(back, groups)


def _task_probs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {t: rng.dirichlet(np.ones(k), n) for t, k in (("mask", 3), ("gender", 2), ("age", 3))}


def test_consistent_probs_average_gender_and_age_and_keep_the_mask():
    marg = _task_probs(6)
    probs = combine_task_probs(marg)
    groups = np.array([0, 0, 0, 1, 1, 2])  # row 5 alone
    out, years = consistent_probs(probs, groups)
    assert years is None
    got = split_class_probs(out)
    np.testing.assert_allclose(got["mask"], marg["mask"], atol=1e-12)
    np.testing.assert_allclose(got["gender"][:3], np.tile(marg["gender"][:3].mean(0), (3, 1)), atol=1e-12)
    np.testing.assert_allclose(got["age"][3:5], np.tile(marg["age"][3:5].mean(0), (2, 1)), atol=1e-12)
    np.testing.assert_array_equal(out[5], probs[5])  # alone: untouched


def test_consistent_probs_average_regression_years():
    marg = _task_probs(4, seed=1)
    years = np.array([[25.0, 3.0], [35.0, 5.0], [50.0, 4.0], [70.0, 6.0]])
    cuts = (29.5, 59.5)
    marg["age"] = group_probs_np(years[:, 0], years[:, 1], cuts)
    probs = combine_task_probs(marg)
    out, new_years = consistent_probs(probs, np.array([0, 0, 1, 2]), years, cuts)
    np.testing.assert_allclose(new_years[:2], [[30.0, 4.0], [30.0, 4.0]])
    np.testing.assert_array_equal(new_years[2:], years[2:])
    np.testing.assert_allclose(split_class_probs(out)["age"][:2], group_probs_np(np.array([30.0] * 2),
                                                                                 np.array([4.0] * 2), cuts))
    with pytest.raises(ValueError, match="cut points"):
        consistent_probs(probs, np.array([0, 0, 1, 2]), years)


def test_region_embedding_sees_only_the_upper_rows():
    fmap = torch.randn(2, 4, 6, 6)
    changed = fmap.clone()
    changed[:, :, 2:] = torch.randn(2, 4, 4, 6)  # the masked lower face differs
    assert torch.equal(region_embedding(fmap, 0.34, 3), region_embedding(changed, 0.34, 3))
    assert region_embedding(fmap, 0.34, 3).shape == (2, 12)
    assert not torch.equal(region_embedding(fmap, 1.0, 3), region_embedding(changed, 1.0, 3))
    with pytest.raises(ValueError, match="feature map"):
        region_embedding(torch.randn(2, 4), 0.5)


def test_grouping_config_is_off_by_default_and_validated():
    cfg = load_config(None, [])
    assert cfg.predict.group_people is False
    assert load_config(None, ["predict.group_people=true", "predict.grouping.max_size=5"]).predict.grouping.max_size == 5
    with pytest.raises(ConfigError, match="predict.grouping.radius"):
        load_config(None, ["predict.grouping.radius=3"])
    with pytest.raises(ConfigError, match="upper_fraction"):
        load_config(None, ["predict.grouping.upper_fraction=0"])


def _demo_photos(demo_data, tiny_overrides):
    from maskstatus.data.cache import ImageCache
    from maskstatus.data.dataset import FaceDataset
    from maskstatus.data.transforms import build_transforms
    from maskstatus.data.tables import load_train_table
    from maskstatus.models import create_model, model_data_config

    cfg = load_config(None, [f"data.root={demo_data.root}", *tiny_overrides, "data.check_images=false"])
    table = load_train_table(cfg)
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    cache = ImageCache(table["image_path"].tolist(), size=tuple(cfg.cache.size), mode="memory", progress=False).fill()
    norm = model_data_config(model)
    data = FaceDataset(cache, np.arange(len(table)), build_transforms(cfg.transforms.eval, norm["mean"], norm["std"]))
    return cfg, table, model, torch.stack([data[i]["image"] for i in range(len(data))])


def test_feature_capture_names_a_missing_layer(tiny_overrides):
    from maskstatus.models import create_model

    model = create_model(load_config(None, tiny_overrides).model)
    with pytest.raises(ValueError, match=r"predict.grouping.layer.*'blocks.9'.*blocks.3"):
        FeatureCapture(model, "blocks.9", 0.34, 3)


@pytest.mark.slow
def test_demo_photos_of_a_person_are_grouped_together(demo_data, tiny_overrides):
    # Even an untrained backbone's upper-face features tell the demo people apart.
    cfg, table, model, images = _demo_photos(demo_data, tiny_overrides)
    g = cfg.predict.grouping
    with torch.no_grad(), FeatureCapture(model, g.layer, g.upper_fraction, g.columns) as capture:
        model(images)
        emb = capture.pop().numpy()
    groups = cluster_people(emb, g.max_size, g.min_similarity, g.neighbors)
    df = pd.DataFrame({"group": groups, "person": table["person_id"].to_numpy()})
    people_per_group = df.groupby("group")["person"].nunique()
    groups_per_person = df.groupby("person")["group"].nunique()
    assert (people_per_group == 1).mean() >= 0.9
    assert (groups_per_person == 1).mean() >= 0.8
    # The lower face (mask) would mislead: the whole-image embedding groups worse.
    with torch.no_grad(), FeatureCapture(model, g.layer, 1.0, g.columns) as capture:
        model(images)
        whole = cluster_people(capture.pop().numpy(), g.max_size, g.min_similarity, g.neighbors)
    assert (pd.DataFrame({"group": whole, "person": df["person"]}).groupby("person")["group"].nunique() == 1).mean() \
        < (groups_per_person == 1).mean()


def _anonymous_copy(src_eval, dst, salt: str, order, add_metadata: bool):
    """The eval folder with new 40-hex names, rows in ``order``; with a JPEG comment naming the old file, or none."""
    info = pd.read_csv(src_eval / "info.csv", dtype=str)
    (dst / "images").mkdir(parents=True)
    names = {}
    for name in info["ImageID"]:
        new = hashlib.sha1((salt + name).encode()).hexdigest() + ".jpg"
        data = (src_eval / "images" / name).read_bytes()
        assert data[:2] == b"\xff\xd8"
        if add_metadata:  # a COM segment right after SOI: the pixels stay byte for byte the same
            text = f"source {name}".encode()
            data = data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]
        (dst / "images" / new).write_bytes(data)
        names[name] = new
    out = info.iloc[order].copy()
    out["ImageID"] = out["ImageID"].map(names)
    out.to_csv(dst / "info.csv", index=False)
    return names


@pytest.mark.slow
def test_grouped_predictions_ignore_names_row_order_and_metadata(demo_data, tiny_config, tmp_path):
    from maskstatus.infer.predict import predict
    from maskstatus.train.trainer import train

    # Trained with grouping on: validation groups too, so the OOF measures it.
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=2", "predict.group_people=true",
                            "model.age_output=years")).run_dir
    oof = pd.read_csv(run / "predictions" / "oof.csv")
    assert len(oof) > 0 and np.isfinite(oof[PROB_COLUMNS].to_numpy()).all()

    n = len(pd.read_csv(demo_data.eval_dir / "info.csv"))
    a_names = _anonymous_copy(demo_data.eval_dir, tmp_path / "a", "a", np.arange(n), add_metadata=True)
    b_names = _anonymous_copy(demo_data.eval_dir, tmp_path / "b", "b", np.random.default_rng(0).permutation(n),
                              add_metadata=False)

    def probs(folder, group=None):
        _, path = predict([run], folder, tmp_path / f"{folder.name}-{group}.csv", progress=False, group_people=group)
        return pd.read_csv(path).set_index("ImageID")[PROB_COLUMNS]

    a, b = probs(tmp_path / "a"), probs(tmp_path / "b")
    original = list(a_names)
    pa = a.loc[[a_names[x] for x in original]].to_numpy()
    pb = b.loc[[b_names[x] for x in original]].to_numpy()
    np.testing.assert_allclose(pa, pb, atol=1e-5)
    # Grouping did act: photos of a group now share their gender and age probabilities; the mask stays per photo.
    plain = probs(tmp_path / "a", group=False).loc[[a_names[x] for x in original]].to_numpy()
    distinct = [len(np.unique(np.round(split_class_probs(p)["gender"][:, 0], 5))) for p in (pa, plain)]
    assert distinct[0] <= distinct[1] // 3
    np.testing.assert_allclose(split_class_probs(pa)["mask"], split_class_probs(plain)["mask"], atol=1e-5)


def test_group_people_checks_lengths():
    with pytest.raises(ValueError, match="embeddings"):
        group_people(np.full((3, 18), 1 / 18), np.zeros((2, 4)))
