"""Load test of ``tagllm serve``: real HTTP clients against the default model on localhost.

1. Offline reference: ``TaggedModel.predict`` over the rows (the work ``tagllm predict``
   does per chunk), timed; its predictions are the expected answers.
2. A ``tagllm serve`` process on the same tags; ``--clients`` threads, each with its own
   HTTP connection, send ``--inputs`` rows per request for ``--duration`` seconds. Every
   answer is compared with the offline prediction of the same rows (a mismatch: any value
   off by more than ``--atol``).
3. Overload: ``--overload_clients`` clients for ``--overload_duration`` seconds against a
   server whose ``--max_pending`` is smaller: 503s expected, nothing else lost.

Reported: requests, rows per second served and its ratio to offline, p50/p99 latency,
responses by status, mismatches, the server's peak resident memory.

    .venv/bin/python benchmarks/serve_load.py --out benchmarks/results/DATE-serve-load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import torch

from tagllm.model import TaggedModel
from tagllm.protocol.standalone import recorded_model, tag_dirs
from tagllm.sources import load_source


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, max_pending: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tagllm.cli", "serve", "--tags", args.tags, "--port",
           str(port), "--max_batch", str(args.max_batch), "--max_wait_ms",
           str(args.max_wait_ms), "--max_pending", str(max_pending), "--max_inputs",
           str(max(args.inputs, 8))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer /health within 300 s")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def load(url: str, texts: list[str], want: np.ndarray, clients: int, duration: float,
         per_request: int, atol: float) -> dict:
    """``clients`` threads sending requests until ``duration`` is over."""
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter = Counter()
    mismatches, rows_done, errors = 0, 0, Counter()
    stop_at = time.monotonic() + duration

    def client(k: int) -> None:
        nonlocal mismatches, rows_done
        rng = np.random.default_rng(k)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop_at:
                idx = rng.integers(0, len(texts), per_request)
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/predict",
                                  json={"inputs": [texts[i] for i in idx]})
                except httpx.HTTPError as e:
                    with lock:
                        errors[type(e).__name__] += 1
                    continue
                dt = time.perf_counter() - t0
                bad = 0
                if r.status_code == 200:
                    got = np.asarray(r.json()["predictions"], dtype=float)
                    bad = int(got.shape != want[idx].shape
                              or not np.allclose(got, want[idx], atol=atol, rtol=0))
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        latencies.append(dt)
                        rows_done += len(idx)
                        mismatches += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "duration_s": duration, "wall_s": round(wall, 1),
            "inputs_per_request": per_request, "requests": int(sum(statuses.values())),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "transport_errors": dict(errors), "rows_served": rows_done,
            "rows_per_s": round(rows_done / wall, 1),
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                           "p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                           "max": round(float(lat.max()), 1) if len(lat) else None},
            "mismatches": mismatches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", default="runs/qed/tags")
    ap.add_argument("--data", default="moses:test")
    ap.add_argument("--template", default="<SMILES> {smiles} <QED>")
    ap.add_argument("--n", type=int, default=2000, help="distinct rows to draw requests from")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--inputs", type=int, default=1, help="rows per request")
    ap.add_argument("--max_batch", type=int, default=64)
    ap.add_argument("--max_wait_ms", type=float, default=5)
    ap.add_argument("--max_pending", type=int, default=256)
    ap.add_argument("--overload_clients", type=int, default=96)
    ap.add_argument("--overload_duration", type=float, default=20)
    ap.add_argument("--overload_max_pending", type=int, default=16)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dirs = tag_dirs(args.tags)
    m = TaggedModel.from_pretrained(recorded_model(dirs), tags=dirs)
    table, _ = load_source(args.data, n=args.n, seed=0, progress=False)
    texts = table.render(args.template)
    log(f"offline: predicting {len(texts)} rows, batch {args.max_batch}")
    m.predict(texts[:args.max_batch], batch_size=args.max_batch)  # warm-up
    t0 = time.perf_counter()
    want = m.predict(texts, batch_size=args.max_batch).astype(float)
    offline_s = time.perf_counter() - t0
    offline = len(texts) / offline_s
    log(f"offline: {offline:.1f} rows/s")
    del m  # the server holds its own copy

    runs = {}
    for name, clients, duration, pending in (
            ("load", args.clients, args.duration, args.max_pending),
            ("overload", args.overload_clients, args.overload_duration,
             args.overload_max_pending)):
        port = free_port()
        proc = start_server(args, port, pending)
        url = f"http://127.0.0.1:{port}"
        try:
            load(url, texts, want, min(clients, 4), 3, args.inputs, args.atol)  # warm-up
            log(f"{name}: {clients} clients for {duration:.0f} s (max_pending {pending})")
            res = load(url, texts, want, clients, duration, args.inputs, args.atol)
            res["max_pending"] = pending
            res["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
            res["ratio_to_offline"] = round(res["rows_per_s"] / offline, 3)
            runs[name] = res
            log(f"{name}: {json.dumps(res)}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    doc = {"date": date.today().isoformat(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                      f"torch threads {torch.get_num_threads()}",
           "versions": {"torch": torch.__version__, "httpx": httpx.__version__,
                        "python": platform.python_version()},
           "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "tags": args.tags, "data": args.data, "rows": len(texts),
           "server": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
           "offline": {"seconds": round(offline_s, 2), "rows_per_s": round(offline, 1),
                       "batch_size": args.max_batch},
           **runs}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
