"""The QED pipeline end to end on the offline defaults.

Stage 1 trains ``<SMILES>`` by next-token prediction on MOSES training molecules; stage 2
loads it from its tag folder, frozen, and trains ``<QED>`` with a regression head on
``<SMILES> {smiles} <QED>``; the test set is a sample of MOSES's own test file, with no
molecule shared with training (compared as canonical SMILES). The result table puts the
tags beside a Morgan-fingerprint k-NN and the training-mean predictor on the same split.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagllm.config import HeadConfig, TagConfig, TrainConfig
from tagllm.data import parse_labels
from tagllm.evaluate import knn_baseline, mean_baseline, regression_metrics
from tagllm.model import TaggedModel
from tagllm.sources import load_source
from tagllm.train import fit_tag

SMILES_TEMPLATE = "<SMILES> {smiles}"
QED_TEMPLATE = "<SMILES> {smiles} <QED>"


@dataclass
class QEDDemoConfig:
    """Sizes of the default QED run (sized for about 15 minutes on 2 CPU cores)."""

    model: str = "smollm2"
    out: str = "runs/qed-demo"
    num_tokens: int = 10
    stage1_examples: int = 2000
    stage1_steps: int = 40
    stage1_batch: int = 16
    train_examples: int = 4000
    stage2_steps: int = 200
    stage2_batch: int = 32
    test_examples: int = 1000
    lr: float = 1e-3
    head_lr: float = 1e-4  # the head starts from the closed-form fit: move it gently
    prefix_cache_gb: float = 12.0
    ablation: bool = True  # also evaluate before tag training (closed-form head only)
    seed: int = 0
    progress: bool = True


def run_qed_demo(cfg: QEDDemoConfig, log=print) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    model = TaggedModel.from_pretrained(cfg.model)
    log(f"base model: {model.model_name} ({type(model.base).__name__}, "
        f"{sum(p.numel() for p in model.base.parameters()) / 1e6:.0f}M frozen parameters)")

    test, _ = load_source("moses:test", cfg.test_examples, cfg.seed, label="qed",
                          progress=cfg.progress)
    test_smiles = test["smiles"]
    train, _ = load_source("moses:train", cfg.train_examples, cfg.seed, label="qed",
                           exclude_smiles=test_smiles, progress=cfg.progress)
    lm, _ = load_source("moses:train", cfg.stage1_examples, cfg.seed + 1,
                        exclude_smiles=test_smiles, progress=cfg.progress)
    log(f"data: {len(lm)} stage-1 molecules, {len(train)} stage-2 training and "
        f"{len(test)} test molecules (MOSES train/test files, no test SMILES in training)")

    # Stage 1: the domain tag, by next-token prediction on SMILES.
    model.add_tag(TagConfig("<SMILES>", kind="domain", num_tokens=cfg.num_tokens),
                  seed=cfg.seed)
    s1 = TrainConfig(steps=cfg.stage1_steps, batch_size=cfg.stage1_batch, lr=cfg.lr,
                     warmup_steps=max(1, cfg.stage1_steps // 10), seed=cfg.seed, log_every=10)
    r1 = fit_tag(model, "<SMILES>", lm.render(SMILES_TEMPLATE), cfg=s1, progress=cfg.progress,
                 log=log)
    smiles_dir = model.save_tag("<SMILES>", out / "tags" / "SMILES", provenance={
        "stage": 1, "data": f"moses:train n={len(lm)} seed={cfg.seed + 1}",
        "template": SMILES_TEMPLATE, "train": s1.to_dict(), "final_loss": r1.final_loss,
        "seconds": round(r1.seconds, 1)})

    # Stage 2: a fresh tag bank on the same frozen base; <SMILES> loaded from its files.
    model = TaggedModel(model.base, model.tokenizer, model.model_name)
    model.load_tag(smiles_dir)  # frozen
    model.add_tag(TagConfig("<QED>", kind="function", num_tokens=cfg.num_tokens,
                            head=HeadConfig("regression")), seed=cfg.seed)
    y_train = parse_labels(train, "qed")
    s2 = TrainConfig(steps=cfg.stage2_steps, batch_size=cfg.stage2_batch, lr=cfg.lr,
                     head_lr=cfg.head_lr, warmup_steps=max(1, cfg.stage2_steps // 10),
                     seed=cfg.seed, warm_start_examples=len(train), log_every=20,
                     prefix_cache_gb=cfg.prefix_cache_gb)
    y_test = parse_labels(test, "qed")
    test_texts = test.render(QED_TEMPLATE)
    before: dict[str, float] = {}

    def evaluate_warm_start() -> None:  # the honest ablation: what do trained tags add?
        if cfg.ablation:
            p0 = model.predict(test_texts, tag="<QED>", progress=cfg.progress)[:, 0]
            before.update(regression_metrics(y_test, p0))

    r2 = fit_tag(model, "<QED>", train.render(QED_TEMPLATE), y_train, cfg=s2,
                 progress=cfg.progress, log=log, after_warm_start=evaluate_warm_start)

    pred = model.predict(test_texts, tag="<QED>", progress=cfg.progress)[:, 0]
    results = {
        "tags <SMILES> ... <QED>": regression_metrics(y_test, pred),
        "Morgan k-NN (k=5)": regression_metrics(
            y_test, knn_baseline(train["smiles"], y_train, test_smiles)),
        "training mean": regression_metrics(y_test, mean_baseline(y_train, len(y_test))),
    }
    if before:
        results["ablation: <QED> untrained, head fitted"] = before
    qed_dir = model.save_tag("<QED>", out / "tags" / "QED", trained_with=["<SMILES>"],
                             provenance={
        "stage": 2, "data": f"moses:train n={len(train)} seed={cfg.seed}",
        "template": QED_TEMPLATE, "train": s2.to_dict(), "final_loss": r2.final_loss,
        "warm_start": r2.warm_start, "seconds": round(r2.seconds, 1),
        "test": {"data": f"moses:test n={len(test)} seed={cfg.seed}",
                 **results["tags <SMILES> ... <QED>"]}})
    summary = {"config": cfg.__dict__, "n_train": len(train), "n_test": len(test),
               "results": results, "tags": [str(smiles_dir), str(qed_dir)],
               "seconds": round(time.perf_counter() - t_start, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def results_table(results: dict[str, dict[str, float]], title: str):
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    table.add_column("method")
    names = list(next(iter(results.values())))
    for n in names:
        table.add_column(n.upper() if n in ("mse", "mae") else n.capitalize(), justify="right")
    for method, m in results.items():
        table.add_row(method, *(_fmt(m[n]) for n in names))
    return table


def _fmt(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{x:.4f}"
