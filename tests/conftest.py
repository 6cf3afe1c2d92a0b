import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Tests never download: an accidental hub request fails at once instead of hanging on the closed network.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.synthetic import make_demo_data  # noqa: E402

# A tiny CPU config that runs the real training loop on demo data in seconds.
TINY = [
    "model.backbone=test_efficientnet",
    "model.pretrained=false",
    "cache.size=[48, 36]",
    "train.batch_size=16",
    "train.eval_batch_size=64",
    "train.progress=false",
    "split.folds=4",
]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """One small synthetic data set shared by every test that trains or predicts (read-only)."""
    return make_demo_data(tmp_path_factory.mktemp("demo"), people=36, eval_people=12, seed=3)


@pytest.fixture(scope="session")
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def tiny_config(demo_data, tmp_path):
    def make(*overrides):
        return load_config(
            None,
            [f"data.root={demo_data.root}", f"output_dir={tmp_path / 'runs'}", f"cache.dir={tmp_path / 'cache'}",
             *TINY, *overrides],
        )

    return make


# Every test that trains or predicts with a model draws on the demo data or the tiny overrides; each takes
# seconds, so they are all `slow` and `make test-fast` (-m "not slow") runs the rest in seconds.
_MODEL_FIXTURES = frozenset({"demo_data", "tiny_config", "tiny_overrides"})


def pytest_collection_modifyitems(items):
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
