"""The server's limits through the real app and a real uvicorn: what an upload may cost in pixels, time and slots.

The model is a stand-in (``ModelStandIn``) answering uniform probabilities: these
uploads are refused before any model would run, and the tests stay fast. The
answers' equality to ``maskstatus predict`` is tested with real runs in test_serve.py.
"""

import io
import logging
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from maskstatus.data.faces import FaceCrop  # noqa: E402
from maskstatus.serve import app as app_module  # noqa: E402
from data_builders import png_header_only  # noqa: E402
from maskstatus.serve.app import create_app, running_server  # noqa: E402
from maskstatus.serve.predictor import Prediction, decode_upload  # noqa: E402


class ModelStandIn:
    """What the app asks of a Predictor; counts the images it was given, and can hold a request in the model."""

    def __init__(self, max_pixels=1_000_000):
        self.max_pixels = max_pixels
        self.images = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Semaphore(0)

    def describe(self):
        return {"sources": ["run"], "models": 1, "max_pixels": self.max_pixels}

    def predict_timed(self, images):
        self.entered.release()
        self.release.wait(30)
        self.images.extend(images)
        return [Prediction(np.full(18, 1 / 18, np.float32), FaceCrop(img, None, None)) for img in images], 0.001

    def explain(self, image):
        self.images.append(image)
        return {"class": 0}


def encoded(size, fmt="PNG", mode="RGB", **kwargs):
    buf = io.BytesIO()
    Image.new(mode, size, 0).save(buf, format=fmt, **kwargs)
    return buf.getvalue()



def files(*items):
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


@pytest.fixture
def model():
    return ModelStandIn()


@pytest.fixture
def client(model):
    with TestClient(create_app(model)) as c:
        yield c


def test_blank_png_at_the_old_limit_is_refused_at_once_without_decoding():
    """A 6300x6300 blank PNG (tens of KB) was decoded in full under the old 40 MP default: 28 s and ~1 GB."""
    from maskstatus.serve.predictor import DEFAULT_MAX_PIXELS

    model = ModelStandIn(max_pixels=DEFAULT_MAX_PIXELS)  # the server's default
    data = encoded((6300, 6300), mode="L", optimize=True)
    assert len(data) < 100_000
    with TestClient(create_app(model)) as c:
        start = time.perf_counter()
        r = c.post("/predict", files=files(("blank.png", data), ("blank2.png", data)))
        elapsed = time.perf_counter() - start
    assert r.status_code == 413 and r.json()["file"] == "blank.png"
    assert "too many pixels" in r.json()["detail"] and "6300x6300" in r.json()["detail"]
    assert elapsed < 2 and model.images == []


def test_request_over_its_pixel_budget_is_413(client, model):
    """Each image is under the limit (1 MP), four together are over the request's 3 MP."""
    image = encoded((1000, 900))
    r = client.post("/predict", files=files(*[(f"{i}.png", image) for i in range(4)]))
    assert r.status_code == 413
    assert "per request" in r.json()["detail"] and "3600000" in r.json()["detail"]
    assert model.images == []
    assert client.post("/predict", files=files(*[(f"{i}.png", image) for i in range(3)])).status_code == 200


def test_too_many_files_is_413(model):
    with TestClient(create_app(model, max_files=2)) as c:
        r = c.post("/predict", files=files(*[(f"{i}.png", encoded((16, 16))) for i in range(3)]))
    assert r.status_code == 413 and "the limit is 2" in r.json()["detail"]


def test_jpeg_is_decoded_at_reduced_size_and_counted_so():
    """A 48 MP JPEG decodes to 3 MP (1/4 scale), so it fits a 16 MP limit; a PNG of that size does not."""
    big = (8000, 6000)
    image = decode_upload(encoded(big, "JPEG", quality=50), max_pixels=16_000_000)
    assert image.shape == (1500, 2000, 3)
    with pytest.raises(Exception, match="too many pixels") as err:
        decode_upload(png_header_only(*big), max_pixels=16_000_000)
    assert err.value.status == 413


