import pandas as pd
import pytest
import torch

from maskstatus.runs import atomic_save_torch, atomic_write_csv, load_checkpoint, new_run_dir, open_run_dir


def test_new_run_dirs_never_collide(tmp_path):
    a, b = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "x")
    assert a.root != b.root and a.checkpoints.is_dir() and b.plots.is_dir()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.csv"
    atomic_write_csv(pd.DataFrame({"a": [1]}), path)

    class Boom:
        def to_csv(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_csv(Boom(), path)
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left


def test_checkpoint_plain_data_weights_only(tmp_path):
    atomic_save_torch({"model": {"w": torch.ones(2)}, "epoch": 3, "rng": (1, 2)}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        open_run_dir(tmp_path)
