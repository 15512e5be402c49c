"""Why does QED stage-2 training not beat its own starting point? A transparent loop.

Loads SmolLM2 and the trained <SMILES> tag, carves a seeded 10% validation split from the
QED recipe's 4,000 MOSES training molecules (test molecules excluded), warm-starts a fresh
<QED> head in closed form (ridge, as tagllm does) and then trains the tag (and head) with
AdamW + cosine schedule, as ``tagllm.training`` does, but in a few visible lines. Every
``every`` steps it records the mean training loss (standardised MSE), the validation MSE
with the current head, how far the tag moved (relative norm), and the validation MSE of a
ridge head *re-fitted* on the current tag's features of ``--refit_rows`` training rows.
The last separates "the tag's features got worse" from "the head no longer fits them".

    .venv/bin/python benchmarks/tag_training.py --tag runs/qed/tags/SMILES \\
        --configs '[{"lr": 1e-3, "head_lr": 1e-4, "steps": 200, "every": 25}]' \\
        --out benchmarks/results/qed-training.json

A config: lr, head_lr, steps, every, warmup (20), bs (32), seed (0), refit_every (0: never;
else re-fit the head in closed form every N steps, alternating with the tag's steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from transformers import get_cosine_schedule_with_warmup

from tagllm.config import HeadConfig, TagConfig
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.sources import load_source


def ridge_val(Ft: torch.Tensor, yt: np.ndarray, Fv: torch.Tensor, yv: np.ndarray
              ) -> tuple[float, float]:
    """Validation MSE (and alpha) of RidgeCV on standardised training features."""
    mu, sd = Ft.mean(0), Ft.std(0) + 1e-6
    reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(((Ft - mu) / sd).numpy(), yt)
    return float(np.mean((reg.predict(((Fv - mu) / sd).numpy()) - yv) ** 2)), float(reg.alpha_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default="runs/qed/tags/SMILES", help="the frozen <SMILES> tag")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", type=int, default=4000, help="MOSES training rows")
    ap.add_argument("--refit_rows", type=int, default=1500,
                    help="training rows for the re-fitted ridge diagnostic")
    ap.add_argument("--configs", required=True, help="JSON list of configs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    configs = json.loads(args.configs)

    m = TaggedModel.from_pretrained(args.model, tags=[args.tag])
    test, _ = load_source("moses:test", 1000, 0, label="qed", progress=False)
    tr, _ = load_source("moses:train", args.rows, 0, label="qed",
                        exclude_smiles=test.columns["smiles"], progress=False)
    texts = tr.render("<SMILES> {smiles} <QED>")
    y = np.asarray(tr.columns["qed"], float)
    perm = np.random.default_rng(0).permutation(len(texts))
    nv = len(texts) // 10
    vi, ti = perm[:nv], perm[nv:]  # validation, training rows
    sub = ti[:args.refit_rows]
    m.add_tag(TagConfig(name="<QED>", kind="function", num_tokens=10, head=HeadConfig()))
    head, tagp = m.head("<QED>"), m.bank.parameter("<QED>")
    ids = [m.tagtok.encode(t).ids for t in texts]
    prefix = FrozenPrefix(m, ["<QED>"], budget_bytes=12e9)  # shared by every config
    init_tag = tagp.detach().clone()

    def feats(rows: np.ndarray, bs: int = 64) -> torch.Tensor:  # (N, H) at <QED>'s last vector
        out = torch.zeros(len(rows), m.hidden_size)
        with torch.no_grad():
            for s in range(0, len(rows), bs):
                r = [int(i) for i in rows[s:s + bs]]
                out[s:s + len(r)] = prefix.tag_features([ids[i] for i in r], "<QED>")
        return out

    def val() -> tuple[float, torch.Tensor]:
        Fv = feats(vi)
        with torch.no_grad():
            p = head.postprocess(head(Fv)).view(-1).numpy()
        return float(np.mean((p - y[vi]) ** 2)), Fv

    results = []
    for c in configs:
        torch.manual_seed(c.get("seed", 0))
        with torch.no_grad():
            tagp.copy_(init_tag)
        m.set_trainable(["<QED>"])
        head.prepare(torch.tensor(y[ti], dtype=torch.float32))
        t0 = time.time()
        head.warm_start(feats(ti), y[ti], 1.0)
        v0, Fv = val()
        r0 = ridge_val(feats(sub), y[sub], Fv, y[vi])
        print(c, f"warm start val {v0:.5f} refit {r0}", f"{time.time() - t0:.0f}s", flush=True)
        hp = list(head.parameters())
        opt = torch.optim.AdamW([{"params": [tagp], "lr": c["lr"]},
                                 {"params": hp, "lr": c["head_lr"]}], weight_decay=0.0)
        sched = get_cosine_schedule_with_warmup(opt, c.get("warmup", 20), c["steps"])
        curve = [{"step": 0, "val": v0, "refit": r0[0]}]
        g = np.random.default_rng(c.get("seed", 0))
        order: list[int] = []
        losses = []
        bs, every = c.get("bs", 32), c.get("every", 50)
        for step in range(1, c["steps"] + 1):
            if len(order) < bs:
                order += g.permutation(ti).tolist()
            b, order = order[:bs], order[bs:]
            f = prefix.tag_features([ids[i] for i in b], "<QED>")
            loss = head.loss(head(f), torch.tensor(y[b], dtype=torch.float32))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hp + [tagp], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            if c.get("refit_every") and step % c["refit_every"] == 0:
                head.warm_start(feats(sub), y[sub], 1.0)
            if step % every == 0 or step == c["steps"]:
                v, Fv = val()
                row = {"step": step, "train": float(np.mean(losses[-every:])), "val": v,
                       "tag_move": float((tagp.detach() - init_tag).norm() / init_tag.norm())}
                row["refit"], row["alpha"] = ridge_val(feats(sub), y[sub], Fv, y[vi])
                curve.append(row)
                print(row, f"{time.time() - t0:.0f}s", flush=True)
        results.append({"config": c, "curve": curve})
    doc = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model,
           "rows": {"train": len(ti), "validation": len(vi), "refit": len(sub)},
           "results": results}
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)


if __name__ == "__main__":
    main()
