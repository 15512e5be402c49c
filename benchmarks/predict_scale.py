"""Screening at scale: `tagllm predict` on N molecules with 1 and 2 processes (torchrun) and
1 and 2 Ray workers, the weights in float32, bfloat16 and int8, and a projection to 10^9.

- engines: each run a fresh `tagllm predict` command on the same .smi file of N MOSES
  molecules (float32); rows/s over the whole command (start-up included) and over the
  compute (from the first chunk to the joined output, as the command logs it); the peak
  resident memory of each worker (each reports its own); every run's output must equal
  the one-process output (the same rows, predictions within 1e-4).
- dtypes: one process, the same rows predicted in turn by the float32, bfloat16 and int8
  model (interleaved rounds, so drift on a shared machine hits all alike): rows/s, and on
  the labelled test molecules (moses:test) MSE and Pearson with the paired-bootstrap 95%
  interval of each dtype minus float32.
- projection: hours for 10^9 molecules from the measured per-row cost, stated with its
  assumptions.

    .venv/bin/python benchmarks/predict_scale.py --tags qed --rows 20000
    # memory flatness as files grow (each a fresh process; tiny random model by default)
    .venv/bin/python benchmarks/predict_scale.py --grow 10000 30000 100000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from tagllm.cli import main
try:
    main(sys.argv[1:])
finally:
    print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
console = Console()


def tiny_model_with_tags(work: Path) -> tuple[str, str]:
    """A tiny random Llama and untrained <SMILES>/<QED> tags for it (mechanics only)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tagllm import HeadConfig, TagConfig, TaggedModel

    from tiny import save_tiny

    save_tiny(work / "tiny")
    m = TaggedModel.from_pretrained(str(work / "tiny"))
    m.add_tag(TagConfig("<SMILES>", num_tokens=4))
    m.add_tag(TagConfig("<QED>", kind="function", num_tokens=4, head=HeadConfig("regression")))
    m.save_tag("<SMILES>", work / "tags" / "SMILES")
    m.save_tag("<QED>", work / "tags" / "QED", trained_with=["<SMILES>"])
    return str(work / "tiny"), str(work / "tags")


def grow(args, model: str | None, tags: str, smiles: list[str], work: Path) -> list[dict]:
    """Peak memory of one process as the file grows (streaming keeps it flat)."""
    results = []
    for n in args.grow:
        f = work / f"in{n}.smi"
        f.write_text("".join(f"{s}\n" for s in smiles[:n]))
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, "predict", *(["--model", model] if model else []),
             *(["--template", args.template] if args.template else []),
             "--tags", tags, "--input", str(f), "--output", str(work / "out.csv"),
             "--batch_size", str(args.batch_size), "--progress", "false"],
            capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t0
        peak = float(done.stdout.split("PEAK_MB")[-1])
        results.append({"rows": n, "seconds": round(seconds, 1),
                        "rows_per_second": round(n / seconds, 1), "peak_mb": round(peak)})
    return results


