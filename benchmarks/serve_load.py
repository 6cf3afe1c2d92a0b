"""Loopback load test of `maskstatus serve`: a fixed number of requests from a few concurrent clients.

    python benchmarks/serve_load.py --run demo/runs/demo-... --requests 200 --clients 4 \
        --out benchmarks/results/serve-load-demo.json

Starts the server as a subprocess on 127.0.0.1 (a free port), sends each
request (``--images-per-request`` images from ``--images``, default the run's
demo eval images) to ``POST /predict`` from ``--clients`` threads until
``--requests`` are done or ``--time-limit`` seconds pass, and writes a JSON
with the latency percentiles (p50, p95, max), requests/s and images/s, errors,
the machine, the commit and the command. Client and server share the machine's
cores, so read images/s as a floor for that machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Optional
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine, run_configs  # noqa: E402

from maskstatus.config import load_config  # noqa: E402
from maskstatus.data.images import is_image_file  # noqa: E402
from maskstatus.runs import expand_runs  # noqa: E402

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_images(run: Path) -> Path:
    cfg = load_config(expand_runs([run])[0] / "config.yaml")
    if cfg.data.root is None:
        raise ValueError(f"{run} names no data.root; give --images")
    return Path(cfg.data.root) / "eval" / "images"


def stop_server(proc: subprocess.Popen) -> None:
    """Ask the server to stop; kill it if it has not within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_server(run: Path, port: int, accelerator: str, timeout: float, backend: str = "torch",
                 onnx_dir: Optional[str] = None, face_crop: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "maskstatus.cli", "-q", "serve", str(run), "--host", "127.0.0.1",
           "--port", str(port), "--accelerator", accelerator, "--backend", backend]
    if onnx_dir is not None:
        cmd += ["--onnx-dir", onnx_dir]
    if not face_crop:
        cmd.append("--no-face-crop")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def load(url: str, payloads: list[bytes], names: list[str], requests: int, clients: int, per_request: int,
         time_limit: float) -> dict:
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                if i >= requests:
                    return
                picks = [(i * per_request + k) % len(payloads) for k in range(per_request)]
                files = [("file", (names[j], payloads[j], "application/octet-stream")) for j in picks]
                start = time.perf_counter()
                try:
                    r = http.post(url + "/predict", files=files)
                    ok = r.status_code == 200 and len(r.json()["images"]) == per_request
                    why = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as err:
                    ok, why = False, repr(err)
                took = time.perf_counter() - start
                with lock:
                    (latencies.append(took) if ok else errors.append(why))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    done = len(latencies)
    return {
        "requests_ok": done,
        "requests_failed": len(errors),
        "first_errors": errors[:5],
        "stopped_by_time_limit": done + len(errors) < requests,
        "wall_s": wall,
        "latency_ms_p50": float(np.percentile(lat, 50)) if done else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if done else None,
        "latency_ms_max": float(lat.max()) if done else None,
        "requests_per_s": done / wall,
        "images_per_s": done * per_request / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run or CV folder to serve")
    p.add_argument("--images", default=None, help="folder of images to send (default: the run's data.root/eval/images)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--warmup", type=int, default=4, help="requests sent before measuring (model warm-up)")
    p.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="the server's --backend (onnx: export the run first)")
    p.add_argument("--onnx-dir", default=None, help="the server's --onnx-dir")
    p.add_argument("--no-face-crop", action="store_true",
                   help="the server's --no-face-crop: no face detection (for images that are face crops already)")
    p.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.images_per_request < 1:
        p.error("--requests, --clients and --images-per-request must be at least 1")

    run = Path(args.run)
    folder = Path(args.images) if args.images else default_images(run)
    files = sorted(f for f in folder.iterdir() if is_image_file(f))[:64]
    if not files:
        raise SystemExit(f"no images in {folder}")
    payloads, names = [f.read_bytes() for f in files], [f.name for f in files]
    port = free_port()
    load_before = os.getloadavg()
    proc = start_server(run, port, args.accelerator, timeout=180, backend=args.backend, onnx_dir=args.onnx_dir,
                        face_crop=not args.no_face_crop)
    url = f"http://127.0.0.1:{port}"
    try:
        load(url, payloads, names, args.warmup, 1, args.images_per_request, args.time_limit)
        result = load(url, payloads, names, args.requests, args.clients, args.images_per_request, args.time_limit)
        health = httpx.get(url + "/health", timeout=10).json()
    finally:
        stop_server(proc)
    report = {
        "what": "POST /predict over loopback, fixed request count from concurrent clients",
        "run": str(run),
        "server": health,
        "requests": args.requests,
        "clients": args.clients,
        "images_per_request": args.images_per_request,
        **result,
        # Other work on the machine slows the server; the 1-minute load average shows how busy it was.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "machine": machine(),
        "commit": commit(),
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "run_configs": run_configs(run),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if result["requests_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
