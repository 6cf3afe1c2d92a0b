"""The HTTP server: answers equal to predict_probs, limits, errors, heatmaps; a face-crop rule on whole photos."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.engine.ensemble import expand_runs  # noqa: E402
from maskstatus.engine.predict import load_run, predict_probs  # noqa: E402
from maskstatus.labels import PROB_COLUMNS, TASKS, decode, split_class_probs  # noqa: E402
from maskstatus.serve.app import create_app  # noqa: E402
from maskstatus.serve.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def cv_dir(demo_data, tmp_path_factory, tiny_overrides):
    """A folder of two fold runs (as a CV folder holds them), one with hflip TTA: the server serves their mean."""
    from maskstatus.config import load_config
    from maskstatus.engine.train import train

    out = tmp_path_factory.mktemp("cv")
    for seed, extra in ((1, []), (2, ["predict.tta=[hflip]"])):
        cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides, f"seed={seed}",
                                 "model.head=multitask", "train.epochs=1", "train.limit_train_batches=2", *extra])
        train(cfg)
    return out


@pytest.fixture(scope="module")
def client(cv_dir):
    predictor = Predictor([cv_dir], accelerator="cpu")
    with TestClient(create_app(predictor, max_upload_bytes=8 * 2**20)) as c:
        yield c


def eval_images(demo_data, n):
    return sorted((demo_data.eval_dir / "images").iterdir())[:n]


def reference_probs(cv_dir, paths):
    import pandas as pd

    runs = [load_run(r) for r in expand_runs([cv_dir])]
    table = pd.DataFrame({"image_path": [str(p) for p in paths], "image_id": [p.name for p in paths]})
    return predict_probs([runs], table, Fabric(accelerator="cpu", devices=1), progress=False)


def post(client, paths, url="/predict"):
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return client.post(url, files=files)


def test_health(client, cv_dir):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["models"] == 2 and body["sources"] == [str(cv_dir)]


@pytest.mark.parametrize("count", [1, 5])
def test_predict_equals_predict_probs(client, cv_dir, demo_data, count):
    paths = eval_images(demo_data, count)
    r = post(client, paths)
    assert r.status_code == 200, r.text
    answers = r.json()["images"]
    expected = reference_probs(cv_dir, paths)
    assert [a["file"] for a in answers] == [p.name for p in paths]
    for answer, probs in zip(answers, expected):
        cls = int(probs.argmax())
        assert answer["class"] == cls
        assert answer["class_prob"] == pytest.approx(float(probs[cls]), abs=1e-5)
        marginals = split_class_probs(probs[None].astype(np.float64))
        for task, code in zip(TASKS, decode(cls)):
            assert answer[task]["code"] == code
            np.testing.assert_allclose(list(answer[task]["probs"].values()), marginals[task][0], atol=1e-5)
        assert answer["time_ms"] > 0
        assert answer["face"]["cropped"] is False  # demo images are face crops already


def test_upload_over_limit_is_413_and_server_lives(client, demo_data):
    big = b"\xff" * (60 * 2**20)
    r = client.post("/predict", files=[("file", ("big.jpg", big, "image/jpeg"))])
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert post(client, eval_images(demo_data, 1)).status_code == 200


def test_text_file_named_jpg_is_422_json(client, demo_data):
    r = client.post("/predict", files=[("file", ("notes.jpg", b"just some text\n" * 10, "image/jpeg"))])
    assert r.status_code == 422
    body = r.json()
    assert body["file"] == "notes.jpg" and "not a recognised image" in body["detail"]
    assert post(client, eval_images(demo_data, 1)).status_code == 200


def png_header_only(width, height):
    """A few hundred bytes claiming a width x height RGB PNG: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_413_json(client, demo_data):
    r = client.post("/predict", files=[("file", ("bomb.png", png_header_only(30000, 30000), "image/png"))])
    assert r.status_code == 413
    assert "too many pixels" in r.json()["detail"] and r.json()["file"] == "bomb.png"
    assert client.get("/health").status_code == 200
    assert post(client, eval_images(demo_data, 2)).status_code == 200


def test_missing_field_is_422_json(client):
    r = client.post("/predict", files=[("other", ("a.jpg", b"x", "image/jpeg"))])
    assert r.status_code == 422 and "detail" in r.json()


def test_explain_gives_a_heatmap_per_task(client, demo_data):
    path = eval_images(demo_data, 1)[0]
    r = post(client, [path], "/explain")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["heatmaps"]) == set(TASKS)
    for uri in body["heatmaps"].values():
        assert uri.startswith("data:image/png;base64,")
        import base64

        img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert min(img.size) >= 96
    # the explained answer is the predicted one
    assert body["class"] == post(client, [path]).json()["images"][0]["class"]


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="file"' in html and "explain" in html
    assert "http://" not in html and "https://" not in html  # no external resources


def test_whole_photo_is_cropped_to_the_face_first(client, cv_dir, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from maskstatus.data.faces import FaceDetector, crop_face

    scene = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    scene[500:1012, 900:1412] = skimage_data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="PNG")
    r = client.post("/predict", files=[("file", ("scene.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 200, r.text
    answer = r.json()["images"][0]
    assert answer["face"]["cropped"] and answer["face"]["detected"]
    # the answer is predict's on the cut-out face (saved losslessly); the demo runs are 48x36 so the frame is 4:3
    crop = crop_face(scene, FaceDetector(), aspect=48 / 36)
    assert answer["face"]["frame"] == crop.frame.as_list()
    face_file = tmp_path / "face.png"
    Image.fromarray(crop.image).save(face_file)
    expected = reference_probs(cv_dir, [face_file])[0]
    assert answer["class"] == int(expected.argmax())
    assert answer["class_prob"] == pytest.approx(float(expected.max()), abs=1e-5)
