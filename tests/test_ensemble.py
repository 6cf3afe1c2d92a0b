import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.cli import main
from maskstatus.infer.ensemble import combine_probs, ensemble_oof
from maskstatus.runs import expand_runs
from maskstatus.infer.predict import predict
from maskstatus.labels import PROB_COLUMNS
from maskstatus.labels import NUM_CLASSES
from maskstatus.scoring.metrics import compute_metrics

N = 40


def _oof(seed: int, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=n)
    df = pd.DataFrame({
        "person_id": [f"{i // 7:06d}" for i in range(n)],
        "stem": [f"mask{i % 7}" for i in range(n)],
        "image_path": [f"/x/{i}.jpg" for i in range(n)],
        "label": np.random.default_rng(0).integers(0, NUM_CLASSES, n),  # the same truth for every run
        "fold": np.arange(n) % 4,
    })
    return pd.concat([df, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)


def _write_run(root, df: pd.DataFrame):
    (root / "predictions").mkdir(parents=True)
    df.to_csv(root / "predictions" / "oof.csv", index=False)
    return root


def _probs(df: pd.DataFrame) -> np.ndarray:
    return df[PROB_COLUMNS].to_numpy()


def test_identical_runs_equal_the_run(tmp_path):
    a = _write_run(tmp_path / "a", _oof(1))
    single, m1 = ensemble_oof([a])
    both, m2 = ensemble_oof([a, a])
    np.testing.assert_allclose(_probs(both), _probs(_oof(1)), atol=1e-6)
    np.testing.assert_allclose(_probs(single), _probs(both))
    assert m1 == m2
    assert list(both.columns) == ["person_id", "stem", "image_path", "label", "fold", *PROB_COLUMNS]
    assert both["person_id"].tolist() == _oof(1)["person_id"].tolist()  # ids stay strings


def test_soft_vote_is_the_mean_and_weights_select(tmp_path):
    a, b = _write_run(tmp_path / "a", _oof(1)), _write_run(tmp_path / "b", _oof(2))
    pa, pb = _probs(_oof(1)), _probs(_oof(2))
    mean, metrics = ensemble_oof([a, b])
    np.testing.assert_allclose(_probs(mean), (pa + pb) / 2, atol=1e-6)
    assert metrics == compute_metrics(_probs(mean), _oof(1)["label"].to_numpy())
    np.testing.assert_allclose(_probs(ensemble_oof([a, b], weights=[1, 0])[0]), pa, atol=1e-6)
    np.testing.assert_allclose(_probs(ensemble_oof([a, b], weights=[1, 3])[0]), 0.25 * pa + 0.75 * pb, atol=1e-6)


def test_rows_are_aligned_on_person_and_stem(tmp_path, caplog):
    a_df, b_df = _oof(1), _oof(2)
    a = _write_run(tmp_path / "a", a_df)
    b = _write_run(tmp_path / "b", b_df.iloc[::-1].iloc[3:])  # shuffled and three images missing
    with caplog.at_level(logging.WARNING):
        out, _ = ensemble_oof([a, b])
    assert len(out) == N - 3 and "3 of 40" in caplog.text
    np.testing.assert_allclose(_probs(out), (_probs(a_df) + _probs(b_df))[: N - 3] / 2, atol=1e-6)


def test_predicted_years_are_averaged_as_predict_averages_them(tmp_path):
    def with_years(seed: int, mean: float, sigma: float) -> pd.DataFrame:
        return _oof(seed).assign(age_mean=np.full(N, mean), age_sigma=np.full(N, sigma))

    a, b = _write_run(tmp_path / "a", with_years(1, 30.0, 2.0)), _write_run(tmp_path / "b", with_years(2, 50.0, 4.0))
    plain = _write_run(tmp_path / "c", _oof(3))  # an age-group model: no years
    out, _ = ensemble_oof([a, b, plain], weights=[1, 1, 2])
    assert (out["age_mean"] == 40.0).all() and (out["age_sigma"] == 3.0).all()  # plain mean, as in predict
    assert "age_mean" not in ensemble_oof([plain])[0].columns


def test_cv_folder_oof_at_top(tmp_path):
    cv = tmp_path / "cv"
    cv.mkdir()
    _oof(1).to_csv(cv / "oof.csv", index=False)
    _write_run(cv / "fold0-x", _oof(5, n=7))  # its own file must not be read in place of the pooled one
    np.testing.assert_allclose(_probs(ensemble_oof([cv])[0]), _probs(_oof(1)), atol=1e-6)


def test_hard_vote_picks_the_majority():
    def one(cls, conf=0.9):
        p = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
        p[cls] = conf
        return p

    # image 0: 3 and 3 beat a very confident 5; image 1: three different classes, 7 has the most probability
    runs = [np.stack([one(3, 0.4), one(1, 0.5)]), np.stack([one(3, 0.4), one(7, 0.6)]), np.stack([one(5, 1.0), one(2, 0.4)])]
    hard = combine_probs(runs, vote="hard")
    assert hard.argmax(1).tolist() == [3, 7]
    np.testing.assert_array_equal(hard.sum(1), 1.0)
    assert hard.max() == 1.0 and combine_probs(runs, vote="soft").argmax(1)[0] == 5
    # a weight can outvote the majority
    assert combine_probs(runs, weights=[1, 1, 3], vote="hard").argmax(1).tolist() == [5, 2]


def test_bad_weights_are_clear_errors(tmp_path):
    a, b = _write_run(tmp_path / "a", _oof(1)), _write_run(tmp_path / "b", _oof(2))
    with pytest.raises(ValueError, match="2 weight.*3 ensemble member"):
        ensemble_oof([a, b, a], weights=[1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        ensemble_oof([a, b], weights=[1, -1])
    with pytest.raises(ValueError, match="all be zero"):
        ensemble_oof([a, b], weights=[0, 0])
    with pytest.raises(FileNotFoundError, match="no out-of-fold"):
        ensemble_oof([a, tmp_path])


def _fake_run(root):
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text("name: x\n")
    (root / "checkpoints" / "best.pt").write_bytes(b"")
    return root


def test_expand_runs(tmp_path):
    cv = tmp_path / "cv"
    runs = [_fake_run(cv / "fold1-b"), _fake_run(cv / "fold0-a")]
    (cv / "notes").mkdir()
    (cv / "cv_config.yaml").write_text("name: x\n")
    single = _fake_run(tmp_path / "single")
    assert expand_runs([cv]) == sorted(runs)
    assert expand_runs([single, cv]) == [single, *sorted(runs)]
    with pytest.raises(FileNotFoundError, match="not a run folder.*notes"):
        expand_runs([cv / "notes"])


# --- eval side: two tiny untrained runs (training adds time, not coverage: test_predict trains) ---


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory, tiny_overrides):
    from maskstatus.config import load_config, save_config
    from maskstatus.models import create_model
    from maskstatus.runs import RunDir

    out = tmp_path_factory.mktemp("ens_runs")
    cfg = load_config(None, [f"data.root={demo_data.root}", *tiny_overrides])
    dirs = []
    for seed in (1, 2):
        run = RunDir(out / f"run{seed}").make()
        save_config(cfg, run.config)
        torch.manual_seed(seed)
        torch.save({"model": create_model(cfg.model).state_dict()}, run.best)
        _oof(seed).to_csv(run.predictions / "oof.csv", index=False)
        dirs.append(run.root)
    return dirs


def test_eval_ensembles(runs, demo_data, tmp_path):
    a, b = runs

    def probs_of(members, **kw):
        _, pp = predict(members, demo_data.eval_dir, tmp_path / f"{len(list(tmp_path.iterdir()))}.csv",
                        progress=False, **kw)
        return pd.read_csv(pp)[PROB_COLUMNS].to_numpy()

    pa, pb = probs_of([a]), probs_of([b])
    assert np.abs(pa - pb).max() > 1e-3
    np.testing.assert_allclose(probs_of([a, b], weights=[1, 3]), 0.25 * pa + 0.75 * pb, atol=2e-6)
    hard = probs_of([a, a, b], vote="hard")
    assert (hard.argmax(1) == pa.argmax(1)).all() and set(np.unique(hard)) == {0.0, 1.0}
    # a CV folder is the mean of its fold runs, as one member
    cv = tmp_path / "cv"
    shutil.copytree(a, cv / "fold0-a")
    shutil.copytree(b, cv / "fold1-b")
    np.testing.assert_allclose(probs_of([cv]), (pa + pb) / 2, atol=2e-6)
    with pytest.raises(ValueError, match="1 weight.*2 ensemble member"):
        predict([a, b], demo_data.eval_dir, tmp_path / "x.csv", weights=[1])


def test_ensemble_cli(runs, demo_data, tmp_path, capsys):
    a, b = map(str, runs)
    with pytest.raises(SystemExit) as e:
        main(["ensemble", "--help"])
    assert e.value.code == 0 and "--weights" in capsys.readouterr().out

    args = ["ensemble", "--run", a, "--run", a, "--out-oof", str(tmp_path / "oof.csv"),
            "--data", str(demo_data.eval_dir), "--out", str(tmp_path / "sub.csv"), "--tta", "hflip"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "OOF macro F1" in out and "age" in out and "submission:" in out
    oof = pd.read_csv(tmp_path / "oof.csv")
    np.testing.assert_allclose(_probs(oof), _probs(pd.read_csv(f"{a}/predictions/oof.csv")), atol=2e-6)
    assert (tmp_path / "sub.probs.csv").is_file()

    assert main(["ensemble", "--run", a, "--run", b, "--weights", "1,2,3"]) == 2
    assert "3 weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ensemble", "--run", a, "--weights", "1,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
