"""Can training a function tag beat its own untrained start? A resumable sweep.

Every cell trains a fresh function tag with the library's own
:func:`tagllm.training.fit_tag` on one task's data (``--task``: QED on 4,000 MOSES training
molecules with 1,000 test molecules left out, as the QED recipe; the whole solubility or
B3DB training set; the trained ``<SMILES>`` tag frozen), with one cell's settings: learning
rate, optimizer, schedule, re-fitting the head every k steps, the tag's parameterisation and
the head's readout. Every cell validates every ``--eval_every`` steps on a seeded 10% of the
training rows, stops early after ``--patience`` points without a new lowest validation loss
(at most ``--cap`` steps) and keeps its best step; step 0 is the untrained tag with its
closed-form head. One frozen-prefix cache serves every cell.

Choices are made on validation only. ``--score`` then scores the test set once, for the cell
with the lowest validation loss (and the best cell of each variant), against the same tag
untrained with the same readout, a Morgan random forest, Chemprop and the linear probe
(at the layer the head reads), with
paired-bootstrap 95% intervals, and writes ``summary``.

A killed sweep continues where it stopped: finished cells are kept in ``OUT.partial`` with
their tag folders under ``OUT.d/``, and a cell cut short resumes from its checkpoint.

    .venv/bin/python benchmarks/tag_training_sweep.py --smiles_tag STORE/KEY \\
        --grid A --out benchmarks/results/DATE-tag-training-sweep.json
    .venv/bin/python benchmarks/tag_training_sweep.py ... --score
    .venv/bin/python benchmarks/tag_training_sweep.py --combine QED.json SOL.json BBB.json \
        --out benchmarks/results/DATE-tag-training-sweep.json

Other seeds of a chosen setting (``--seed N --only NAME --score``, each its own file) join
the combined file with ``--add_seeds SEED.json ... --out COMBINED.json``: per task and
setting, every seed's test scores against the same seed's untrained start.

``tagllm report`` (``make report``) shows the combined file: the test scores with their
intervals and every cell's validation curve.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import torch

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.evaluation.baselines import forest_baseline, linear_fit_predict
from tagllm.evaluation.chemprop_fit import fit_chemprop, predict_chemprop
from tagllm.evaluation.metrics import (
    classification_metrics,
    paired_bootstrap,
    regression_metrics,
)
from tagllm.model import TaggedModel
from tagllm.paths import prefix_cache_dir
from tagllm.prefix import FrozenPrefix
from tagllm.scoring import frozen_features
from tagllm.sources import load_source
from tagllm.training import fit_tag

#: name: (training source and rows, test source and rows, label, head, the test metric that
#: decides "better" and whether higher is better)
TASKS = {
    "qed": ("moses:train", 4000, "moses:test", 1000, "qed", {"kind": "regression"},
            "mse", False),
    "solubility": ("solubility:train", None, "solubility:test", None, "logS",
                   {"kind": "regression"}, "mse", False),
    "bbb": ("b3db:train", None, "b3db:test", None, "bbb",
            {"kind": "classification", "num_outputs": 2}, "auroc", True),
}
LRS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1)
LOW_LRS = (1e-4, 3e-4, 1e-3)


VARIANTS = {  # name: (TrainConfig overrides, TagConfig overrides)
    "plain-adamw": ({}, {}),
    "residual-adamw": ({}, {"reparam": "residual_mlp"}),
    "deep-adamw": ({}, {"depth": "deep"}),
    "plain-adafactor": ({"optimizer": "adafactor"}, {}),
}


def grid(name: str, best: Sequence[str] = ()) -> list[dict]:
    """The cells of a named grid: {"name", "train": TrainConfig overrides, "tag": TagConfig
    overrides, "head": HeadConfig overrides}. A: every variant at every learning rate, the
    last layer read at the tag, interleaved so that a cut-short sweep has every variant at
    the rates tried. R: lower rates for the plain and deep tags, each also with the head
    held (lr 1e-6) and re-fitted in closed form every 50 steps (before each validation; a
    re-fit on 3,600 rows costs about as much as 50 steps). B: the ``best`` cells
    of A, R, H or S with the readout layer and pooling chosen on validation (``auto``).
    H: the head held and re-fitted every 100 steps, at tag rates where a jointly trained
    head diverged (the head's own AdamW steps, not the tag's, move the prediction most:
    576 weights moving together by head_lr each).
    S: the head held and re-fitted every 10 steps on the features training has seen
    (``refit_rows: seen``: a ridge solve, no extra pass).
    P: the function tag placed before the molecule (``{tag} <SMILES> {smiles}``), so that
    its vectors reach every molecule token through attention (behind the molecule, as in
    the other grids, they reach only the tag's own positions); the head reads the tag state
    with the mean over the molecule's tokens (the tag state alone is the same for every
    row there), at the layer chosen on validation; plain and deep (P-tuning v2) tags, the
    head re-fitted every 25 steps on the features seen (nothing before the tag to cache:
    every step is a full pass, so an exact re-fit would cost a pass over the data)."""
    cells = [{"name": f"{v}-lr{lr:g}", "train": {"lr": lr, **t}, "tag": g}
             for lr in LRS for v, (t, g) in VARIANTS.items()]
    if name == "A":
        return cells
    if name == "R":  # below grid A's rates, with and without the head re-fitted every 50
        return [{"name": f"{v}{'-refit50' if refit else ''}-lr{lr:g}",
                 "train": {"lr": lr, **VARIANTS[v][0],
                           **({"refit_every": 50, "head_lr": 1e-6} if refit else {})},
                 "tag": VARIANTS[v][1]}
                for lr in LOW_LRS for v in ("plain-adamw", "deep-adamw")
                for refit in (True, False)]
    if name == "H":  # the head held (lr 1e-6) and re-fitted every 100 steps, higher tag rates
        return [{"name": f"{v}-held-refit100-lr{lr:g}",
                 "train": {"lr": lr, **VARIANTS[v][0], "refit_every": 100, "head_lr": 1e-6,
                           "eval_every": 100, "patience": 3},
                 "tag": VARIANTS[v][1]}
                for v, lr in (("plain-adamw", 1e-3), ("deep-adamw", 1e-3),
                              ("plain-adamw", 3e-3), ("residual-adamw", 1e-3))]
    if name == "S":  # the head held and re-fitted every 10 steps on the features seen
        return [{"name": f"{v}-seen10-lr{lr:g}",
                 "train": {"lr": lr, **VARIANTS[v][0], "refit_every": 10,
                           "refit_rows": "seen", "head_lr": 1e-6},
                 "tag": VARIANTS[v][1]}
                for v, lr in (("plain-adamw", 1e-4), ("plain-adamw", 3e-4),
                              ("deep-adamw", 3e-4), ("plain-adamw", 1e-3))]
    if name == "P":  # the tag before the molecule: it reaches the tokens the mean reads
        return [{"name": f"{v}-seen25-lr{lr:g}-before",
                 "train": {"lr": lr, **VARIANTS[v][0], "refit_every": 25,
                           "refit_rows": "seen", "head_lr": 1e-6},
                 "tag": VARIANTS[v][1], "before": True,
                 "head": {"readout_layer": "auto", "pool": "tag+mean"}}
                for v, lr in (("deep-adamw", 1e-3), ("plain-adamw", 1e-3),
                              ("deep-adamw", 3e-4), ("plain-adamw", 1e-2))]
    if name == "B":
        by_name = {c["name"]: c for g in ("R", "H", "S") for c in [*cells, *grid(g)]}
        return [{**by_name[b], "name": f"{b}-Lauto",
                 "head": {"readout_layer": "auto", "pool": "auto"}} for b in best]
    raise SystemExit(f"unknown grid {name!r}; known: A, B, H, P, R, S")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE and Pearson of values, or accuracy and AUROC of class probabilities (N, k)."""
    if pred.ndim == 2:
        return classification_metrics(y, pred)
    m = regression_metrics(y, pred)
    return {"mse": m["mse"], "pearson": m["pearson"]}