def engines(args, model: str | None, tags: str, lib: Path, work: Path) -> list[dict]:
    """The same file on 1 and 2 processes and 1 and 2 Ray workers (fresh commands)."""
    cores = os.cpu_count() or 1
    base = ["predict", *(["--model", model] if model else []), "--tags", tags,
            *(["--template", args.template] if args.template else []),
            "--input", str(lib), "--batch_size", str(args.batch_size), "--progress", "false"]
    one = [sys.executable, "-m", "tagllm.cli"]
    # (name, engine, workers, launcher, threads per worker): one process with every core,
    # and one with a worker's share of them (the 2-worker runs' per-worker resources)
    runs = [("processes1", "processes", 1, one, cores),
            ("processes1-share", "processes", 1, one, max(1, cores // 2)),
            ("processes2", "processes", 2, [sys.executable, "-m", "torch.distributed.run",
                                            "--standalone", "--nproc_per_node", "2", "-m",
                                            "tagllm.cli"], max(1, cores // 2)),
            ("ray1", "ray", 1, one, cores),
            ("ray2", "ray", 2, one, max(1, cores // 2))]
    out, reference = [], None
    for name, engine, workers, launch, threads in runs:
        if args.engines and name not in args.engines:
            continue
        target = work / f"{name}.csv"
        extra = ["--engine", "ray", "--workers", str(workers)] if engine == "ray" else []
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads))}
        t0 = time.perf_counter()
        done = subprocess.run([*launch, *base, "--output", str(target), *extra],
                              capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(f"{engine} x{workers} failed:\n{done.stderr[-3000:]}")
        log = done.stderr
        compute = float(re.search(r"rows in ([\d.]+) s", log)[1])
        peaks = [float(g) for g in re.findall(r"peak RSS of process \d+: ([\d.]+) GB", log)]
        if engine == "ray":
            found = re.search(r"peak RSS of the Ray workers: ([\d., ]+) GB", log)
            peaks = [float(g) for g in found[1].split(",")]
        rows = read_predictions(target)
        if reference is None:
            reference = rows
        same = len(rows) == len(reference) and all(
            a[0] == b[0] and abs(a[1] - b[1]) <= 1e-4 * max(1.0, abs(b[1]))
            for a, b in zip(rows, reference, strict=True))
        out.append({"run": name, "engine": engine, "workers": workers,
                    "threads_per_worker": threads,
                    "rows": len(rows), "seconds": round(seconds, 1),
                    "compute_seconds": round(compute, 1),
                    "rows_per_second": round(len(rows) / seconds, 2),
                    "compute_rows_per_second": round(len(rows) / compute, 2),
                    "peak_rss_gb_per_worker": peaks, "same_rows_as_one_process": same})
        console.print(f"{name}: {len(rows)} rows in {seconds:.0f} s "
                      f"(compute {compute:.0f} s), peaks {peaks} GB, same rows: {same}")
    return out


def read_predictions(path: Path) -> list[tuple[str, float]]:
    import csv

    with open(path, newline="") as f:
        return [(r["smiles"], float(r["prediction"])) for r in csv.DictReader(f)]


def dtypes(args, model: str | None, tags: str, smiles: list[str]) -> dict:
    """float32 / bfloat16 / int8 in one process: interleaved rows/s, and the test metric."""
    from tagllm.evaluation.metrics import paired_bootstrap, regression_metrics
    from tagllm.inference import load_tagged
    from tagllm.protocol.standalone import (
        recorded_model,
        recorded_template,
        tag_dirs,
        with_trained_with,
    )
    from tagllm.sources import load_source

    dirs = with_trained_with(tag_dirs(tags))
    name = recorded_model(dirs, model)
    template = args.template or recorded_template(dirs)
    models = {d: load_tagged(dirs, name, d) for d in ("float32", "bfloat16", "int8")}
    texts = [template.format(smiles=s) for s in smiles[:args.dtype_rows]]
    times: dict[str, list[float]] = {d: [] for d in models}
    for m in models.values():  # warm-up, untimed
        m.predict(texts[:args.batch_size], batch_size=args.batch_size)
    for _ in range(args.rounds):
        for d, m in models.items():
            t0 = time.perf_counter()
            m.predict(texts, batch_size=args.batch_size)
            times[d].append(time.perf_counter() - t0)
    speed = {d: round(len(texts) / float(np.median(t)), 2) for d, t in times.items()}
    test, _ = load_source("moses:test", n=args.test_rows, seed=0, label="qed")
    tt = test.render(template)
    y = np.asarray(test["qed"], dtype=float)
    preds = {d: m.predict(tt, batch_size=args.batch_size)[:, 0] for d, m in models.items()}
    def score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        m = regression_metrics(y, p)
        return {"mse": m["mse"], "pearson": m["pearson"]}

    quality = {d: score(y, p) for d, p in preds.items()}
    intervals = {d: paired_bootstrap(y, preds[d], preds["float32"], score)
                 for d in ("bfloat16", "int8")}
    return {"rows_timed": len(texts), "rounds": args.rounds, "rows_per_second": speed,
            "speed_vs_float32": {d: round(speed[d] / speed["float32"], 3) for d in speed},
            "test_rows": len(y), "test": quality, "minus_float32_interval": intervals,
            "max_abs_prediction_change": {d: float(np.abs(preds[d] - preds["float32"]).max())
                                          for d in ("bfloat16", "int8")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the one the tag files record")
    ap.add_argument("--tags", default=None, help="default: a tiny random model and tags")
    ap.add_argument("--template", default=None,
                    help="default: the one the function tag was trained with")
    ap.add_argument("--rows", type=int, default=20000, help="molecules per engine run")
    ap.add_argument("--engines", nargs="*", default=None,
                    help="subset of processes1 processes1-share processes2 ray1 ray2")
    ap.add_argument("--dtype_rows", type=int, default=2000)
    ap.add_argument("--test_rows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grow", type=int, nargs="*", default=None)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/"
                    "DATE-predict-scale.json")
    args = ap.parse_args()
    from tagllm.data.smiles import read_moses

    smiles = read_moses("train")
    result: dict = {"benchmark": "predict-scale", "date": datetime.date.today().isoformat(),
                    "machine": platform.platform(), "cores": os.cpu_count(),
                    "command": " ".join(sys.argv), "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="tagllm-predict-") as tmp:
        work = Path(tmp)
        model, tags = args.model, args.tags
        if tags is None:
            model, tags = tiny_model_with_tags(work)
            args.template = args.template or "<SMILES> {smiles} <QED>"
        result["model"], result["tags"] = model, tags
        if args.grow:
            result["grow"] = grow(args, model, tags, smiles, work)
        else:
            lib = work / "library.smi"
            lib.write_text("".join(f"{s}\n" for s in smiles[:args.rows]))
            result["engines"] = runs = engines(args, model, tags, lib, work)
            by = {r["run"]: r for r in runs}

            def ratio(a: str, b: str, key: str) -> float | None:
                return round(by[a][key] / by[b][key], 3) if a in by and b in by else None

            # 2 workers / 1 worker at the same threads per worker (the scaling), and at
            # one process holding every core (what a user of this machine gains)
            result["processes_2_over_1_same_threads"] = ratio(
                "processes2", "processes1-share", "compute_rows_per_second")
            result["processes_2_over_1_all_cores"] = ratio(
                "processes2", "processes1", "compute_rows_per_second")
            result["ray_2_over_1"] = ratio("ray2", "ray1", "compute_rows_per_second")
            result["ray_over_processes_1"] = ratio("ray1", "processes1", "rows_per_second")
            result["ray_over_processes_2"] = ratio("ray2", "processes2", "rows_per_second")
            result["dtypes"] = dtypes(args, model, tags, smiles)
            best = max(runs, key=lambda r: r["compute_rows_per_second"])
            rate = best["compute_rows_per_second"]
            result["projection"] = {
                "molecules": 10**9, "from": best["run"],
                "rows_per_second_per_machine": rate,
                "hours_on_this_machine": round(1e9 / rate / 3600, 1),
                "assumptions": "the measured compute rate of this machine's best run, "
                               "molecules of MOSES's length distribution, linear scaling "
                               "over machines (every machine reads its own chunks; no "
                               "shared bottleneck); no GPU was measured"}
    table = Table(title="tagllm predict at scale")
    for col in ("run", "rows/s (command)", "rows/s (compute)", "peak GB per worker",
                "same rows"):
        table.add_column(col, justify="right")
    for r in result.get("engines", []):
        table.add_row(r["run"], str(r["rows_per_second"]),
                      str(r["compute_rows_per_second"]), str(r["peak_rss_gb_per_worker"]),
                      str(r["same_rows_as_one_process"]))
    console.print(table)
    console.print({k: v for k, v in result.items() if k not in ("engines",)})
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               f"{result['date']}-predict-scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