def test_image_over_a_limit_above_the_decoders_cap_is_413_not_422():
    """--max-pixels is refused above images.MAX_IMAGE_PIXELS; the app answers 413 for what the cap refuses."""
    from maskstatus.cli import build_parser
    from maskstatus.data.images import MAX_IMAGE_PIXELS
    from maskstatus.errors import UsageError
    from maskstatus.serve.predictor import check_max_pixels

    with pytest.raises(UsageError, match="--max-pixels"):
        check_max_pixels(MAX_IMAGE_PIXELS + 1)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "run", "--max-pixels", str(MAX_IMAGE_PIXELS + 1)])
    assert exit_.value.code == 2
    model = ModelStandIn(max_pixels=MAX_IMAGE_PIXELS)
    with TestClient(create_app(model)) as c:
        r = c.post("/predict", files=files(("huge.png", png_header_only(8000, 7000))))
    assert r.status_code == 413 and r.json()["file"] == "huge.png" and "too many pixels" in r.json()["detail"]


def test_formats_one_list_for_serve(client, model):
    gif = encoded((40, 30), "GIF", mode="P")
    tiff = encoded((40, 30), "TIFF")
    r = client.post("/predict", files=files(("a.gif", gif), ("b.tif", tiff)))
    assert r.status_code == 200, r.text
    assert [i.shape for i in model.images] == [(30, 40, 3), (30, 40, 3)]
    r = client.post("/predict", files=files(("icon.png", encoded((32, 32), "ICO"))))
    assert r.status_code == 415 and "ICO" in r.json()["detail"] and r.json()["file"] == "icon.png"
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100  # the start of an iPhone photo
    r = client.post("/predict", files=files(("photo.heic", heic)))
    assert r.status_code == 415 and "HEIC" in r.json()["detail"] and "JPEG" in r.json()["detail"]


def test_explain_refuses_a_second_file(client, model):
    r = client.post("/explain", files=files(("a.png", encoded((16, 16))), ("b.png", encoded((16, 16)))))
    assert r.status_code == 422 and r.json()["file"] == "b.png" and "one image" in r.json()["detail"]
    assert model.images == []
    assert client.post("/explain", files=files(("a.png", encoded((16, 16))))).status_code == 200


def test_no_docs_pages_loading_a_cdn(client):
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_non_loopback_host_is_warned_about(caplog):
    from maskstatus.serve.app import warn_if_exposed

    with caplog.at_level(logging.WARNING, logger="maskstatus.serve.app"):
        assert not warn_if_exposed("127.0.0.1") and not warn_if_exposed("::1") and not warn_if_exposed("localhost")
        assert not caplog.records
        assert warn_if_exposed("0.0.0.0")
    assert "no authentication" in caplog.text and "0.0.0.0" in caplog.text


