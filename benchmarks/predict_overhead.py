"""What `predict` costs beyond the frozen model itself, and what bf16 inference changes.

On the same rows, side by side in one process:

- ``bare``: the frozen decoder body alone (``model.base.base_model``) over the batches
  ``TaggedModel.predict`` would build (pre-tokenized, tags spliced; no head, no sorting,
  no tokenizing): the floor;
- ``predict``: ``TaggedModel.predict`` on the texts (tokenize, sort by length, pad, splice,
  decoder, head);
- ``predict_file``: what ``tagllm predict`` runs on a .smi file (read, check every SMILES
  with RDKit, render, predict, write the CSV);
- ``predict (bf16)``: the model loaded in bfloat16; its predictions against float32's and
  both scored against the true QED.

Each timing is the best of ``--repeats``; the ratios are throughputs relative to ``bare``
(target for ``predict``: >= 0.9).

    .venv/bin/python benchmarks/predict_overhead.py \
        --out benchmarks/results/DATE-predict-overhead.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch
from timing import best, machine

from tagllm.evaluation.metrics import regression_metrics
from tagllm.inference import predict_file
from tagllm.model import TaggedModel
from tagllm.protocol.standalone import recorded_model, tag_dirs
from tagllm.sources import load_source
from tagllm.tags import pad_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", default="runs/qed/tags")
    ap.add_argument("--data", default="moses:test")
    ap.add_argument("--label", default="qed")
    ap.add_argument("--template", default="<SMILES> {smiles} <QED>")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dirs = tag_dirs(args.tags)
    name = recorded_model(dirs)
    m = TaggedModel.from_pretrained(name, tags=dirs)
    table, _ = load_source(args.data, n=args.n, seed=0, label=args.label, progress=False)
    texts = table.render(args.template)
    y = np.asarray(table.columns[args.label], dtype=float)
    tag = m.function_tag_of(texts[0])

    ids = [e.ids for e in m.tagtok.encode_batch(texts)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [pad_batch([ids[i] for i in order[s:s + args.batch_size]], m.pad_id)
               for s in range(0, len(ids), args.batch_size)]

    @torch.inference_mode()
    def bare() -> None:
        for input_ids, mask, pos in batches:
            m.base.base_model(inputs_embeds=m.embed(input_ids), attention_mask=mask,
                              position_ids=pos, use_cache=False)

    smi = Path(tempfile.mkdtemp()) / "rows.smi"
    smi.write_text("".join(f"{s}\n" for s in table.columns["smiles"]))
    out_csv = smi.with_suffix(".csv")
    bare()  # warm-up
    t = {"bare": best(bare, args.repeats),
         "predict": best(lambda: m.predict(texts, tag=tag, batch_size=args.batch_size),
                         args.repeats),
         "predict_file": best(lambda: predict_file(m, str(smi), out_csv, args.template, tag,
                                                   args.batch_size, progress=False),
                              args.repeats)}
    p32 = m.predict(texts, tag=tag, batch_size=args.batch_size)[:, 0].astype(float)
    m16 = TaggedModel.from_pretrained(name, tags=dirs, dtype=torch.bfloat16)
    m16.predict(texts[:args.batch_size], tag=tag, batch_size=args.batch_size)  # warm-up
    t["predict (bf16)"] = best(lambda: m16.predict(texts, tag=tag,
                                                   batch_size=args.batch_size), args.repeats)
    p16 = m16.predict(texts, tag=tag, batch_size=args.batch_size)[:, 0].astype(float)
    rows = len(texts)
    doc = {"date": date.today().isoformat(),
           **machine(),
           "model": name, "tags": args.tags, "data": args.data, "rows": rows,
           "batch_size": args.batch_size, "repeats": args.repeats,
           "seconds": {k: round(v, 3) for k, v in t.items()},
           "rows_per_s": {k: round(rows / v, 1) for k, v in t.items()},
           "throughput_ratio_to_bare": {k: round(t["bare"] / v, 3) for k, v in t.items()},
           "bf16": {"max_abs_diff_from_fp32": round(float(np.abs(p16 - p32).max()), 5),
                    "fp32_metrics": {k: round(v, 5) for k, v in regression_metrics(y, p32)
                                     .items()},
                    "bf16_metrics": {k: round(v, 5) for k, v in regression_metrics(y, p16)
                                     .items()}}}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
