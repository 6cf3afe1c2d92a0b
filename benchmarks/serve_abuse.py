"""Loopback abuse test of `maskstatus serve`: crafted uploads and stalled clients against a memory budget.

    python benchmarks/serve_abuse.py --run RUN --out benchmarks/results/serve-abuse.json

Starts ``maskstatus serve RUN`` with its default limits on 127.0.0.1 (a free
port; nothing else is contacted) and attacks it in two phases of ``--phase-s``
seconds each, from concurrent client threads that send again as soon as they
are answered:

1. crafted uploads: blank RGBA PNGs just under the pixel limit (4000x4000:
   16 MP decoded from a few tens of KB), three a request (the request's pixel
   budget); blank PNGs over the limit (6300x6300, the issue's 38 KB one); four
   at-limit PNGs in one request (over the request budget); requests of the most
   files allowed (16 blank 1000x1000 PNGs);
2. the same, plus ``--slow`` stalled clients: half connect and send nothing,
   half send their headers and the start of a large body, then nothing; each is
   reopened as soon as the server closes it.

Throughout, ``GET /health`` is timed every 0.25 s, and the server process's
resident memory is read from /proc (VmRSS every 0.1 s, and its peak VmHWM at the
end). The budget is what the attack may add to the idle server (measured after
its first answer; ~1.1 GB on a CPU machine, most of it PyTorch's libraries):
``--budget-mb``, default 640 MB = the server's limits at their defaults, 4 images
of 16 MP held at 3 bytes a pixel (192 MB) + one being decoded at up to 13 bytes
a pixel (208 MB) + the face detector on a 1600 px copy (~150 MB) + 90 MB of
slack. Exit 1 when the peak is over it, or when a /health request failed or took
a second or more. Linux only (/proc). The result JSON counts the answers by kind
and status, and records the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import selectors
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine, run_configs, write_report  # noqa: E402
from serve_load import free_port, start_server, stop_server  # noqa: E402

PHASES = ("crafted uploads", "crafted uploads and stalled clients")

KIND = "tool"  # rerun it on any config, run or commit (benchmarks/README.md lists every script)


def blank_png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    """A blank image compressed to almost nothing: what decodes to the most memory per byte sent."""
    buf = io.BytesIO()
    Image.new(mode, size, 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def crafted_requests(max_pixels: int, max_files: int) -> dict[str, list[tuple[str, bytes]]]:
    """Kind -> the files of one request. At-limit images are squares of ``max_pixels`` or just under."""
    side = int(max_pixels**0.5)
    at_limit = blank_png((side, side))
    over_limit = blank_png((6300, 6300), "L")
    small = blank_png((1000, 1000))
    return {
        "3_at_pixel_limit": [(f"limit{i}.png", at_limit) for i in range(3)],
        "2_over_pixel_limit": [(f"over{i}.png", over_limit) for i in range(2)],
        "4_at_limit_over_request_budget": [(f"limit{i}.png", at_limit) for i in range(4)],
        f"{max_files}_files_of_1mp": [(f"small{i}.png", small) for i in range(max_files)],
    }


class Tally:
    """Answers by kind and status, and the slowest answer of each kind; shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, Counter] = {}
        self.slowest: dict[str, float] = {}

    def add(self, kind: str, status: str, seconds: float) -> None:
        with self.lock:
            self.status.setdefault(kind, Counter())[status] += 1
            self.slowest[kind] = max(self.slowest.get(kind, 0.0), seconds)

    def report(self) -> dict:
        with self.lock:
            return {k: {"answers": dict(sorted(c.items())), "slowest_s": round(self.slowest[k], 3)}
                    for k, c in sorted(self.status.items())}


