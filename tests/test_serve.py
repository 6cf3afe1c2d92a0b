"""The HTTP server: answers equal to predict's, limits, errors, heatmaps; a face-crop rule on whole photos."""

import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from lightning_fabric import Fabric  # noqa: E402

from maskstatus.runs import expand_runs  # noqa: E402
from maskstatus.infer.pipeline import Pipeline, load_run  # noqa: E402
from maskstatus.labels import TASKS, decode, split_class_probs  # noqa: E402
from data_builders import png_header_only  # noqa: E402
from maskstatus.serve.app import create_app  # noqa: E402
from maskstatus.serve.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def cv_dir(demo_data, tmp_path_factory, tiny_overrides):
    """A folder of two fold runs (as a CV folder holds them), one with hflip TTA: the server serves their mean."""
    from maskstatus.config import load_config
    from maskstatus.train.trainer import train

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
    return Pipeline.of_runs([runs], Fabric(accelerator="cpu", devices=1)).predict_files(
        table["image_path"].tolist(), progress=False
    )[0]


def post(client, paths, url="/predict"):
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return client.post(url, files=files)


def test_health(client, cv_dir):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["models"] == 2 and body["sources"] == [cv_dir.name]
    assert str(cv_dir.parent) not in r.text  # run names only: no server paths


def test_crafted_uploads_are_refused_before_decoding(client, demo_data):
    """A 6300x6300 blank PNG (tens of KB; 28 s and ~1 GB to decode) and a second file to /explain."""
    blank = io.BytesIO()
    Image.new("L", (6300, 6300)).save(blank, format="PNG", optimize=True)
    start = time.perf_counter()
    r = client.post("/predict", files=[("file", (f"{i}.png", blank.getvalue(), "image/png")) for i in range(4)])
    assert r.status_code == 413 and "too many pixels" in r.json()["detail"] and r.json()["file"] == "0.png"
    assert time.perf_counter() - start < 2
    two = [eval_images(demo_data, 2)[0], eval_images(demo_data, 2)[1]]
    r = post(client, two, "/explain")
    assert r.status_code == 422 and r.json()["file"] == two[1].name
    assert post(client, two[:1], "/explain").status_code == 200


@pytest.mark.parametrize("count", [1, 5])
def test_predict_equals_the_predict_code(client, cv_dir, demo_data, count):
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
        assert answer["age"]["range"] == ("<30", "30-59", ">=60")[answer["age"]["code"]]
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


def test_chunked_upload_over_limit_is_413(client, demo_data):
    """No Content-Length (chunked): the limit is enforced while the body streams in."""
    def body():
        for _ in range(12):
            yield b"\0" * 2**20

    r = client.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert post(client, eval_images(demo_data, 1)).status_code == 200