def texts(smiles: Sequence[str], tag: str, cell: dict) -> list[str]:
    """The cell's inputs: the function tag behind the molecule, or before it (grid P)."""
    if cell.get("before"):
        return [f"{tag} <SMILES> {s}" for s in smiles]
    return [f"<SMILES> {s} {tag}" for s in smiles]


def tag_name(task: str, cell: dict) -> str:
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in cell["name"])
    return f"<{task}_{safe}>"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smiles_tag", help="the trained <SMILES> tag folder")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--task", default="qed", choices=sorted(TASKS))
    ap.add_argument("--rows", type=int, default=None,
                    help="training rows (default: the task's; QED 4,000, else all)")
    ap.add_argument("--test", type=int, default=None,
                    help="test rows (default: the task's; QED 1,000, else all)")
    ap.add_argument("--grid", default="A", help="comma-separated: A (optimisation and "
                    "capacity), R (lower rates, head re-fits), H (the head held and "
                    "re-fitted), S (re-fitted on the rows seen), P (the tag before the "
                    "molecule) or B (readout layer and "
                    "pooling for the --best cells)")
    ap.add_argument("--best", default="", help="B: comma-separated cell names")
    ap.add_argument("--only", default="", help="comma-separated cell names (default: all)")
    ap.add_argument("--seed", type=int, default=0,
                    help="the cells' seed: the tag's start, the validation split and the "
                    "batch order (the training and test rows stay the same); a cell run "
                    "with a seed other than 0 is named NAME-seedN")
    ap.add_argument("--cap", type=int, default=2000, help="most steps of a cell")
    ap.add_argument("--eval_every", type=int, default=50)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--prefix_cache_gb", type=float, default=6.0)
    ap.add_argument("--prefix_cache_disk_gb", type=float, default=0.0,
                    help="prefixes beyond the RAM budget go to temporary files (QED at "
                    "20,000 molecules: about 18 GB in bfloat16)")
    ap.add_argument("--score", action="store_true",
                    help="score the test set once for the cells chosen on validation")
    ap.add_argument("--add_seeds", nargs="+", default=None, metavar="SEED_RESULTS",
                    help="add the scored files of --seed runs to the combined file --out")
    ap.add_argument("--combine", nargs="+", default=None, metavar="TASK_RESULTS",
                    help="write --out from the scored results files of several tasks")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.combine:
        return combine(args.out, args.combine)
    if args.add_seeds:
        return add_seeds(args.out, args.add_seeds)
    if not args.smiles_tag:
        ap.error("--smiles_tag is required (except with --combine)")
    cells = [c for g in args.grid.split(",")
             for c in grid(g, [b for b in args.best.split(",") if b])]
    if args.only:
        keep = set(args.only.split(","))
        cells = [c for c in cells if c["name"] in keep]
    if args.seed:
        cells = [{**c, "name": f"{c['name']}-seed{args.seed}", "seed": args.seed}
                 for c in cells]
    folder = Path(args.out + ".d")
    partial = Path(args.out + ".partial")
    done: dict = json.loads(partial.read_text()) if partial.exists() else {"cells": {},
                                                                              "runs": []}
    t_all = time.perf_counter()
    this_run = {"command": "benchmarks/tag_training_sweep.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()), "date": date.today().isoformat()}

    def save() -> None:
        this_run.update(seconds=round(time.perf_counter() - t_all, 1),
                        peak_rss_gb=round(peak_gb(), 2))
        tmp = partial.with_suffix(".tmp")
        tmp.write_text(json.dumps({**done, "runs": [*done["runs"], this_run]}))
        tmp.replace(partial)

    tr_src, n_tr, te_src, n_te, label, head, _, _ = TASKS[args.task]
    n_tr = args.rows or n_tr
    m = TaggedModel.from_pretrained(args.model, tags=[args.smiles_tag])
    # rows over 256 tokens with the function tag's 10 vectors are left out and counted
    # (B3DB holds a few large molecules), as the recipes' too_long: skip does
    limit = m.tagtok.length_limit("<SMILES> {smiles}", 256 - 10, skip=True, log=log)
    test, _ = load_source(te_src, args.test or n_te, 0, label=label, progress=False,
                          limit=limit)
    train, _ = load_source(tr_src, n_tr, 0, label=label, limit=limit,
                           exclude_smiles=test.columns["smiles"], progress=False)
    smi_tr, smi_te = list(train.columns["smiles"]), list(test.columns["smiles"])
    y_tr = np.asarray(train.columns[label], float)
    y_te = np.asarray(test.columns[label], float)
    log(f"{args.task}: {len(smi_tr)} training and {len(smi_te)} test molecules")
    prefix = FrozenPrefix(m, [], budget_bytes=args.prefix_cache_gb * 1e9,
                          dtype=torch.bfloat16, disk_bytes=args.prefix_cache_disk_gb * 1e9,
                          disk_dir=prefix_cache_dir())

    for cell in cells:
        if cell["name"] in done["cells"]:
            continue
        name = tag_name(args.task, cell)
        m.add_tag(TagConfig(name, kind="function", num_tokens=10,
                            head=HeadConfig(**head, **cell.get("head", {})),
                            **cell.get("tag", {})), seed=cell.get("seed", 0))
        cfg = TrainConfig(**{"steps": args.cap, "batch_size": args.batch_size,
                             "warmup_steps": 20, "schedule": "constant",
                             "head_lr": 1e-4, "warm_start_examples": len(smi_tr),
                             "eval_every": args.eval_every, "patience": args.patience,
                             "log_every": 100, "prefix_cache_gb": args.prefix_cache_gb,
                             "seed": cell.get("seed", 0),
                             **cell.get("train", {})})
        start = folder / "cells" / (cell["name"] + "-start")

        def save_start(name: str = name, start: Path = start) -> dict:
            if not start.exists():
                m.save_tag(name, start)
            return {}

        t0 = time.perf_counter()
        res = fit_tag(m, name, texts(smi_tr, name, cell), y_tr, cfg=cfg,
                      progress=False, log=log, after_warm_start=save_start,
                      checkpoint_dir=folder / "work" / cell["name"], prefix=prefix)
        m.save_tag(name, folder / "cells" / cell["name"])
        shutil.rmtree(folder / "work" / cell["name"], ignore_errors=True)
        step0 = next(c for c in res.curve if c["step"] == 0)
        best = min(res.curve, key=lambda c: c["validation_loss"])
        done["cells"][cell["name"]] = {
            **cell, "train_config": cfg.result_dict(), "steps_run": res.steps,
            "stopped_early": res.stopped_early, "kept_step": res.kept_step,
            "validation_loss": best["validation_loss"],
            "validation_loss_step0": step0["validation_loss"],
            "seconds": round(time.perf_counter() - t0, 1),
            "seconds_per_step": round(res.seconds / max(res.steps_run, 1), 3),
            "readout": (res.warm_start or {}).get(name, {}).get("readout"),
            "curve": res.curve}
        save()
        r = done["cells"][cell["name"]]
        log(f"{cell['name']}: kept step {r['kept_step']} of {r['steps_run']} (validation "
            f"{r['validation_loss']:.4f}, step 0 {r['validation_loss_step0']:.4f}); "
            f"{r['seconds']:.0f} s, {r['seconds_per_step']} s/step, peak {peak_gb():.1f} GB")

    if args.score:
        score(args, done, smi_tr, y_tr, smi_te, y_te, folder)
        save()
        out = {"date": date.today().isoformat(), "machine": platform.platform(),
               "processor": platform.processor(), "torch": torch.__version__,
               "model": args.model, "task": args.task, "train_rows": len(smi_tr),
               "test_rows": len(smi_te), **done, "runs": [*done["runs"], this_run]}
        Path(args.out).write_text(json.dumps(out, indent=1))
        log(f"wrote {args.out}")


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two tag folders hold identical tensors (vectors, head, offsets)."""
    from safetensors.torch import load_file

    x, y = load_file(str(a / "tag.safetensors")), load_file(str(b / "tag.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x)


def seed_entry(doc: dict, name: str, seed: int) -> dict:
    """One seed of a setting as the combined file lists it: its training (steps run, kept
    step, validation loss against step 0) and its test scores against its own untrained
    start, the random forest and Chemprop."""
    cell = doc["cells"][name]
    s = next((e for e in doc.get("summary", []) if e["setting"] == name), None)
    if s is None:
        raise SystemExit(f"{name}: not scored yet (run the sweep with --score first)")
    return {"seed": seed, "cell": name, "steps_run": cell["steps_run"],
            "kept_step": cell["kept_step"], "validation_loss": cell["validation_loss"],
            "validation_loss_step0": cell["validation_loss_step0"], "test": s["test"],
            "untrained_test": s["untrained_test"],
            "trained_minus_untrained": s["trained_minus_untrained"],
            **{k: s[k] for k in ("trained_minus_rf", "trained_minus_chemprop") if k in s}}


def add_seeds(out: str, paths: Sequence[str]) -> None:
    """Add the scored files of other seeds (``--seed N``) to the combined file ``out``: under
    each task's ``seeds``, per setting, seed 0 (the sweep's own cell) and each added seed;
    the task's summary entry gets the seeds' intervals of trained minus untrained."""
    doc = json.loads(Path(out).read_text())
    for p in paths:
        extra = json.loads(Path(p).read_text())
        task = doc["tasks"][extra["task"]]
        for name, cell in extra["cells"].items():
            seed = cell.get("seed")
            base = name.removesuffix(f"-seed{seed}")
            if not seed or base not in task["cells"]:
                raise SystemExit(f"{p}: {name} is not another seed of a cell of {out}")
            seeds = task.setdefault("seeds", {}).setdefault(base, [seed_entry(task, base, 0)])
            seeds[:] = [e for e in seeds if e["seed"] != seed] + [seed_entry(extra, name, seed)]
            seeds.sort(key=lambda e: e["seed"])
            task["cells"][name] = cell
        task["runs"] += [r for r in extra["runs"] if r not in task["runs"]]
        for e in doc["summary"]:
            if e["task"] == extra["task"] and e["setting"] in task.get("seeds", {}):
                e["seeds"] = [{"seed": x["seed"], **x["trained_minus_untrained"]}
                              for x in task["seeds"][e["setting"]]]
    tmp = Path(out).with_suffix(".tmp")  # the combined file is replaced whole, never cut
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    log(f"wrote {out}: seeds {', '.join(paths)}")


def combine(out: str, paths: Sequence[str]) -> None:
    """One results file from the scored files of several tasks: ``summary`` holds each
    task's best setting overall (chosen on validation), ``tasks`` every task's file."""
    tasks = {}
    for p in paths:
        doc = json.loads(Path(p).read_text())
        if "summary" not in doc:
            raise SystemExit(f"{p}: not scored yet (run the sweep with --score first)")
        tasks[doc["task"]] = doc
    first = next(iter(tasks.values()))
    Path(out).write_text(json.dumps({
        "benchmark": "tag-training-sweep", "date": date.today().isoformat(),
        "machine": first["machine"], "processor": first["processor"],
        "summary": [next(e for e in d["summary"] if e["variant"] == "best overall")
                    for d in tasks.values()],
        "tasks": tasks}, indent=1))
    log(f"wrote {out}: {', '.join(tasks)}")


def score(args, done: dict, smi_tr: list[str],
          y_tr: np.ndarray, smi_te: list[str], y_te: np.ndarray, folder: Path) -> None:
    """Test scores, once, for the cells chosen on validation: the best cell overall and the
    best of each variant (the name without its learning rate)."""
    _, _, _, _, _, head, metric, higher = TASKS[args.task]
    classes = head.get("num_outputs", 0) if head["kind"] == "classification" else 0
    cells = done["cells"]
    chosen = {"best overall": min(cells, key=lambda k: cells[k]["validation_loss"])}
    for k in cells:
        variant = "-".join(p for p in k.split("-") if not p.startswith("lr"))
        if variant not in chosen or cells[k]["validation_loss"] < \
                cells[chosen[variant]]["validation_loss"]:
            chosen[variant] = k
    preds: dict[str, np.ndarray] = {}
    for k in sorted(set(chosen.values())):
        for which in (k + "-start", k):  # each in a fresh model: the two share a name
            if which == k and same_tensors(folder / "cells" / k,
                                           folder / "cells" / (k + "-start")):
                preds[k] = preds[k + "-start"]  # validation kept the untrained tag itself
                continue
            tm = TaggedModel.from_pretrained(args.model, tags=[args.smiles_tag,
                                                               folder / "cells" / which])
            tag = tm.head_tags()[0]
            out = tm.predict(texts(smi_te, tag, cells[k]), tag=tag, batch_size=64)
            preds[which] = out if classes else out[:, 0]
    baselines = {"rf": forest_baseline(smi_tr, y_tr, smi_te, classes=classes, seed=0)}
    fit = fit_chemprop(smi_tr, y_tr, classes, seed=0, validation=0.1)
    baselines["chemprop"] = predict_chemprop(fit, smi_te)
    plain = TaggedModel.from_pretrained(args.model)
    for layer in sorted({-1, *((cells[k].get("readout") or {}).get("layer", -1)
                               for k in chosen.values())}):  # the probe at each read layer
        feats = frozen_features(plain, smi_tr + smi_te, 64, False, layer)
        baselines[f"probe-L{layer}"] = linear_fit_predict(feats[:len(smi_tr)], y_tr,
                                                          feats[len(smi_tr):], classes)
    summary = []
    for variant, k in chosen.items():
        a, b = preds[k], preds[k + "-start"]
        diff = paired_bootstrap(y_te, a, b, metrics)
        low, high = diff[metric]
        summary.append({
            "task": args.task, "variant": variant, "setting": k,
            "test": metrics(y_te, a), "untrained_test": metrics(y_te, b),
            "trained_minus_untrained": {"metric": metric, "low": low, "high": high,
                                        "better": low > 0 if higher else high < 0},
            "intervals_trained_minus_untrained": diff,
            **{f"trained_minus_{n}": paired_bootstrap(y_te, a, p, metrics)
               for n, p in baselines.items()}})
    done["summary"] = summary
    done["baselines_test"] = {n: metrics(y_te, p) for n, p in baselines.items()}
    done["chemprop"] = {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run}
    for s in summary:
        d = s["trained_minus_untrained"]
        log(f"{s['variant']}: {s['setting']} test {metric} {s['test'][metric]:.5f} (untrained "
            f"{s['untrained_test'][metric]:.5f}, difference [{d['low']:+.5f}, "
            f"{d['high']:+.5f}])")


if __name__ == "__main__":
    main()
