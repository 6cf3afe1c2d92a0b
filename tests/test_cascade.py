"""Cascade: gender/age experts trained on faces of some mask states, weighed by the mask model's probabilities."""

import numpy as np
import pandas as pd
import pytest

from maskstatus.config import ConfigError, load_config
from maskstatus.infer.ensemble import combine_probs, ensemble_oof
from maskstatus.scoring.oof import read_oof
from maskstatus.infer.predict import predict
from maskstatus.data.tables import load_train_table
from maskstatus.train.trainer import train
from maskstatus.labels import MASK_NAMES, PROB_COLUMNS, TASKS, combine_task_probs, split_class_probs
from maskstatus.scoring.metrics import model_metrics
from maskstatus.runs import RunDir

MASKED = ["wear", "incorrect"]


def test_expert_config_is_checked():
    cfg = load_config(None, ["data.mask_states=[not_wear, wear]", "model.tasks=[gender, age]"])
    assert cfg.data.mask_states == ["wear", "not_wear"] and cfg.data.mask_codes() == [0, 2]
    assert load_config(None).data.mask_codes() == [0, 1, 2]
    with pytest.raises(ConfigError, match="cannot predict the mask"):
        load_config(None, ["data.mask_states=[not_wear]"])
    with pytest.raises(ConfigError, match="cannot predict the mask"):
        load_config(None, ["data.mask_states=[wear]", "model.head=single"])
    with pytest.raises(ConfigError, match="data.mask_states"):
        load_config(None, ["data.mask_states=[]", "model.tasks=[gender]"])
    with pytest.raises(ConfigError, match="data.mask_states"):
        load_config(None, ["data.mask_states=[hat]", "model.tasks=[gender]"])


def _random_marginals(rng, n):
    return {t: rng.dirichlet(np.ones(k), n) for t, k in TASKS.items()}


def test_experts_are_weighed_by_the_mask_probability():
    rng = np.random.default_rng(0)
    n = 6
    mask_model = _random_marginals(rng, n)
    masked, unmasked = _random_marginals(rng, n), _random_marginals(rng, n)
    members = [combine_task_probs({"mask": mask_model["mask"]}),
               combine_task_probs({t: masked[t] for t in ("gender", "age")}),
               combine_task_probs({t: unmasked[t] for t in ("gender", "age")})]
    got = combine_probs(members, member_tasks=[["mask"], ["gender", "age"], ["gender", "age"]],
                        member_states=[MASK_NAMES, MASKED, ["not_wear"]])
    joint = got.reshape(n, 3, 2, 3)
    for m, expert in enumerate([masked, masked, unmasked]):
        expected = mask_model["mask"][:, m, None, None] * expert["gender"][:, :, None] * expert["age"][:, None, :]
        np.testing.assert_allclose(joint[:, m], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    # The mask marginal is the mask model's; the gender marginal mixes the experts by the mask probability.
    np.testing.assert_allclose(split_class_probs(got)["mask"], mask_model["mask"], rtol=1e-5)
    mixed = (mask_model["mask"][:, :2].sum(1, keepdims=True) * masked["gender"]
             + mask_model["mask"][:, 2:] * unmasked["gender"])
    np.testing.assert_allclose(split_class_probs(got)["gender"], mixed, rtol=1e-5)


def test_a_full_member_joins_the_experts_of_every_state():
    rng = np.random.default_rng(1)
    n = 4
    full, expert = _random_marginals(rng, n), _random_marginals(rng, n)
    members = [combine_task_probs(full), combine_task_probs({t: expert[t] for t in ("gender", "age")})]
    got = combine_probs(members, weights=[1, 3], member_tasks=[list(TASKS), ["gender", "age"]],
                        member_states=[MASK_NAMES, ["not_wear"]]).reshape(n, 3, 2, 3)
    # wear faces: the full model alone; not_wear faces: 1:3 weighted with the expert.
    np.testing.assert_allclose(got[:, 0], full["mask"][:, 0, None, None] * full["gender"][:, :, None]
                               * full["age"][:, None, :], rtol=1e-5)
    g = 0.25 * full["gender"] + 0.75 * expert["gender"]
    a = 0.25 * full["age"] + 0.75 * expert["age"]
    np.testing.assert_allclose(got[:, 2], full["mask"][:, 2, None, None] * g[:, :, None] * a[:, None, :], rtol=1e-5)


def test_a_state_without_an_expert_is_uniform_and_warned(caplog):
    rng = np.random.default_rng(2)
    mask_model, masked = _random_marginals(rng, 3), _random_marginals(rng, 3)
    got = combine_probs([combine_task_probs({"mask": mask_model["mask"]}),
                         combine_task_probs({"gender": masked["gender"], "age": masked["age"]})],
                        member_tasks=[["mask"], ["gender", "age"]], member_states=[MASK_NAMES, MASKED])
    uniform = np.broadcast_to(mask_model["mask"][:, 2, None, None] / 6, (3, 2, 3))
    np.testing.assert_allclose(got.reshape(3, 3, 2, 3)[:, 2], uniform, rtol=1e-5)
    assert "'gender' task of not_wear faces" in caplog.text and "'age' task of not_wear faces" in caplog.text
    with pytest.raises(ValueError, match="soft voting"):
        combine_probs([got, got], vote="hard", member_tasks=[list(TASKS)] * 2, member_states=[MASK_NAMES, MASKED])


def test_expert_scores_only_its_mask_states():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 18, 60)
    probs = rng.dirichlet(np.ones(18), 60)
    got = model_metrics(probs, labels, ["gender", "age"], [2])
    keep = labels // 6 == 2
    ref = model_metrics(probs[keep], labels[keep], ["gender", "age"])
    assert got["gender_f1"] == ref["gender_f1"] and got["score"] == ref["score"]
    assert np.isnan(got["f1"]) and np.isnan(got["mask_f1"])


