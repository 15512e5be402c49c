"""The demo's compute floor: what the frozen model alone needs for the work a run did.

A ``tagllm run`` records, per phase, the forward tokens it ran (its cost account). This
benchmark measures, on the same machine and the same model, the bare decoder body's
throughput for each kind of work the demo does, at the demo's shapes and on its real
molecules:

- ``prefix``: a no-gradient forward of ``<SMILES> {smiles}`` prefixes (batch 32), keeping
  the key/values (the warm start's and every evaluation's first pass);
- ``suffix``: a no-gradient forward of the 10 ``<QED>`` positions attending to those
  cached prefixes (evaluation and validation of a trained tag);
- ``suffix_train``: the same with a backward pass to the suffix's input embeddings (one
  stage-2 step: the frozen weights need no gradient);
- ``full_train``: stage 1's step, a forward of ``<SMILES> {smiles}`` (batch 16) with the
  next-token loss on the molecule's tokens and a backward to the input embeddings, with
  and without activation checkpointing; ``full_loss``: the same loss without a backward
  (stage 1's validation).

With ``--results`` (a run's results.json) it splits each phase's tokens into these kinds,
divides by the bare throughputs and prints the floor beside the measured seconds (a
benchmark file with the run's results under ``"results"`` works too). No tag here is
trained: the tags are random, which changes no cost.

    .venv/bin/python benchmarks/demo_floor.py --results runs/qed/results.json \
        --out benchmarks/results/DATE-demo-floor.json
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import best, machine
from transformers import DynamicCache

from tagllm.config import TagConfig
from tagllm.model import Batch, TaggedModel
from tagllm.prefix import cache_arg, out_cache
from tagllm.sources import load_source
from tagllm.tags import pad_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batches", type=int, default=4, help="batches timed per kind of work")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", help="a demo run's results.json: floor per phase")
    ap.add_argument("--stage1_checkpointed", type=int, default=1,
                    help="1 if the run's stage 1 used activation checkpointing (the demo)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.results and not Path(args.results).is_file():  # before the model loads
        ap.error(f"--results {args.results}: no such file")

    m = TaggedModel.from_pretrained(args.model)
    m.add_tag(TagConfig(name="<SMILES>", kind="domain", num_tokens=10))
    m.add_tag(TagConfig(name="<QED>", kind="function", num_tokens=10,
                        head={"kind": "regression"}))
    body = m.base.base_model
    arg = cache_arg(body)  # the name this transformers version gives the cache
    table, _ = load_source("moses:train", n=32 * args.batches, seed=7, progress=False)
    prefixes = sorted((e.ids for e in m.tagtok.encode_batch(table.render("<SMILES> {smiles}"))),
                      key=len)  # batches of similar lengths, as a run builds them
    suffix = m.tagtok.encode_batch(["<QED>"])[0].ids
    p = len(suffix)
    B = 32
    groups = [prefixes[s:s + B] for s in range(0, len(prefixes), B)]
    prefix_tokens = sum(len(x) for x in prefixes)

    def prefix_pass(keep: bool):
        caches = []
        with torch.inference_mode():
            for g in groups:
                ids, mask, pos = pad_batch(g, m.pad_id)
                out = body(inputs_embeds=m.embed(ids), attention_mask=mask,
                           position_ids=pos, use_cache=True)
                if keep:
                    caches.append(([(lay.keys.clone(), lay.values.clone())
                                    for lay in out_cache(out).layers], mask))
        return caches

    caches = prefix_pass(keep=True)

    def suffix_pass(train: bool) -> None:
        for (kv, pre_mask), g in zip(caches, groups, strict=True):
            n = len(g)
            cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in kv],
                                 config=m.base.config)
            Tp = pre_mask.shape[1]
            mask = torch.cat([pre_mask, torch.ones(n, p, dtype=torch.long)], dim=1)
            pos = pre_mask.sum(1, keepdim=True) + torch.arange(p)[None]  # (n, p)
            emb = m.embed(torch.tensor([suffix] * n)).detach()  # (n, p, H)
            assert emb.shape[1] == p and mask.shape[1] == Tp + p
            if train:
                emb.requires_grad_(True)
                h = body(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                         use_cache=True, **{arg: cache}).last_hidden_state
                h[:, -1].pow(2).sum().backward()
            else:
                with torch.inference_mode():
                    body(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                         use_cache=True, **{arg: cache})

    half = [Batch(*pad_batch(prefixes[s:s + 16], m.pad_id))
            for s in range(0, len(prefixes), 16)]

    def full_step(train: bool) -> None:
        for b in half:
            emb = m.embed(b.input_ids).detach().requires_grad_(train)
            with torch.set_grad_enabled(train):
                h = body(inputs_embeds=emb, attention_mask=b.attention_mask,
                         position_ids=b.position_ids,
                         use_cache=False).last_hidden_state[:, :-1]  # (b, T-1, H)
                valid = m.lm_targets(b)  # (b, T-1): the molecule's tokens, as a run scores
                loss = F.cross_entropy(m.base.get_output_embeddings()(h[valid]).float(),
                                       b.input_ids[:, 1:][valid])
                if train:
                    loss.backward()

    suffix_pass(False)
    rates = {"prefix": prefix_tokens / best(lambda: prefix_pass(False), args.repeats),
             "suffix": len(prefixes) * p / best(lambda: suffix_pass(False), args.repeats),
             "suffix_train": len(prefixes) * p / best(lambda: suffix_pass(True),
                                                      args.repeats),
             "full_loss": prefix_tokens / best(lambda: full_step(False), args.repeats),
             "full_train": prefix_tokens / best(lambda: full_step(True), args.repeats)}
    (getattr(m.base, "activation_checkpointing_enable", None)  # its newer name
     or m.base.gradient_checkpointing_enable)()
    m.base.train()
    rates["full_train_checkpointed"] = prefix_tokens / best(lambda: full_step(True),
                                                            args.repeats)
    m.base.eval()
    doc = {"benchmark": "the demo's compute floor (bare decoder body at the demo's shapes)",
           "date": date.today().isoformat(),
           **machine(),
           "model": args.model, "rows_timed": len(prefixes),
           "mean_prefix_tokens": round(prefix_tokens / len(prefixes), 1),
           "tokens_per_s": {k: round(v, 1) for k, v in rates.items()}}
    if args.results:
        run = json.loads(Path(args.results).read_text())
        run = run.get("results", run)  # a benchmark file that holds a run's results
        phases = floor_of_run(run, rates, args.stage1_checkpointed)
        model = [r for r in phases if r["work"]]
        doc.update(results=args.results, phases=phases, total={
            "run_seconds": run["seconds"],
            "model_phases_seconds": round(sum(r["seconds"] for r in model), 1),
            "model_phases_floor_seconds": round(sum(r["floor_seconds"] for r in model), 1),
            "other_phases_seconds": round(sum(r["seconds"] for r in phases
                                              if not r["work"]), 1)})
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


def floor_of_run(results: dict, rates: dict, checkpointed: bool) -> list[dict]:
    """Each phase of a demo run: its tokens split into kinds of work, the bare model's
    seconds for them, and the measured seconds."""
    ckpt = "full_train_checkpointed" if checkpointed else "full_train"
    rows = []
    for stage in results["stages"]:
        if stage.get("cached"):
            continue
        ph = stage["costs"]["phases"]
        un = stage["costs"]["unavoidable"]
        domain = un["distinct_prefixes"] == 0  # a stage-1 (next-token) stage: no prefix
        # stage 2: the suffix tokens of the phases that also run prefixes (the rest of
        # their tokens are prefixes)
        suffix_of = {"warm start": un["warm_start"], "training/validation": un["validation"],
                     "ablation/evaluation": ph.get(f"stage {stage['stage']}/evaluation",
                                                   {}).get("tokens", 0)}
        for name, v in ph.items():
            tok = v["tokens"]
            kind = name.split("/", 1)[1] if "/" in name else "setup"
            if domain:
                split = {"training": {ckpt: tok},
                         "training/validation": {"full_loss": tok}}.get(kind, {})
            elif kind == "training":
                split = {"suffix_train": tok}
            elif kind == "evaluation":
                split = {"suffix": tok}
            elif kind in suffix_of:
                split = {"suffix": suffix_of[kind], "prefix": tok - suffix_of[kind]}
            else:  # set-up, baselines: no forward pass of the model
                split = {}
            floor = sum(t / rates[k] for k, t in split.items())
            rows.append({"phase": name, "seconds": v["seconds"], "tokens": tok,
                         "work": split, "floor_seconds": round(floor, 1),
                         "measured_over_floor": round(v["seconds"] / floor, 2) if floor
                         else None})
    return rows


if __name__ == "__main__":
    main()
