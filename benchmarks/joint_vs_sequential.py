"""Joint against sequential training of domain tags, on the same step budget.

Runs recipes/domains-sequential.yaml (<SMILES> 60 steps, then <Protein> 60 steps) and
recipes/domains-joint.yaml (both tags, 120 steps of batches mixing the two domains), each
in a fresh tag store so nothing is reused, and prints the training wall time and the
validation loss of each domain side by side (and writes them as JSON).

    .venv/bin/python benchmarks/joint_vs_sequential.py [--out runs/joint_vs_sequential.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tagllm.protocol import run
from tagllm.recipe import load_recipe
from tagllm.store import TagStore

ROOT = Path(__file__).resolve().parents[1]


def measure(recipe_file: Path, store: Path, progress: bool) -> dict:
    recipe = load_recipe(recipe_file)
    t0 = time.perf_counter()
    summary = run(recipe, TagStore(store), log=lambda m: None, progress=progress)
    wall = time.perf_counter() - t0
    losses = {ev["name"]: ev["metrics"]["loss"] for s in summary.stages for ev in s["eval"]}
    return {"recipe": str(recipe_file.relative_to(ROOT)), "steps": summary.steps_run,
            "train_seconds": round(sum(s["seconds"] for s in summary.stages), 1),
            "wall_seconds": round(wall, 1), "validation_loss": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/joint_vs_sequential.json")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    results = {}
    for name in ("sequential", "joint"):
        with tempfile.TemporaryDirectory(prefix="tagllm-store-") as store:
            results[name] = measure(ROOT / "recipes" / f"domains-{name}.yaml", Path(store),
                                    args.progress)
    seq, joint = results["sequential"], results["joint"]
    table = Table(title="joint vs sequential domain tags (same steps, batch, data)")
    for col in ("", "steps", "training s", "wall s",
                *(f"val loss {k}" for k in seq["validation_loss"])):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, str(r["steps"]), f"{r['train_seconds']:.0f}",
                      f"{r['wall_seconds']:.0f}",
                      *(f"{v:.4f}" for v in r["validation_loss"].values()))
    table.add_row("joint / sequential", "", f"{joint['train_seconds'] / seq['train_seconds']:.2f}",
                  f"{joint['wall_seconds'] / seq['wall_seconds']:.2f}",
                  *(f"{joint['validation_loss'][k] / v:.3f}"
                    for k, v in seq["validation_loss"].items()))
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