def test_decoding_runs_in_a_bounded_pool(monkeypatch):
    """Four concurrent requests of two images each: never more than the pool's two decodes at once."""
    running, peak, lock = 0, 0, threading.Lock()

    def slow_decode(*args, **kwargs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return decode_upload(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_upload", slow_decode)
    image = encoded((16, 16))
    with running_server(create_app(ModelStandIn(), decode_workers=2)) as url:
        def request(_):
            return httpx.post(url + "/predict", files=files(("a.png", image), ("b.png", image)), timeout=30)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak == 2


def test_server_pixel_budget_answers_503_with_retry_after(monkeypatch):
    """A request of 3 MP holds 3 of the server's 4 MP in the model; one of 2 MP waits BUSY_WAIT_S, then gets 503."""
    monkeypatch.setattr(app_module, "BUSY_WAIT_S", 0.3)
    model = ModelStandIn()
    model.release.clear()
    image = encoded((1000, 1000))
    three = files(*[(f"{i}.png", image) for i in range(3)])
    with running_server(create_app(model)) as url:
        held = threading.Thread(target=httpx.post, args=(url + "/predict",), kwargs={"files": three, "timeout": 30})
        held.start()
        assert model.entered.acquire(timeout=10)
        r = httpx.post(url + "/predict", files=files(("a.png", image), ("b.png", image)), timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] and "retry" in r.json()["detail"]
        start = time.perf_counter()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert time.perf_counter() - start < 1
        model.release.set()
        held.join()
        r = httpx.post(url + "/predict", files=files(("a.png", image), ("b.png", image)), timeout=10)
        assert r.status_code == 200


def stalled_upload(url, declared=100_000, sent=b"--x\r\n"):
    """A socket that sent request headers and the start of a body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 + f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_stalled_upload_gets_408(model):
    with running_server(create_app(model, read_timeout=0.5)) as url:
        sock = stalled_upload(url)
        start = time.perf_counter()
        answer = read_all(sock, timeout=5)
        sock.close()
        assert time.perf_counter() - start < 3
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer
        assert httpx.get(url + "/health", timeout=5).status_code == 200


def test_silent_connection_is_closed(model):
    """A client that connects and sends nothing, or stops after half its headers, is disconnected."""
    with running_server(create_app(model), header_timeout=0.5) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        half.sendall(b"GET /health HTTP/1.1\r\nHost")
        start = time.perf_counter()
        assert read_all(silent, timeout=5) == b"" and read_all(half, timeout=5) == b""
        assert time.perf_counter() - start < 3
        silent.close()
        half.close()
        # a kept-alive connection is closed once idle after its answer too
        kept = socket.create_connection((host, int(port)))
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.perf_counter()
        answer = read_all(kept, timeout=5)
        kept.close()
        assert answer.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answer
        assert time.perf_counter() - start < 3


def test_uploads_in_progress_are_bounded_and_health_answers(model):
    with running_server(create_app(model, max_uploads=2, read_timeout=5)) as url:
        socks = [stalled_upload(url) for _ in range(2)]
        time.sleep(0.3)
        r = httpx.post(url + "/predict", files=files(("a.png", encoded((16, 16)))), timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] and "uploads in progress" in r.json()["detail"]
        start = time.perf_counter()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert time.perf_counter() - start < 1
        for s in socks:
            s.close()
        time.sleep(0.3)
        assert httpx.post(url + "/predict", files=files(("a.png", encoded((16, 16)))), timeout=5).status_code == 200


@pytest.mark.parametrize("args, message", [
    (["--max-files", "0"], "--max-files"), (["--max-files", "-2"], "--max-files"),
    (["--port", "99999"], "--port"), (["--port", "-1"], "--port"), (["--max-upload-mb", "0"], "--max-upload-mb"),
])
def test_serve_arguments_are_checked_before_anything(args, message, capsys):
    from maskstatus.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "no-such-run", *args])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and f"argument {message}: expected" in err.splitlines()[-1]


def test_serve_unknown_tta_is_one_line_naming_the_known(capsys):
    from maskstatus.cli import main

    # An argparse choice: the usage, then one error line, before any model is loaded.
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "no-such-run", "--tta", "bogus"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "'bogus'" in last and "hflip" in last and "shift" in last


def test_faces_are_looked_for_in_a_bounded_copy_of_a_large_photo():
    """dlib took 7 s and 600 MB on a 16 MP photo: it gets a copy at most DETECT_MAX_SIDE long, boxes scaled back."""
    from maskstatus.data.faces import Box
    from maskstatus.serve.predictor import DETECT_MAX_SIDE, BoundedDetector

    class Spy:
        def __init__(self):
            self.shapes = []

        def detect(self, image):
            self.shapes.append(image.shape)
            return [Box(100, 50, 300, 250, 0.5)]

    spy = Spy()
    detector = BoundedDetector(spy)
    assert detector.detect(np.zeros((3000, 4000, 3), np.uint8)) == [Box(250, 125, 750, 625, 0.5)]
    assert spy.shapes == [(1200, 1600, 3)] and DETECT_MAX_SIDE == 1600
    assert detector.detect(np.zeros((1200, 1600, 3), np.uint8)) == [Box(100, 50, 300, 250, 0.5)]  # as it is
    assert spy.shapes[-1] == (1200, 1600, 3)


def test_a_face_in_a_large_photo_is_still_found():
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    import cv2

    from maskstatus.data.faces import FaceDetector
    from maskstatus.serve.predictor import BoundedDetector

    scene = np.full((3000, 4000, 3), 90, np.uint8)
    scene[1000:2536, 2000:3536] = cv2.resize(skimage_data.astronaut(), (1536, 1536))
    start = time.perf_counter()
    faces = BoundedDetector(FaceDetector()).detect(scene)
    assert time.perf_counter() - start < 4  # the 12 MP photo itself takes about 5 s
    assert faces and 2000 < faces[0].left < faces[0].right < 3536 and 1000 < faces[0].top < faces[0].bottom < 2536


def test_freed_memory_goes_back_to_the_system_on_glibc():
    import platform

    from maskstatus.serve.app import return_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert return_freed_memory() is True
