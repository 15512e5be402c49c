"""Joint against sequential training of domain tags, on the same step budget.

Runs recipes/domains-sequential.yaml (<SMILES> 60 steps, then <Protein> 60 steps) and
recipes/domains-joint.yaml (both tags, 120 steps of batches mixing the two domains), each
in a fresh tag store so nothing is reused, for each training seed, and prints the training
wall time and the validation loss of each domain side by side, with the loss of the
untrained tags for reference (and writes them as JSON).

    .venv/bin/python benchmarks/joint_vs_sequential.py [--seeds 0 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tagllm.model import TaggedModel
from tagllm.protocol import load_recipe, plan, run
from tagllm.scoring import lm_metrics
from tagllm.store import TagStore

ROOT = Path(__file__).resolve().parents[1]


def with_seed(recipe_file: Path, seed: int):
    """The recipe with training seed ``seed`` (tag initialisation, batch order); the data
    samples stay as the recipe fixes them."""
    recipe = load_recipe(recipe_file)
    recipe.seed = seed
    for s in recipe.stages:
        s.train.seed = seed
        for d in [*s.data, *s.eval]:
            d.seed = d.seed if d.seed is not None else 0  # the samples of seed 0
    return recipe


def untrained(recipe_file: Path, seed: int, store: Path) -> dict:
    """Validation loss of the tags at initialisation (what training starts from)."""
    recipe = with_seed(recipe_file, seed)
    base = TaggedModel.from_pretrained(recipe.model)
    plans = plan(recipe, base, TagStore(store), log=lambda m: None, progress=False)
    m = TaggedModel(base.base, base.tokenizer, base.model_name)
    for t in recipe.tags:
        m.add_tag(t, seed=seed)
    return {"validation_loss": {
        (e.name or e.source): lm_metrics(m, d.texts, max_length=p.stage.train.max_length)["loss"]
        for p in plans for e, d in p.evals}}


def measure(recipe_file: Path, seed: int, store: Path, progress: bool) -> dict:
    recipe = with_seed(recipe_file, seed)
    t0 = time.perf_counter()
    summary = run(recipe, TagStore(store), log=lambda m: None, progress=progress)
    wall = time.perf_counter() - t0
    losses = {ev.name: ev.metrics["loss"] for s in summary.stages for ev in s.eval}
    return {"recipe": str(recipe_file.relative_to(ROOT)), "seed": seed,
            "steps": summary.steps_run,
            "train_seconds": round(sum(s.seconds or 0 for s in summary.stages), 1),
            "wall_seconds": round(wall, 1), "validation_loss": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/joint_vs_sequential.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"untrained": [], "sequential": [], "joint": []}
    for seed in args.seeds:
        for name in ("sequential", "joint"):
            with tempfile.TemporaryDirectory(prefix="tagllm-store-") as store:
                recipe = ROOT / "recipes" / f"domains-{name}.yaml"
                if name == "sequential":
                    runs["untrained"].append(untrained(recipe, seed, Path(store)))
                runs[name].append(measure(recipe, seed, Path(store), args.progress))
    domains = list(runs["sequential"][0]["validation_loss"])
    table = Table(title="joint vs sequential domain tags (same steps, batch and data; "
                        f"seeds {args.seeds})")
    for col in ("", "seed", "steps", "training s", "wall s",
                *(f"val loss {k}" for k in domains)):
        table.add_column(col, justify="right")
    for name, rs in runs.items():
        for seed, r in zip(args.seeds, rs, strict=True):
            table.add_row(name, str(seed), str(r.get("steps", 0)),
                          f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-",
                          f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else "-",
                          *(f"{r['validation_loss'][k]:.4f}" for k in domains))
    seq, joint = runs["sequential"], runs["joint"]

    def mean(rs: list[dict], key: str, sub: str | None = None) -> float:
        return sum((r[key][sub] if sub else r[key]) for r in rs) / len(rs)

    table.add_row("joint / sequential (mean)", "", "",
                  f"{mean(joint, 'train_seconds') / mean(seq, 'train_seconds'):.2f}",
                  f"{mean(joint, 'wall_seconds') / mean(seq, 'wall_seconds'):.2f}",
                  *(f"{mean(joint, 'validation_loss', k) / mean(seq, 'validation_loss', k):.3f}"
                    for k in domains))
    Console().print(table)
    results = runs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
