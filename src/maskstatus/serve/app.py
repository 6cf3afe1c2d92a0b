"""The HTTP API and web page over a ``Predictor``: FastAPI, served by uvicorn.

Endpoints: ``GET /`` the web page, ``GET /health``, ``POST /predict`` (one or
more images in the multipart field ``file``), ``POST /explain`` (one image; the
answer plus a Grad-CAM heatmap per task).

Limits: a request body over ``max_upload_bytes`` gets 413 before it is read
(from its Content-Length, or while it streams in when there is none); an image
over ``max_pixels`` (read from its header, so a decompression bomb is never
decoded) gets 413 too, a file that is not an image 422; every error is JSON
``{"detail": ..., "file": ...}``. The model runs one batch at a time (the
predictor's lock queues concurrent requests), and the endpoints are plain
functions, so FastAPI runs them in its thread pool and the event loop keeps
answering ``/health`` meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from importlib import resources
from typing import Awaitable, Callable, Iterator, Optional

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from .predictor import BadImage, Predictor, decode_upload

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FILES = 16

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, checked before the app parses it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _reject(self, send) -> None:
        await send_json(send, 413, {"detail": f"upload larger than the limit of {self.limit / 2**20:g} MB"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                return await send_json(send, 400, {"detail": "bad Content-Length header"})
            if too_big:
                return await self._reject(send)
            return await self.app(scope, receive, send)
        # No length given (chunked): read the body up to the limit, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._reject(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def send_json(send, status: int, content: dict) -> None:
    await JSONResponse(content, status_code=status)({"type": "http"}, None, send)


def page_html() -> str:
    return resources.files("maskstatus.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
    max_files: int = DEFAULT_MAX_FILES,
) -> FastAPI:
    """The FastAPI app answering with ``predictor``; see the module doc for endpoints and limits."""
    if max_upload_bytes <= 0 or max_files <= 0:
        raise ValueError("max_upload_bytes and max_files must be positive")
    app = FastAPI(title="maskstatus", summary="mask, gender and age group from a face photo")
    page = page_html()

    @app.exception_handler(BadImage)
    async def bad_image(_: Request, err: BadImage) -> JSONResponse:
        return JSONResponse({"detail": err.reason, "file": getattr(err, "filename", None)},
                            status_code=413 if err.too_large else 422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    def decode_all(files: list[UploadFile]) -> list:
        if len(files) > max_files:
            raise BadImage(f"{len(files)} files in one request; the limit is {max_files}")
        images = []
        for f in files:
            try:
                images.append(decode_upload(f.file.read(), predictor.max_pixels))
            except BadImage as err:
                err.filename = f.filename  # type: ignore[attr-defined]
                raise
        return images

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **predictor.describe()}

    @app.post("/predict")
    def predict(file: list[UploadFile] = File(..., description="one or more images; repeat the field")) -> dict:
        start = time.perf_counter()
        images = decode_all(file)
        preds, model_s = predictor.predict_timed(images)
        total_ms = (time.perf_counter() - start) * 1000
        answers = []
        for f, p in zip(file, preds):
            # The batch is predicted at once: each image's time is its share of the request.
            answers.append({"file": f.filename, **p.as_dict(), "time_ms": total_ms / len(preds)})
        return {"images": answers, "time_ms": total_ms, "model_ms": model_s * 1000}

    @app.post("/explain")
    def explain(file: UploadFile = File(..., description="one image")) -> dict:
        start = time.perf_counter()
        (image,) = decode_all([file])
        answer = predictor.explain(image)
        return {"file": file.filename, **answer, "time_ms": (time.perf_counter() - start) * 1000}

    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    return app


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: Optional[str] = "info") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL (port 0: a free one)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="maskstatus-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {timeout:g} s")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
