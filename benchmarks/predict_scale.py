"""`tagllm predict` on growing files: throughput (rows per second) and peak memory.

Each run is a fresh process that runs `tagllm predict` on a .smi file of N MOSES molecules
and reports its own peak resident memory. Streaming means the peak stays flat as N grows.

    # memory flatness up to 100k rows, on a tiny random model (seconds per file)
    .venv/bin/python benchmarks/predict_scale.py --rows 10000 30000 100000
    # throughput of the real model with trained tags (e.g. from `make demo`)
    .venv/bin/python benchmarks/predict_scale.py --model smollm2 --tags runs/qed/tags \
        --rows 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: a tiny random model")
    ap.add_argument("--tags", default=None)
    ap.add_argument("--rows", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--out", default="runs/predict_scale.json")
    args = ap.parse_args()
    from tagllm.data.smiles import read_moses

    smiles = read_moses("train")
    results = []
    with tempfile.TemporaryDirectory(prefix="tagllm-predict-") as tmp:
        work = Path(tmp)
        model, tags = args.model, args.tags
        if model is None:
            model, tags = tiny_model_with_tags(work)
        for n in args.rows:
            f = work / f"in{n}.smi"
            f.write_text("".join(f"{s}\n" for s in smiles[:n]))
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", CHILD, "predict", "--model", model, "--tags", tags,
                 "--input", str(f), "--output", str(work / "out.csv"), "--batch_size",
                 str(args.batch_size), "--progress", "false"],
                capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - t0
            peak = float(done.stdout.split("PEAK_MB")[-1])
            results.append({"rows": n, "seconds": round(seconds, 1),
                            "rows_per_second": round(n / seconds, 1), "peak_mb": round(peak)})
    table = Table(title=f"tagllm predict ({model}, batch {args.batch_size}; each a fresh "
                        "process, start-up included)")
    for col in ("rows", "seconds", "rows/s", "peak MB"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["rows"]), str(r["seconds"]), str(r["rows_per_second"]),
                      str(r["peak_mb"]))
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": model, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