def test_truncated_jpeg_is_422_json(client, demo_data):
    data = eval_images(demo_data, 1)[0].read_bytes()
    r = client.post("/predict", files=[("file", ("cut.jpg", data[: len(data) // 3], "image/jpeg"))])
    assert r.status_code == 422 and r.json()["file"] == "cut.jpg"
    assert client.get("/health").json()["status"] == "ok"



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


# The system chromium (Debian's package): Playwright cannot download its own browsers here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def chromium():
    """Path of the system chromium; skips (never passes) the test when there is none."""
    import shutil

    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH: the web page test needs the system chromium "
                    "(apt-get install chromium; `make setup` installs it when run as root)")
    return path


@pytest.mark.slow
def test_web_page_in_headless_chromium(chromium, cv_dir, demo_data):
    from playwright import sync_api

    from maskstatus.serve.app import running_server

    image = eval_images(demo_data, 1)[0]
    app = create_app(Predictor([cv_dir], accelerator="cpu"))
    with running_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            answer = page.inner_text("#answer")
            for title in ("Mask:", "Gender:", "Age group:"):
                assert title in answer
            assert "%" in answer
            summary = page.inner_text("#summary")
            expected = post_class(url, image)
            assert summary.startswith(f"class {expected}:")
            for task in TASKS:
                img = page.locator(f"#maps img[data-task={task}]")
                img.wait_for()
                size = img.evaluate("e => [e.complete, e.naturalWidth, e.naturalHeight, e.clientWidth, e.clientHeight]")
                assert size[0] and all(v > 0 for v in size[1:]), (task, size)
            assert not errors, errors
        finally:
            browser.close()


def post_class(url, path):
    import httpx

    r = httpx.post(url + "/predict", files=[("file", (path.name, path.read_bytes(), "image/jpeg"))], timeout=60)
    r.raise_for_status()
    return r.json()["images"][0]["class"]


@pytest.mark.slow
def test_load_benchmark_script(cv_dir, demo_data, tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serve_load

    out = tmp_path / "serve.json"
    args = ["--run", str(cv_dir), "--images", str(demo_data.eval_dir / "images"), "--requests", "12",
            "--clients", "3", "--images-per-request", "2", "--warmup", "1", "--time-limit", "120", "--out", str(out)]
    assert serve_load.main(args) == 0
    report = json.loads(out.read_text())
    assert report["requests_ok"] == 12 and report["requests_failed"] == 0 and not report["stopped_by_time_limit"]
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p95"] <= report["latency_ms_max"]
    assert report["images_per_s"] == pytest.approx(2 * report["requests_per_s"])
    assert report["server"]["models"] == 2 and report["server"]["backend"] == "torch"
    assert "cpu" in report["machine"] and "serve_load.py" in report["command"]
    assert len(report["run_configs"]) == 2  # the CV folder's two fold runs, each with the config it trained with
    from maskstatus.infer.export import export

    export(cv_dir, out_dir=tmp_path / "onnx")
    assert serve_load.main([*args[:-2], "--requests", "4", "--backend", "onnx", "--onnx-dir", str(tmp_path / "onnx"),
                            "--no-face-crop", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["requests_ok"] == 4 and report["server"]["backend"] == "onnx"
    assert report["server"]["face_crop"] is False and "--no-face-crop" in report["command"]


@pytest.mark.slow
def test_run_trained_on_face_crops_is_served_like_predict(tmp_path, tiny_overrides):
    """data.face_crop: predict crops at cache time; the server crops the same way, even with face_crop off."""
    skimage_data = pytest.importorskip("skimage.data")
    from maskstatus.config import load_config
    from maskstatus.data.synthetic import make_demo_data
    from maskstatus.train.trainer import train

    # Few people: every training image goes through the face detector (tens of ms each).
    data = make_demo_data(tmp_path / "data", people=12, eval_people=2, seed=5)
    cfg = load_config(None, [f"data.root={data.root}", f"output_dir={tmp_path / 'runs'}", *tiny_overrides,
                             "data.face_crop=true", "train.epochs=1", "train.limit_train_batches=2",
                             f"cache.dir={tmp_path / 'cache'}"])
    run = train(cfg).run_dir
    scene = np.random.default_rng(1).integers(0, 256, (900, 1400, 3), dtype=np.uint8)
    scene[200:712, 700:1212] = skimage_data.astronaut()
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    expected = reference_probs(run, [path])[0]
    with TestClient(create_app(Predictor([run], accelerator="cpu", face_crop=False))) as c:
        answer = post(c, [path]).json()["images"][0]
    assert answer["face"]["cropped"]
    assert answer["class"] == int(expected.argmax())
    np.testing.assert_allclose(list(answer["mask"]["probs"].values()),
                               split_class_probs(expected[None].astype(np.float64))["mask"][0], atol=1e-5)


@pytest.mark.parametrize("head", [["model.head=single"], ["model.head=multitask", "model.age_output=years"],
                                  ["model.head=multitask", "model.tasks=[mask]"]])
def test_heatmaps_for_every_head(head):
    """Single 18-way head (task log-marginals), age regression (the predicted mean), per-task model (its tasks)."""
    import torch

    from maskstatus.config import load_config
    from maskstatus.models import create_model, model_data_config
    from maskstatus.serve.gradcam import heatmaps

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=false", *head])
    model = create_model(cfg.model).eval()
    norm = model_data_config(model)
    maps = heatmaps(model, torch.randn(3, 48, 36), {"mask": 2, "gender": 1, "age": 0}, norm["mean"], norm["std"])
    assert set(maps) == set(cfg.model.tasks)
    for rgb in maps.values():
        assert rgb.shape == (48, 36, 3) and rgb.dtype == np.uint8
    if len(maps) == 3:  # each task explains its own target, so the maps differ
        assert not np.array_equal(maps["mask"], maps["gender"])


def test_onnx_backend_answers_as_pytorch_and_still_explains(cv_dir, demo_data, tmp_path):
    from maskstatus.infer.export import export
    from maskstatus.infer.onnx_model import OnnxModel

    onnx_dir = tmp_path / "onnx"
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):  # at start-up, not on the first request
        Predictor([cv_dir], accelerator="cpu", backend="onnx", onnx_dir=onnx_dir)
    export(cv_dir, out_dir=onnx_dir)
    predictor = Predictor([cv_dir], accelerator="cpu", backend="onnx", onnx_dir=onnx_dir)
    answering = predictor.pipeline.runs
    assert len(answering) == 2 and all(isinstance(r.model, OnnxModel) for r in answering)
    paths = eval_images(demo_data, 5)
    with TestClient(create_app(predictor)) as c:
        assert c.get("/health").json()["backend"] == "onnx"
        answers = post(c, paths).json()["images"]
        for answer, probs in zip(answers, reference_probs(cv_dir, paths)):  # the PyTorch predict code's answers
            assert answer["class"] == int(probs.argmax())
            assert answer["class_prob"] == pytest.approx(float(probs.max()), abs=1e-4)
        explained = post(c, paths[:1], "/explain").json()
        assert set(explained["heatmaps"]) == set(TASKS) and explained["class"] == answers[0]["class"]
    with pytest.raises(ValueError, match="runs on the CPU"):
        Predictor([cv_dir], accelerator="cuda", backend="onnx", onnx_dir=onnx_dir)
