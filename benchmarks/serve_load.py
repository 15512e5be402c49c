"""Load test of ``tagllm serve``: real HTTP clients against the default model on localhost.

1. Offline reference: ``TaggedModel.predict`` over the rows (the work ``tagllm predict``
   does per chunk), timed; its predictions are the expected answers.
2. A ``tagllm serve`` process on the same tags; ``--clients`` threads, each with its own
   HTTP connection, send ``--inputs`` rows per request for ``--duration`` seconds. Every
   answer is compared with the offline prediction of the same rows (a mismatch: any value
   off by more than ``--atol``).
3. Overload: ``--overload_clients`` clients for ``--overload_duration`` seconds against a
   server whose ``--max_pending`` is smaller: 503s expected, nothing else lost.
4. Mixed load (``--mixed_duration`` > 0): the same clients, of whose requests
   ``--bad_share`` are invalid (one of :data:`BAD`: an unknown tag, an input without the
   function tag beside a valid one, an invalid or hostile SMILES, too long, too many
   inputs, a format-string template, malformed JSON) and ``--generate_share`` are
   generations. Every valid request must get 200 with its own rows' predictions, every
   invalid one a 4xx naming its problem: one client's mistake never reaches another.

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


def run_clients(client, n: int) -> None:
    """``client(k)`` for k in 0..n-1, each in its own thread, until all return."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


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
    run_clients(client, clients)
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


#: kinds of invalid request: name -> (body, expected status)
BAD = {
    "unknown tag": ({"inputs": ["<Nope> CCO <QED>"]}, 422),
    "second input without the function tag": (
        {"inputs": ["<SMILES> CCO <QED>", "<SMILES> CCO"]}, 422),
    "invalid SMILES row": ({"rows": [{"smiles": "CCO"}, {"smiles": "C1CC"}]}, 422),
    "hostile SMILES (4,000 rings)": ({"rows": [{"smiles": "C1CC1" * 4000}]}, 422),
    "input too long": ({"inputs": ["<SMILES> " + "C" * 3000 + " <QED>"]}, 422),
    "too many inputs": ({"inputs": ["<SMILES> C <QED>"] * 1000}, 413),
    "format-string template": ({"rows": [{"smiles": "CCO"}],
                                "template": "<SMILES> {smiles.__class__} <QED>"}, 422),
    "malformed JSON": (b'{"inputs": [', 422),
}


def mixed(url: str, texts: list[str], want: np.ndarray, clients: int, duration: float,
          per_request: int, atol: float, bad_share: float, generate_share: float) -> dict:
    """Clients sending valid predictions, generations and invalid requests, mixed."""
    lock = threading.Lock()
    by_kind: dict[str, Counter] = {}
    latencies: dict[str, list[float]] = {}
    mismatches, wrong = 0, []
    stop_at = time.monotonic() + duration

    def client(k: int) -> None:
        nonlocal mismatches
        rng = np.random.default_rng(1000 + k)
        bad = list(BAD)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop_at:
                u = rng.random()
                idx = rng.integers(0, len(texts), per_request)
                if u < bad_share:
                    kind = bad[int(rng.integers(len(bad)))]
                    body, expect = BAD[kind]
                    call = dict(content=body, headers={"content-type": "application/json"}) \
                        if isinstance(body, bytes) else dict(json=body)
                    path = "/v1/predict"
                elif u < bad_share + generate_share:
                    kind, expect, path = "valid generate", 200, "/v1/generate"
                    call = dict(json={"prompts": ["<SMILES> C"], "max_new_tokens": 8})
                else:
                    kind, expect, path = "valid predict", 200, "/v1/predict"
                    call = dict(json={"inputs": [texts[i] for i in idx]})
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}{path}", **call)
                except httpx.HTTPError as e:
                    with lock:
                        by_kind.setdefault(kind, Counter())[type(e).__name__] += 1
                    continue
                dt = time.perf_counter() - t0
                off = 0
                if kind == "valid predict" and r.status_code == 200:
                    got = np.asarray(r.json()["predictions"], dtype=float)
                    off = int(got.shape != want[idx].shape
                              or not np.allclose(got, want[idx], atol=atol, rtol=0))
                with lock:
                    by_kind.setdefault(kind, Counter())[r.status_code] += 1
                    latencies.setdefault(kind, []).append(dt * 1000)
                    mismatches += off
                    if r.status_code != expect and len(wrong) < 20:
                        wrong.append({"kind": kind, "status": r.status_code,
                                      "body": r.text[:300]})

    t0 = time.perf_counter()
    run_clients(client, clients)
    expected = {k: BAD[k][1] if k in BAD else 200 for k in by_kind}
    return {"clients": clients, "duration_s": duration,
            "wall_s": round(time.perf_counter() - t0, 1),
            "bad_share": bad_share, "generate_share": generate_share,
            "by_kind": {k: {"expected": expected[k],
                            "by_status": {str(s): n for s, n in sorted(c.items(), key=str)},
                            "p50_ms": round(float(np.percentile(latencies[k], 50)), 1)
                            if latencies.get(k) else None,
                            "p99_ms": round(float(np.percentile(latencies[k], 99)), 1)
                            if latencies.get(k) else None}
                        for k, c in sorted(by_kind.items())},
            "unexpected": sum(n for k, c in by_kind.items() for s, n in c.items()
                              if s != expected[k]),
            "examples_unexpected": wrong, "mismatches": mismatches}


