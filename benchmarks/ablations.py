"""QED ablations in the manner of the paper's Table 4, and the tag-length sweep.

Everything runs in one process on the QED recipe's data (4,000 MOSES training molecules,
the test sample of 1,000 left out, the trained ``<SMILES>`` tag of ``tagllm run
recipes/qed.yaml``) with the library's own training (:func:`tagllm.training.fit_tag`: the
recipe's stage-2 settings, a seeded 10% validation split, the step of lowest validation loss
kept, step 0 = the untrained tag with its closed-form head included). One frozen-prefix
cache serves every run, so each molecule's prefix is computed once.

Rows (each: test MSE / Pearson, the validation loss it was chosen by, seconds, trainable
parameters, and the paired-bootstrap 95% interval of its difference from the trained
p = 10 tag of the same seed):

- ``p=P seed=S``: the function tag with P vectors (P in --p), for each seed in --seeds;
  also its untrained step 0 ("ablation") on test;
- ``p=10 seed=S refit``: the same training with ``refit_head`` (the head re-fitted in
  closed form on the kept tag's features, kept if validation improves);
- ``no domain tag``: "{smiles} <QED>", p = 10, the same seeds;
- ``no function tag``: a closed-form linear head on the last position of "<SMILES> {smiles}";
- ``tags as text``: the registered ``text_tags`` baseline ("SMILES: {smiles} QED:");
- ``no regression head``: the function tag trained by next-token prediction on
  "<SMILES> {smiles} <QED> 0.73" and the number parsed from its greedy output (seed 0).

The p chosen on validation (lowest mean validation loss over seeds) is reported as such.

    .venv/bin/python benchmarks/ablations.py --out benchmarks/results/DATE-qed-ablations.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import time
from datetime import date
from types import SimpleNamespace

import numpy as np
import torch

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.evaluation.baselines import TagsAsText, Task, linear_fit_predict
from tagllm.evaluation.metrics import paired_bootstrap, regression_metrics
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.scoring import frozen_features
from tagllm.sources import load_source
from tagllm.tags import tag_as_words
from tagllm.training import fit_tag

NO_FUNCTION = "no function tag (linear head on the last position)"
AS_TEXT = "tags as text (SMILES: ... QED:) + linear head"
AS_NUMBER = "no regression head (number generated as text, parsed)"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    m = regression_metrics(y, pred)
    return {"mse": m["mse"], "pearson": m["pearson"]}


@torch.no_grad()
def head_predictions(m: TaggedModel, prefix: FrozenPrefix, ids: list[list[int]], tag: str,
                     bs: int = 64) -> np.ndarray:
    """The head of ``tag`` on pre-encoded inputs through the shared prefix cache."""
    head, out = m.head(tag), []
    for s in range(0, len(ids), bs):
        out.append(head.postprocess(head(prefix.tag_features(ids[s:s + bs], tag))).cpu())
    return torch.cat(out).float().numpy()[:, 0]


@torch.no_grad()
def last_position(m: TaggedModel, texts: list[str], bs: int = 32) -> np.ndarray:
    """(N, H) the last layer at each input's last position (right padding)."""
    out = []
    for s in range(0, len(texts), bs):
        batch = m.encode(texts[s:s + bs])
        h = m.hidden_states(batch).float()  # (B, T, H)
        out.append(h[torch.arange(h.shape[0]), batch.attention_mask.sum(1) - 1].cpu())
    return torch.cat(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smiles_tag", default="runs/qed/tags/SMILES")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--p", default="1,2,5,10,20")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--parts", default="sweep,refit,no_domain,no_function,text,lm",
                    help="which groups of rows to run")
    ap.add_argument("--refit_seeds", default="0", help="seeds of the refit_head variant")
    ap.add_argument("--no_domain_seeds", default="0")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of OUT.partial and run only the others")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ps = [int(x) for x in args.p.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    refit_seeds = [int(x) for x in args.refit_seeds.split(",") if x]
    no_domain_seeds = [int(x) for x in args.no_domain_seeds.split(",") if x]
    parts = set(args.parts.split(","))

    t_all = time.perf_counter()
    m = TaggedModel.from_pretrained(args.model, tags=[args.smiles_tag])
    test, _ = load_source("moses:test", args.test, 0, label="qed", progress=False)
    train, _ = load_source("moses:train", args.rows, 0, label="qed",
                           exclude_smiles=test.columns["smiles"], progress=False)
    smi_tr, smi_te = list(train.columns["smiles"]), list(test.columns["smiles"])
    y_tr = np.asarray(train.columns["qed"], float)
    y_te = np.asarray(test.columns["qed"], float)

    def cfg(seed: int, refit: bool = False) -> TrainConfig:  # the QED recipe's stage 2
        return TrainConfig(steps=args.steps, batch_size=32, lr=1e-3, head_lr=1e-4,
                           warmup_steps=20, warm_start_examples=args.rows, seed=seed,
                           log_every=10_000, prefix_cache_gb=16, refit_head=refit)

    rows: list[dict] = []
    preds: dict[str, np.ndarray] = {}
    runs: list[dict] = []  # earlier invocations of a resumed run
    this_run = {"command": "benchmarks/ablations.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()), "date": date.today().isoformat()}

    def save_partial() -> None:  # what is done so far survives a crash of a long run
        this_run.update(seconds=round(time.perf_counter() - t_all, 1),
                        peak_rss_gb=round(peak_gb(), 2))
        with open(args.out + ".partial", "w") as f:
            json.dump({"rows": rows, "runs": [*runs, this_run],
                       "predictions": {k: np.round(v, 6).tolist() for k, v in preds.items()}},
                      f)

    if args.resume:  # rows of an interrupted run: kept, not run again
        with open(args.out + ".partial") as f:
            done = json.load(f)
        if isinstance(done, list):  # the first format kept no predictions
            done = {"rows": done, "predictions": {}}
        rows.extend(done["rows"])
        runs.extend(done.get("runs", []))
        preds.update({k: np.asarray(v) for k, v in done["predictions"].items()})
        log(f"resumed {len(rows)} rows from {args.out}.partial")

    def todo(name: str) -> bool:
        return all(r["name"] != name for r in rows)

    def train_tag(name: str, p: int, seed: int, template: str, prefix: FrozenPrefix | None,
                  refit: bool = False) -> FrozenPrefix:
        m.add_tag(TagConfig(name, kind="function", num_tokens=p,
                            head=HeadConfig("regression")), seed=seed)
        texts = [template.format(smiles=s, tag=name) for s in smi_tr]
        test_ids = [m.tagtok.encode(template.format(smiles=s, tag=name)).ids for s in smi_te]
        prefix = prefix or FrozenPrefix(m, [name], budget_bytes=16e9)
        untrained: dict = {}

        def at_step0() -> dict:
            untrained["pred"] = head_predictions(m, prefix, test_ids, name)
            return {}

        t0 = time.perf_counter()
        res = fit_tag(m, name, texts, y_tr, cfg=cfg(seed, refit), progress=False,
                      log=lambda s: None, after_warm_start=at_step0, prefix=prefix)
        pred = head_predictions(m, prefix, test_ids, name)
        seconds = time.perf_counter() - t0
        best = min(res.curve, key=lambda c: c["validation_loss"])
        start = next(c for c in res.curve if c["step"] == 0)
        key = name
        preds[key], preds[key + ":step0"] = pred, untrained["pred"]
        rows.append({"name": key, "p": p, "seed": seed, "template": template,
                     "parameters": p * m.hidden_size + m.hidden_size + 1,
                     "seconds": round(seconds, 1), "best_step": res.best_step,
                     "validation_loss": best["validation_loss"],
                     "validation_loss_step0": start["validation_loss"],
                     "test": metrics(y_te, pred), "test_step0": metrics(y_te, untrained["pred"]),
                     "trained_minus_step0": paired_bootstrap(y_te, pred, untrained["pred"],
                                                             metrics),
                     "refit": res.refit, "curve": res.curve})
        r = rows[-1]
        save_partial()
        log(f"{key}: kept step {r['best_step']} (val {r['validation_loss']:.4f} vs "
            f"{r['validation_loss_step0']:.4f}); test MSE {r['test']['mse']:.5f} / Pearson "
            f"{r['test']['pearson']:.3f}, step 0 {r['test_step0']['mse']:.5f} / "
            f"{r['test_step0']['pearson']:.3f}; {seconds:.0f} s, peak {peak_gb():.1f} GB, "
            f"prefix {prefix.hits} hits / {prefix.misses} computed")
        return prefix

    def simple_row(name: str, pred: np.ndarray, seconds: float, parameters: int,
                   **extra) -> None:
        preds[name] = pred
        rows.append({"name": name, "seconds": round(seconds, 1), "parameters": parameters,
                     "test": metrics(y_te, pred), **extra})
        save_partial()
        log(f"{name}: test MSE {rows[-1]['test']['mse']:.5f} / Pearson "
            f"{rows[-1]['test']['pearson']:.3f}; {seconds:.0f} s")

    if "no_function" in parts and todo(NO_FUNCTION):
        t0 = time.perf_counter()
        feats = last_position(m, [f"<SMILES> {s}" for s in smi_tr + smi_te])
        pred = linear_fit_predict(feats[:len(smi_tr)], y_tr, feats[len(smi_tr):])
        simple_row(NO_FUNCTION, pred, time.perf_counter() - t0, m.hidden_size + 1)
    if "text" in parts and todo(AS_TEXT):
        t0 = time.perf_counter()
        words = {"<SMILES>": tag_as_words(m.bank.configs["<SMILES>"]), "<QED>": "QED:"}
        task = Task(features=lambda t: frozen_features(m, t), tag_words=words)
        method = TagsAsText(task)
        fmt = "<SMILES> {smiles} <QED>"
        method.fit(SimpleNamespace(table=None, texts=[fmt.format(smiles=s) for s in smi_tr],
                                   targets=y_tr))
        pred = method.predict(SimpleNamespace(table=None, targets=y_te,
                                              texts=[fmt.format(smiles=s) for s in smi_te]))
        simple_row(AS_TEXT, pred, time.perf_counter() - t0, m.hidden_size + 1)
    # the order puts the expensive rows last: p = 20 costs about twice p = 10 per step
    plan = [(10, s, False) for s in seeds]
    plan += [(10, s, True) for s in refit_seeds if "refit" in parts]
    plan += [(p, s, False) for p in ps if p < 10 for s in seeds]
    late = [(p, s, False) for p in ps if p > 10 for s in seeds]
    prefix = None
    if "sweep" in parts:
        for p, seed, refit in plan:
            name = f"<QED_p{p}_s{seed}{'_refit' if refit else ''}>"
            if todo(name):
                prefix = train_tag(name, p, seed, "<SMILES> {smiles} {tag}", prefix, refit)
    del prefix  # the next rows share no prefix with these
    if "lm" in parts and todo(AS_NUMBER):
        t0 = time.perf_counter()
        name = "<QED_text>"
        m.add_tag(TagConfig(name, kind="function", num_tokens=10), seed=0)
        texts = [f"<SMILES> {s} {name} {q:.2f}" for s, q in zip(smi_tr, y_tr, strict=True)]
        res = fit_tag(m, name, texts, None, cfg=cfg(0), progress=False, log=lambda s: None)
        outs = m.generate([f"<SMILES> {s} {name}" for s in smi_te], max_new_tokens=6,
                          batch_size=32, stop=["\n"])
        parsed = [re.search(r"-?\d+(?:\.\d+)?", o) for o in outs]
        fallback = float(y_tr.mean())
        pred = np.array([float(x.group(0)) if x else fallback for x in parsed])
        simple_row(AS_NUMBER, pred, time.perf_counter() - t0, 10 * m.hidden_size,
                   best_step=res.best_step, curve=res.curve,
                   unparsed=int(sum(x is None for x in parsed)), outputs=outs[:20])
    if "no_domain" in parts:
        prefix = None
        for seed in no_domain_seeds:
            if todo(f"<QED_nodomain_s{seed}>"):
                prefix = train_tag(f"<QED_nodomain_s{seed}>", 10, seed, "{smiles} {tag}",
                                   prefix)
        del prefix
    prefix = None
    if "sweep" in parts:
        for p, seed, _ in late:
            if todo(f"<QED_p{p}_s{seed}>"):
                prefix = train_tag(f"<QED_p{p}_s{seed}>", p, seed, "<SMILES> {smiles} {tag}",
                                   prefix)
    del prefix

    # choices on validation only: the p with the lowest mean validation loss over seeds
    sweep = [r for r in rows if "p" in r and "nodomain" not in r["name"]
             and "refit" not in r["name"]]
    summary: dict = {}
    if sweep:
        by_p = {p: [r for r in sweep if r["p"] == p] for p in ps}
        summary["by_p"] = {str(p): {
            "validation_loss_mean": float(np.mean([r["validation_loss"] for r in rs])),
            "test_mse_mean": float(np.mean([r["test"]["mse"] for r in rs])),
            "test_mse_sd": float(np.std([r["test"]["mse"] for r in rs], ddof=1))
            if len(rs) > 1 else None,
            "test_pearson_mean": float(np.mean([r["test"]["pearson"] for r in rs])),
            "test_pearson_sd": float(np.std([r["test"]["pearson"] for r in rs], ddof=1))
            if len(rs) > 1 else None,
            "best_steps": [r["best_step"] for r in rs]} for p, rs in by_p.items() if rs}
        # validation rows depend on the seed: compare p only on the seeds every p has
        common = set.intersection(*({r["seed"] for r in rs} for rs in by_p.values() if rs))
        val = {p: np.mean([r["validation_loss"] for r in rs if r["seed"] in common])
               for p, rs in by_p.items() if rs}
        summary["p_chosen_on_validation"] = {"p": int(min(val, key=val.get)),
                                             "seeds": sorted(common),
                                             "validation_loss": {str(p): float(v)
                                                                 for p, v in val.items()}}
    # every row against the trained p = 10 tag (the recipe's setting) of the first seed whose
    # test predictions this run holds (a resumed run may lack an earlier run's)
    ref = next((f"<QED_p10_s{s}>" for s in seeds if f"<QED_p10_s{s}>" in preds), None)
    if ref is not None:
        for r in rows:
            if r["name"] != ref and r["name"] in preds:
                r["reference_minus_this"] = paired_bootstrap(y_te, preds[ref], preds[r["name"]],
                                                             metrics)
    result = {"benchmark": "qed-ablations", "date": date.today().isoformat(),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads",
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "model": args.model, "train_rows": len(smi_tr), "test_rows": len(smi_te),
              "reference": ref, "summary": summary, "rows": rows}
    save_partial()  # this run's time and peak
    all_runs = [*runs, this_run]
    # every invocation that made these rows (a resumed run has several): commands, seconds,
    # peaks; the totals cover only the invocations recorded (older files lacked the list)
    result.update(runs=all_runs, seconds=round(sum(r["seconds"] for r in all_runs), 1),
                  peak_rss_gb=max(r["peak_rss_gb"] for r in all_runs))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {args.out} ({result['seconds']:.0f} s, peak {result['peak_rss_gb']} GB)")


if __name__ == "__main__":
    main()
