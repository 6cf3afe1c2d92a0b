"""The HTTP API and web page over a ``Predictor``: FastAPI, served by uvicorn.

Endpoints: ``GET /`` the web page, ``GET /health``, ``POST /predict`` (one or
more images in the multipart field ``file``), ``POST /explain`` (one image; the
answer plus a Grad-CAM heatmap per task). No ``/docs`` or ``/redoc`` (their
pages load scripts from a CDN); ``/openapi.json`` describes the API.

Limits, so that no small upload can take the server's memory or its CPU; every
error is JSON ``{"detail": ..., "file": ...}``:

- bytes: a request body over ``max_upload_bytes`` gets 413 before it is read
  (from its Content-Length, or while it streams in when there is none);
- time: a client that sends nothing for ``read_timeout`` seconds while its body
  is awaited gets 408, one whose request headers do not arrive within
  ``HEADER_TIMEOUT_S`` (or that idles that long between requests) is
  disconnected, and at most ``max_uploads`` requests with a body are in progress
  at once (more get 503 with Retry-After);
- decoded pixels: each image's are read from its header before any pixel is
  decoded (JPEGs decode at reduced size, see ``predictor.DECODE_MIN_SIDE``): an
  image over ``max_pixels`` or a request over ``max_request_pixels`` gets 413, a
  format not in ``data.images.IMAGE_FORMATS`` 415, a file that is not an image
  422. A request's pixels are held from before decoding until its answer, and all
  requests together hold at most ``max_server_pixels``: a request that cannot
  get its share within ``BUSY_WAIT_S`` gets 503 with Retry-After. Images decode
  in a pool of ``decode_workers`` threads (default one), so decoding never takes
  more cores (or transient memory) than that however many requests arrive.

The model runs one batch at a time (the predictor's lock queues concurrent
requests). The endpoints that decode and predict are plain functions, which
FastAPI runs in its thread pool; ``/health`` runs on the event loop, so it keeps
answering while every pool thread waits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from ..defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_READ_TIMEOUT_S,
    REQUEST_PIXELS_IMAGES,
    SERVER_PIXELS_IMAGES,
)
from .predictor import DECODE_MIN_SIDE, BadImage, Predictor, decode_upload, probe_upload

logger = logging.getLogger(__name__)

# Seconds a client may leave the server waiting for the next part of its request body (uvicorn has no such
# timeout; defaults.DEFAULT_READ_TIMEOUT_S), for the whole body, and for its request headers or its next request on
# a kept-alive connection.
BODY_TIMEOUT_S = 120.0  # 20 MB at ~1.3 Mbit/s
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
# Requests with a body in progress at once: each holds its upload (up to max_upload_bytes, 1 MB a file in memory
# and the rest spooled to disk) and a thread of the pool; 16 is far more than one model answering one batch at a
# time needs to stay busy.
DEFAULT_MAX_UPLOADS = 16
# Connections uvicorn keeps at once (idle ones are closed after the timeouts above); beyond it new requests get 503.
LIMIT_CONCURRENCY = 512
# Decoded pixels per request and for all requests at once, in images of the largest size allowed: a request may
# decode 3 of them (or 16 phone JPEGs, about 3 MP each at reduced size), the server 4. Images are held at 3 bytes
# a pixel until the answer, and decoding one takes up to 13 bytes a pixel at its peak (an RGBA PNG): with one
# decoding thread, the default 16 MP images bound the decoded memory at ~0.2 GB held + ~0.2 GB transient, on top of
# the loaded models (see benchmarks/serve_abuse.py). The model answers one batch at a time, so more would only queue.
DECODE_WORKERS = 1
# REQUEST_PIXELS_IMAGES (3) and SERVER_PIXELS_IMAGES (4) are in defaults: serve's --help names them.
BUSY_WAIT_S = 2.0
RETRY_AFTER_S = 2

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class ServerBusy(Exception):
    """The server holds as many decoded pixels as it may; the client should retry shortly."""


class _ReadTimeout(Exception):
    pass


class PixelBudget:
    """Decoded pixels held at once by all requests: a request takes its share before decoding, returns it after."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, wait: float) -> Iterator[None]:
        """Hold ``pixels`` (at most ``total``) for the block; ServerBusy when they are not free within ``wait`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + pixels <= self.total, timeout=wait):
                raise ServerBusy(f"the server is decoding as many pixels as it may ({self.total}); retry shortly")
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


class BodyLimit:
    """ASGI middleware bounding what a request body costs before the app parses it.

    413 for a body over ``limit`` bytes; 408 when the client sends nothing for
    ``read_timeout`` seconds (or its body takes over ``body_timeout``); 503 with
    Retry-After when ``max_uploads`` requests with a body are already in progress.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        body_timeout: float = BODY_TIMEOUT_S,
        max_uploads: int = DEFAULT_MAX_UPLOADS,
    ) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout
        self.max_uploads = max_uploads
        self.uploads = 0  # only touched on the event loop

    async def _reject(self, send) -> None:
        await send_json(send, 413, {"detail": f"upload larger than the limit of {self.limit / 2**20:g} MB"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
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
        if self.uploads >= self.max_uploads:
            return await send_json(
                send,
                503,
                {"detail": f"{self.max_uploads} uploads in progress; retry shortly"},
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.uploads += 1
        try:
            await self._timed(scope, receive, send, length is None)
        finally:
            self.uploads -= 1

    async def _timed(self, scope, receive, send, chunked: bool) -> None:
        """Run the app with each ``receive`` bounded in time; answer 408 instead of whatever it makes of a timeout."""
        deadline = time.monotonic() + self.body_timeout
        timed_out = False
        started = False

        async def timed_receive() -> dict:
            nonlocal timed_out
            left = min(self.read_timeout, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                timed_out = True
                raise _ReadTimeout from None

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if timed_out:  # the app's answer to the timeout (FastAPI makes it a 400) is replaced by the 408
                return
            started = True
            await send(message)

        try:
            app_receive = await self._buffered(timed_receive, send) if chunked else timed_receive
            if app_receive is not None:
                await self.app(scope, app_receive, guarded_send)
        except _ReadTimeout:
            pass
        if timed_out and not started:
            await send_json(
                send,
                408,
                {
                    "detail": f"the request body did not arrive in time (nothing for "
                    f"{self.read_timeout:g} s, or over {self.body_timeout:g} s in all)"
                },
                {"Connection": "close"},
            )

    async def _buffered(self, receive, send) -> Callable[[], Awaitable[dict]] | None:
        """No length given (chunked): read the body up to the limit, then replay it to the app."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._reject(send)
                return None
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

        return replay


async def _no_request_body() -> dict:
    # A response sent from the middleware never reads the request; were it asked to, the client is gone.
    return {"type": "http.disconnect"}


async def send_json(send, status: int, content: dict, headers: dict | None = None) -> None:
    await JSONResponse(content, status_code=status, headers=headers)({"type": "http"}, _no_request_body, send)


def page_html() -> str:
    return resources.files("maskstatus.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
    max_files: int = DEFAULT_MAX_FILES,
    max_request_pixels: int | None = None,
    max_server_pixels: int | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
    decode_workers: int = DECODE_WORKERS,
    min_side: int | None = DECODE_MIN_SIDE,
) -> FastAPI:
    """The FastAPI app answering with ``predictor``; see the module doc for endpoints and limits.

    The pixel budgets default to REQUEST_PIXELS_IMAGES and SERVER_PIXELS_IMAGES
    images of ``predictor.max_pixels``.
    """
    max_pixels = predictor.max_pixels
    max_request_pixels = max_request_pixels or REQUEST_PIXELS_IMAGES * max_pixels
    max_server_pixels = max_server_pixels or SERVER_PIXELS_IMAGES * max_pixels
    if min(max_upload_bytes, max_files, read_timeout, max_uploads, decode_workers) <= 0:
        raise ValueError("max_upload_bytes, max_files, read_timeout, max_uploads and decode_workers must be positive")
    if not max_pixels <= max_request_pixels <= max_server_pixels:
        raise ValueError(
            f"pixel budgets must grow: image {max_pixels} <= request {max_request_pixels} <= server {max_server_pixels}"
        )
    app = FastAPI(
        title="maskstatus", summary="mask, gender and age group from a face photo", docs_url=None, redoc_url=None
    )
    page = page_html()
    budget = PixelBudget(max_server_pixels)
    pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="maskstatus-decode")
    limits = {
        "max_files": max_files,
        "max_upload_mb": max_upload_bytes / 2**20,
        "max_request_pixels": max_request_pixels,
        "max_server_pixels": max_server_pixels,
    }

    @app.exception_handler(BadImage)
    async def bad_image(_: Request, err: BadImage) -> JSONResponse:
        return JSONResponse({"detail": err.reason, "file": err.filename}, status_code=err.status)

    @app.exception_handler(ServerBusy)
    async def busy(_: Request, err: ServerBusy) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    def probe_all(files: list[UploadFile]) -> int:
        """Decoded pixels the request needs, from the headers; BadImage (413, 415, 422) naming the file."""
        if len(files) > max_files:
            raise BadImage(f"{len(files)} files in one request; the limit is {max_files}", 413)
        total = 0
        for f in files:
            try:
                total += probe_upload(f.file, max_pixels, min_side)
            except BadImage as err:
                err.filename = f.filename
                raise
        if total > max_request_pixels:
            raise BadImage(
                f"the {len(files)} images decode to {total} pixels in all, more than the limit of "
                f"{max_request_pixels} per request; send fewer or smaller images",
                413,
            )
        return total

    def decode_one(f: UploadFile):
        try:
            return decode_upload(f.file, max_pixels, min_side)
        except BadImage as err:
            err.filename = f.filename
            raise

    @contextmanager
    def decoded(files: list[UploadFile]) -> Iterator[list]:
        """The request's images, decoded in the pool while its pixels are held; released after the block."""
        pixels = probe_all(files)
        with budget.hold(pixels, BUSY_WAIT_S):
            futures = [pool.submit(decode_one, f) for f in files]
            try:
                images = [f.result() for f in futures]
            except BaseException:
                for f in futures:  # a bad file ends the request: its other images need not be decoded
                    f.cancel()
                raise
            yield images

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **predictor.describe(), **limits}

    @app.post("/predict")
    def predict(file: list[UploadFile] = File(..., description="one or more images; repeat the field")) -> dict:
        start = time.perf_counter()
        with decoded(file) as images:
            preds, model_s = predictor.predict_timed(images)
        total_ms = (time.perf_counter() - start) * 1000
        answers = []
        for f, p in zip(file, preds, strict=True):
            # The batch is predicted at once: each image's time is its share of the request.
            answers.append({"file": f.filename, **p.as_dict(), "time_ms": total_ms / len(preds)})
        return {"images": answers, "time_ms": total_ms, "model_ms": model_s * 1000}

    @app.post("/explain")
    def explain(file: list[UploadFile] = File(..., description="one image")) -> dict:
        start = time.perf_counter()
        if len(file) > 1:
            raise BadImage(
                f"/explain takes one image; {len(file)} were sent (the second is "
                f"{file[1].filename!r}): send the others to /predict",
                422,
                file[1].filename,
            )
        with decoded(file) as (image,):
            answer = predictor.explain(image)
        return {"file": file[0].filename, **answer, "time_ms": (time.perf_counter() - start) * 1000}

    app.add_middleware(BodyLimit, limit=max_upload_bytes, read_timeout=read_timeout, max_uploads=max_uploads)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def warn_if_exposed(host: str) -> bool:
    """Log a warning when ``host`` lets other machines connect: the server checks no one's identity."""
    if is_loopback(host):
        return False
    logger.warning(
        "listening on %s: other machines can reach this server, and it has no authentication; anyone who "
        "can connect may use the model (bind to 127.0.0.1, or put it behind a proxy that authenticates)",
        host,
    )
    return True


def _h11_with_header_timeout(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers have not arrived ``timeout`` seconds
    after it opened or after its last answer. uvicorn's keep-alive timer is cancelled by any byte received, and it
    has none before the first request, so a client that connects and sends nothing (or a byte now and then) would
    hold its connection, and a place under limit_concurrency, for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeaderTimeout(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self.loop.call_later(timeout, self._header_timeout, self.cycle)

        def _header_timeout(self, cycle) -> None:
            # No request began since the timer was set (the cycle is the same), and none is being answered.
            idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
            if idle and not self.transport.is_closing():
                self.transport.close()

    return H11WithHeaderTimeout


def server_config(
    app,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str | None = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
):
    """The uvicorn config every server here runs with: the timeouts and the connection limit above."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_h11_with_header_timeout(header_timeout),
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=LIMIT_CONCURRENCY,
    )


def return_freed_memory() -> bool:
    """Have glibc hand memory freed after a request back to the system, and keep few heaps.

    Every allocation over 1 MB gets its own mapping, returned when freed: by default
    glibc raises that threshold to the size of any such block freed (up to 32 MB),
    so the 16 MB blocks PIL decodes into then come from heaps that keep them. And
    two heaps in all instead of one per thread (up to 8 per core), each keeping what
    its thread freed. Measured with benchmarks/serve_abuse.py: the attacked server's
    peak went from 1.76 to 1.58 GB. False where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 20) and libc.mallopt(-8, 2))  # M_MMAP_THRESHOLD, M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def serve(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str | None = "info") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    warn_if_exposed(host)
    return_freed_memory()
    uvicorn.Server(server_config(app, host, port, log_level)).run()


@contextmanager
def running_server(
    app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0, header_timeout: float = HEADER_TIMEOUT_S
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL (port 0: a free one)."""
    import uvicorn

    server = uvicorn.Server(server_config(app, host, port, "warning", header_timeout))
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