def upload_client(url: str, kind: str, files: list[tuple[str, bytes]], stop: threading.Event, tally: Tally) -> None:
    body = [("file", (name, data, "image/png")) for name, data in files]
    with httpx.Client(timeout=120) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = str(http.post(url + "/predict", files=body).status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            tally.add(kind, status, time.perf_counter() - start)
            if status not in ("200", "413", "415", "422"):
                stop.wait(0.2)  # 503: the server asked to retry later; a short pause, as a client would


def health_probe(url: str, stop: threading.Event, results: list) -> None:
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = http.get(url + "/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            results.append((ok, time.perf_counter() - start))
            stop.wait(0.25)


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in MB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def memory_sampler(pid: int, stop: threading.Event, samples: list) -> None:
    while not stop.is_set():
        try:
            samples.append(read_status(pid)["VmRSS"])
        except (OSError, KeyError):
            return
        stop.wait(0.1)


def stalled_clients(url: str, count: int, stop: threading.Event, counts: Counter) -> None:
    """``count`` sockets: even ones send nothing, odd ones headers and the start of a 10 MB body; each reopened
    once the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    selector = selectors.DefaultSelector()

    def open_one(i: int) -> None:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            counts["connect_failed"] += 1
            return
        if i % 2:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: 10000000\r\n\r\n--x\r\n")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, (i, time.monotonic()))
        counts["opened"] += 1

    for i in range(count):
        open_one(i)
    reopen: list[tuple[float, int]] = []  # a short pause before reconnecting keeps this thread off the CPU
    while not stop.is_set():
        now = time.monotonic()
        for due, i in [r for r in reopen if r[0] <= now]:
            reopen.remove((due, i))
            open_one(i)
        for key, _ in selector.select(timeout=0.1):
            sock, (i, opened) = key.fileobj, key.data
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            selector.unregister(sock)
            sock.close()
            status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
            counts[f"{'body' if i % 2 else 'silent'}_ended_by_{status}"] += 1
            counts["held_s_max"] = max(counts["held_s_max"], round(time.monotonic() - opened))
            reopen.append((time.monotonic() + 0.2, i))
    for key in list(selector.get_map().values()):
        key.fileobj.close()


def run_phase(url: str, requests: dict, clients: int, seconds: float, slow: int) -> dict:
    stop, tally, health, counts = threading.Event(), Tally(), [], Counter()
    threads = [threading.Thread(target=health_probe, args=(url, stop, health))]
    for kind, files in requests.items():
        threads += [threading.Thread(target=upload_client, args=(url, kind, files, stop, tally))
                    for _ in range(clients)]
    if slow:
        threads.append(threading.Thread(target=stalled_clients, args=(url, slow, stop, counts)))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(180)
    times = [s for _, s in health]
    return {
        "seconds": seconds,
        "upload_clients_per_kind": clients,
        "uploads": tally.report(),
        "stalled_clients": slow,
        "stalled": dict(counts),
        "health": {"requests": len(health), "failed": sum(not ok for ok, _ in health),
                   "slowest_s": round(max(times), 3) if times else None},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run or CV folder to serve")
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds of each of the two phases (default 20)")
    p.add_argument("--clients", type=int, default=2, help="client threads per kind of crafted request (default 2)")
    p.add_argument("--slow", type=int, default=100, help="stalled clients in phase 2 (default 100)")
    p.add_argument("--budget-mb", type=float, default=640.0,
                   help="most the attack may add to the idle server's RSS at its peak (default 640)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = p.parse_args(argv)
    if args.phase_s <= 0 or args.clients < 1 or args.slow < 0:
        p.error("--phase-s and --clients must be positive, --slow at least 0")

    port = free_port()
    proc = start_server(Path(args.run), port, args.accelerator, timeout=180)
    url = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        small = [("file", ("warm.png", blank_png((384, 512), "RGB"), "image/png"))]
        httpx.post(url + "/predict", files=small, timeout=120).raise_for_status()  # the model's first batch
        rss_ready = read_status(proc.pid)["VmRSS"]
        requests = crafted_requests(health["max_pixels"], health["max_files"])
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=memory_sampler, args=(proc.pid, stop, samples))
        sampler.start()
        phases = [run_phase(url, requests, args.clients, args.phase_s, slow) for slow in (0, args.slow)]
        stop.set()
        sampler.join()
        peak = read_status(proc.pid)["VmHWM"]
        alive = httpx.post(url + "/predict", files=small, timeout=120).status_code == 200
    finally:
        stop_server(proc)
    health_ok = all(ph["health"]["failed"] == 0 and ph["health"]["slowest_s"] < 1 for ph in phases)
    report = {
        "what": "maskstatus serve under crafted uploads and stalled clients over loopback: peak memory, /health",
        "run": Path(args.run).name,
        "server_limits": {k: health[k] for k in ("max_pixels", "max_files", "max_upload_mb", "max_request_pixels",
                                                 "max_server_pixels")},
        "request_sizes_bytes": {k: sum(len(d) for _, d in files) for k, files in requests.items()},
        "phases": dict(zip(PHASES, phases)),
        "rss_mb": {"idle_after_first_answer": rss_ready, "max_sampled": max(samples, default=None),
                   "peak_vmhwm": peak, "peak_over_idle": peak - rss_ready, "budget_over_idle": args.budget_mb,
                   "budget": rss_ready + args.budget_mb},
        "within_budget": peak <= rss_ready + args.budget_mb,
        "health_always_under_1s": health_ok,
        "answers_after_the_attack": alive,
        "load_average_1min_after": os.getloadavg()[0],
        "machine": machine(),
        "commit": commit(),
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/serve_abuse.py", *(argv or sys.argv[1:])]),
        "run_configs": run_configs(args.run),
    }
    if args.out:
        write_report(report, Path(args.out))
    else:
        print(json.dumps(report, indent=2))
    return 0 if report["within_budget"] and health_ok and alive else 1


if __name__ == "__main__":
    sys.exit(main())