@pytest.fixture(scope="module")
def cascade_runs(demo_data, tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("cascade")
    base = [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides, "train.epochs=1"]
    mask = train(load_config(None, [*base, "name=mask", "model.tasks=[mask]", "train.limit_train_batches=3"]))
    folds = str(RunDir(mask.run_dir).folds)
    experts = {
        name: train(load_config(None, [*base, f"name={name}", f"split.folds_file={folds}",
                                       "model.tasks=[gender, age]", f"data.mask_states=[{', '.join(states)}]"]))
        for name, states in (("masked", MASKED), ("unmasked", ["not_wear"]))
    }
    return mask, experts


def test_expert_trains_on_its_states_and_predicts_every_held_out_image(cascade_runs, demo_data, tiny_config):
    mask, experts = cascade_runs
    table = load_train_table(tiny_config())
    folds = pd.read_csv(RunDir(mask.run_dir).folds, dtype={"person_id": str})
    fold_of = table["person_id"].map(dict(zip(folds["person_id"], folds["fold"])))
    unmasked = RunDir(experts["unmasked"].run_dir)
    n_train = int(((fold_of != 0) & (table["stem"] == "normal")).sum())
    seen = int(pd.read_csv(unmasked.metrics)["train_images"].iloc[0])
    batch = 16
    assert seen == (n_train // batch) * batch if n_train >= batch else seen == n_train
    # Its OOF covers the whole held-out fold, every mask state, like the mask model's.
    oof, mask_oof = read_oof(unmasked.root), read_oof(mask.run_dir)
    assert len(oof) == len(mask_oof) == int((fold_of == 0).sum())
    assert set(oof["stem"]) == set(table["stem"])
    # Its validation score is on unmasked faces only.
    best = pd.read_csv(unmasked.metrics)["val_score"].max()
    keep = oof["stem"] == "normal"
    expected = model_metrics(oof.loc[keep, PROB_COLUMNS].to_numpy(), oof.loc[keep, "label"].to_numpy(),
                             ["gender", "age"], [2])["score"]
    assert best == pytest.approx(expected, abs=1e-6)


def test_cascade_oof_and_predict(cascade_runs, demo_data, tmp_path):
    mask, experts = cascade_runs
    dirs = [mask.run_dir, experts["masked"].run_dir, experts["unmasked"].run_dir]
    table, metrics = ensemble_oof(dirs)
    assert len(table) == len(read_oof(mask.run_dir))  # every member covers every held-out image
    oofs = [read_oof(d).set_index(["person_id", "stem"]).loc[table.set_index(["person_id", "stem"]).index]
            for d in dirs]
    expected = combine_probs([o[PROB_COLUMNS].to_numpy() for o in oofs],
                             member_tasks=[["mask"], ["gender", "age"], ["gender", "age"]],
                             member_states=[MASK_NAMES, MASKED, ["not_wear"]])
    np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy(), expected, rtol=1e-5, atol=1e-7)
    assert np.isfinite(metrics["f1"])
    _, probs_path = predict(dirs, demo_data.eval_dir, tmp_path / "cascade.csv", progress=False)
    probs = pd.read_csv(probs_path)[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # Without the unmasked expert, gender/age of unmasked faces is a guess: the probabilities change.
    _, partial = predict(dirs[:2], demo_data.eval_dir, tmp_path / "partial.csv", progress=False)
    assert not np.allclose(pd.read_csv(partial)[PROB_COLUMNS].to_numpy(), probs, atol=1e-4)
