import numpy as np
import pandas as pd
import pytest
import torch
from lightning_fabric import Fabric
from torch import nn

from maskstatus.infer.evaluate import infer
from maskstatus.infer.predict import predict
from maskstatus.labels import PROB_COLUMNS
from maskstatus.train.trainer import train
from maskstatus.errors import UsageError
from maskstatus.infer.tta import TTA, average_view_probs, hflip, identity, shift, translate, tta_probs, tta_views
from maskstatus.labels import NUM_CLASSES, TASKS, combine_task_probs

C, H, W = 3, 8, 6


class TinyModel(nn.Module):
    """A linear model on the image; ``flip_invariant`` averages over the width first."""

    def __init__(self, head: str, flip_invariant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head, self.flip_invariant = head, flip_invariant
        in_features = C * H if flip_invariant else C * H * W
        self.fc = nn.Linear(in_features, NUM_CLASSES if head == "single" else sum(TASKS.values()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.flip_invariant:
            x = x.mean(dim=-1)
        logits = self.fc(x.flatten(1))
        if self.head == "single":
            return {"class": logits}
        return dict(zip(TASKS, logits.split(list(TASKS.values()), dim=1)))


def _infer(model: nn.Module, tta=()) -> np.ndarray:
    images = torch.randn(10, C, H, W, generator=torch.Generator().manual_seed(1))
    data = [{"image": images[i], "row": i} for i in range(len(images))]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    rows, probs, _, _ = infer(Fabric(accelerator="cpu", devices=1), model, loader, tta=tta)
    assert rows.tolist() == list(range(10))
    return probs


@pytest.mark.parametrize("head", ["single", "multitask"])
def test_flip_invariant_model_is_unchanged_by_hflip(head):
    model = TinyModel(head, flip_invariant=True)
    np.testing.assert_allclose(_infer(model, ["hflip"]), _infer(model), atol=1e-6)


@pytest.mark.parametrize("head", ["single", "multitask"])
def test_tta_changes_a_non_invariant_model_and_sums_to_one(head):
    model = TinyModel(head, flip_invariant=False)
    plain = _infer(model)
    for tta in (["hflip"], ["shift"], ["hflip", "shift"]):
        probs = _infer(model, tta)
        assert probs.shape == (10, NUM_CLASSES)
        assert np.abs(probs - plain).max() > 1e-4
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_views():
    x = torch.arange(2 * 3 * 50 * 25, dtype=torch.float32).reshape(2, 3, 50, 25)
    assert [v is identity for v in tta_views([])] == [True]
    assert len(tta_views(["hflip", "shift"])) == 6 and len(tta_views(["hflip", "hflip"])) == 2
    assert torch.equal(hflip(hflip(x)), x) and torch.equal(hflip(x)[..., 0], x[..., -1])
    # right by 2: columns move, the left edge column is repeated
    moved = translate(x, 0, 2)
    assert torch.equal(moved[..., 2:], x[..., :-2]) and torch.equal(moved[..., 0], x[..., 0])
    moved = translate(x, -3, 0)
    assert torch.equal(moved[..., :-3, :], x[..., 3:, :]) and torch.equal(moved[..., -1, :], x[..., -1, :])
    # 4% of 50 rows is 2; of 25 columns 1
    assert torch.equal(shift(x, 1, 0), translate(x, 2, 0)) and torch.equal(shift(x, 0, -1), translate(x, 0, -1))
    for view in tta_views(["hflip", "shift"]):
        assert view(x).shape == x.shape
    with pytest.raises(UsageError, match="known: hflip, shift"):
        tta_views(["vflip"])
    assert TTA.names() == ["hflip", "shift"]


def test_multitask_average_is_per_task_then_combined():
    a = {"mask": torch.tensor([[2.0, 0.0, 0.0]]), "gender": torch.tensor([[0.0, 1.0]]), "age": torch.tensor([[0.0, 0.0, 3.0]])}
    b = {"mask": torch.tensor([[0.0, 2.0, 0.0]]), "gender": torch.tensor([[1.0, 0.0]]), "age": torch.tensor([[3.0, 0.0, 0.0]])}

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    by_hand = {t: (softmax(a[t].numpy()[0]) + softmax(b[t].numpy()[0])) / 2 for t in TASKS}
    expected = np.einsum("i,j,k->ijk", by_hand["mask"], by_hand["gender"], by_hand["age"]).reshape(1, NUM_CLASSES)
    got = average_view_probs([a, b]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-6)
    # not the mean of the two joints: the product of averaged marginals is what the head models
    joints = [combine_task_probs({t: o[t].softmax(-1) for t in TASKS}).numpy() for o in (a, b)]
    assert np.abs(got - (joints[0] + joints[1]) / 2).max() > 1e-3
    # single head: the mean of the 18-class softmaxes
    sa, sb = torch.randn(3, NUM_CLASSES), torch.randn(3, NUM_CLASSES)
    np.testing.assert_allclose(
        average_view_probs([{"class": sa}, {"class": sb}]).numpy(),
        ((sa.softmax(-1) + sb.softmax(-1)) / 2).numpy(),
        atol=1e-6,
    )


def test_tta_probs_matches_infer():
    model = TinyModel("multitask", flip_invariant=False).eval()
    x = torch.randn(4, C, H, W)
    with torch.no_grad():
        probs = tta_probs(model, x, ["hflip"])
        expected = average_view_probs([model(x), model(torch.flip(x, dims=(-1,)))])
    torch.testing.assert_close(probs, expected)


@pytest.fixture(scope="module")
def tiny_run(demo_data, tmp_path_factory, tiny_overrides):
    from maskstatus.config import load_config

    out = tmp_path_factory.mktemp("tta_runs")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "train.epochs=1", "train.limit_train_batches=1", "predict.tta=[hflip]"])
    return train(cfg).run_dir


def test_predict_with_tta_writes_a_valid_submission(tiny_run, demo_data, tmp_path):
    def probs_of(name, tta):
        sub_path, probs_path = predict([tiny_run], demo_data.eval_dir, tmp_path / name, progress=False, tta=tta)
        sub = pd.read_csv(sub_path, dtype={"ImageID": str})
        p = pd.read_csv(probs_path)[PROB_COLUMNS].to_numpy()
        info = pd.read_csv(demo_data.eval_dir / "info.csv", dtype=str)
        assert sub["ImageID"].tolist() == info["ImageID"].tolist()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
        assert (p.argmax(1) == sub["ans"].to_numpy()).all()
        return p

    flipped = probs_of("hflip.csv", ["hflip"])
    plain = probs_of("plain.csv", [])
    assert np.abs(flipped - plain).max() > 1e-5
    # None: the run's own predict.tta (hflip here)
    np.testing.assert_allclose(probs_of("config.csv", None), flipped, atol=2e-6)
