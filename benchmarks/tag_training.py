"""Why does QED stage-2 training not beat its own starting point? The library's loop, watched.

Loads SmolLM2 and the trained <SMILES> tag, holds out a seeded 10% of the QED recipe's 4,000
MOSES training molecules (test molecules excluded) and trains a fresh function tag per
config with :func:`tagllm.training.fit_tags` (closed-form warm start, then the tag and head
with AdamW, as every tag trains), on the held-out rows as its validation rows. At each
validation point it records, beside the loop's own numbers (mean standardised training
loss, validation loss), the validation MSE in QED units with the current head, how far the
tag moved (relative norm) and the validation MSE of a ridge head *re-fitted* on the current
tag's features of ``--refit_rows`` training rows. The last separates "the tag's features
got worse" from "the head no longer fits them".

    .venv/bin/python benchmarks/tag_training.py --tag src/tagllm/shipped_tags/smollm2/SMILES \\
        --configs '[{"lr": 1e-3, "head_lr": 1e-4, "steps": 200, "every": 25}]' \\
        --out benchmarks/results/DATE-qed-training.json

A config: lr, head_lr, steps, every, warmup (20), bs (32), seed (0), refit_every (0: never;
else the loop re-fits the head in closed form every N steps, on the warm-start rows).
Every run keeps its last step (``select: last``): the curve is the point here.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.sources import load_source
from tagllm.training import Part, fit_tags


def ridge_val(Ft: torch.Tensor, yt: np.ndarray, Fv: torch.Tensor, yv: np.ndarray
              ) -> tuple[float, float]:
    """Validation MSE (and alpha) of RidgeCV on standardised training features."""
    mu, sd = Ft.mean(0), Ft.std(0) + 1e-6
    reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(((Ft - mu) / sd).numpy(), yt)
    return float(np.mean((reg.predict(((Fv - mu) / sd).numpy()) - yv) ** 2)), float(reg.alpha_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default="src/tagllm/shipped_tags/smollm2/SMILES",
                    help="the frozen <SMILES> tag")
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
    y = np.asarray(tr.columns["qed"], float)
    perm = np.random.default_rng(0).permutation(len(y))
    nv = len(y) // 10
    vi, ti = perm[:nv], perm[nv:]  # validation, training rows
    sub = ti[:args.refit_rows]
    prefix = FrozenPrefix(m, [], budget_bytes=12e9)  # shared by every config

    results = []
    for i, c in enumerate(configs):
        tag = f"<QED{i}>"
        m.add_tag(TagConfig(name=tag, kind="function", num_tokens=10, head=HeadConfig()),
                  seed=c.get("seed", 0))
        texts = tr.render(f"<SMILES> {{smiles}} {tag}")
        ids = [m.tagtok.encode(t).ids for t in texts]
        start = m.bank.parameter(tag).detach().clone()

        def feats(rows: np.ndarray, tag: str = tag, ids: list = ids, bs: int = 64
                  ) -> torch.Tensor:  # (N, H) at the tag's last vector
            out = torch.zeros(len(rows), m.hidden_size)
            with torch.no_grad():
                for s in range(0, len(rows), bs):
                    r = [int(j) for j in rows[s:s + bs]]
                    out[s:s + len(r)] = prefix.tag_features([ids[j] for j in r], tag)
            return out

        def diagnose(step: int, tag: str = tag, feats=feats, start: torch.Tensor = start
                     ) -> dict:
            head, Fv = m.head(tag), feats(vi)
            with torch.no_grad():
                p = head.postprocess(head(Fv)).view(-1).numpy()
            refit, alpha = ridge_val(feats(sub), y[sub], Fv, y[vi])
            moved = (m.bank.parameter(tag).detach() - start).norm() / start.norm()
            return {"val": float(np.mean((p - y[vi]) ** 2)), "refit": refit, "alpha": alpha,
                    "tag_move": float(moved)}

        cfg = TrainConfig(lr=c["lr"], head_lr=c["head_lr"], steps=c["steps"],
                          eval_every=c.get("every", 50), warmup_steps=c.get("warmup", 20),
                          batch_size=c.get("bs", 32), seed=c.get("seed", 0),
                          refit_every=c.get("refit_every", 0), schedule="cosine",
                          warm_start_examples=len(ti), select="last")
        res = fit_tags(m, [tag], [Part(texts, y, name=tag, val_rows=vi.tolist())], cfg,
                       progress=False, prefix=prefix, on_validation=diagnose)
        results.append({"config": c, "seconds": round(res.seconds, 1), "curve": res.curve})
        print(c, res.curve[-1], flush=True)
    doc = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model,
           "rows": {"train": len(ti), "validation": len(vi), "refit": len(sub)},
           "results": results}
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)


if __name__ == "__main__":
    main()