def untrained_tags(out: Path, model: str, texts: list[str], labels: np.ndarray) -> str:
    """``<SMILES>`` untrained and ``<QED>`` with its head fitted in closed form on the rows
    (one step at lr 1e-9 after the warm start: in effect no training): tags to serve when no
    trained ones are at hand."""
    from tagllm import HeadConfig, TagConfig, TrainConfig
    from tagllm.training import fit_tag

    m = TaggedModel.from_pretrained(model)
    m.add_tag(TagConfig("<SMILES>", num_tokens=10))
    m.add_tag(TagConfig("<QED>", kind="function", num_tokens=10,
                        head=HeadConfig("regression")))
    fit_tag(m, "<QED>", texts, labels, cfg=TrainConfig(
        steps=1, lr=1e-9, head_lr=1e-9, warmup_steps=0, validation=0, select="last",
        warm_start_examples=len(texts)), progress=False, log=lambda s: None)
    m.save_tag("<SMILES>", out / "SMILES")
    m.save_tag("<QED>", out / "QED", trained_with=["<SMILES>"])
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", default="runs/qed/tags",
                    help="tag folders to serve; 'untrained:MODEL' makes <SMILES> and a <QED> "
                         "head fitted in closed form on 256 rows (no training)")
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
    ap.add_argument("--mixed_duration", type=float, default=0)
    ap.add_argument("--bad_share", type=float, default=0.3)
    ap.add_argument("--generate_share", type=float, default=0.1)
    ap.add_argument("--runs", default="load,overload,mixed",
                    help="which of load, overload, mixed to run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    if args.tags.startswith("untrained:"):
        import tempfile

        rows, _ = load_source("moses:train", n=256, seed=0, label="qed", progress=False)
        args.tags = untrained_tags(Path(tempfile.mkdtemp()), args.tags.split(":", 1)[1],
                                   rows.render(args.template), np.asarray(rows["qed"]))
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
             args.overload_max_pending),
            ("mixed", args.clients, args.mixed_duration, args.max_pending)):
        if name not in args.runs.split(",") or duration <= 0:
            continue
        port = free_port()
        proc = start_server(args, port, pending)
        url = f"http://127.0.0.1:{port}"
        try:
            load(url, texts, want, min(clients, 4), 3, args.inputs, args.atol)  # warm-up
            log(f"{name}: {clients} clients for {duration:.0f} s (max_pending {pending})")
            if name == "mixed":
                res = mixed(url, texts, want, clients, duration, args.inputs, args.atol,
                            args.bad_share, args.generate_share)
            else:
                res = load(url, texts, want, clients, duration, args.inputs, args.atol)
                res["ratio_to_offline"] = round(res["rows_per_s"] / offline, 3)
            res["max_pending"] = pending
            res["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
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
