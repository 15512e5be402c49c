"""Speed and memory of tag training and generation, as ratios measured side by side.

Every timing is the median over rounds in which each contender runs one step in turn
(interleaved, so drift on a shared machine hits all of them alike), on the same model,
batch and sequence length. Printed ratios and their targets:

- stage-1 tag step / limit  (limit: the frozen model's forward + backward to the input
  embeddings only, no weight gradients)                                       <= 1.05
- stage-2 function-tag step / limit: full sequence, frozen prefix, cached prefix
                                                                   <= 0.5, <= 0.2 (cached)
- tag step / PEFT prompt tuning with the same number of virtual tokens   <= 1.0, <= 0.5
- greedy generation with a tag / plain model.generate, same prompt and length   <= 1.10
- peak memory of tag training / the limit's (each in a fresh process)          <= 1.2

    .venv/bin/python benchmarks/speed.py [--model smollm2] [--batch 8] [--seq 128]
        [--rounds 5] [--out runs/speed.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from tagllm import HeadConfig, TagConfig, TaggedModel
from tagllm.model import Batch
from tagllm.prefix import FrozenPrefix
from tagllm.training.loop import activation_checkpointing

KINDS = ("limit", "stage1", "stage1_bf16", "stage1_ckpt", "stage2_full", "stage2_prefix",
         "stage2_cached", "peft")


class Bench:
    """One model with a domain tag <D> and a function tag <F> (regression head), and the
    step functions that are compared."""

    def __init__(self, model: str, batch: int, seq: int, p: int) -> None:
        self.m = TaggedModel.from_pretrained(model)
        m = self.m
        m.add_tag(TagConfig("<D>", num_tokens=p))
        m.add_tag(TagConfig("<F>", kind="function", num_tokens=p, head=HeadConfig("regression")))
        g = torch.Generator().manual_seed(0)
        V = m.bank.vocab_rows
        tokens = torch.randint(100, V, (batch, seq), generator=g)  # (B, T) base tokens
        D, Fv = m.bank.virtual_ids("<D>"), m.bank.virtual_ids("<F>")
        self.plain = tokens  # the limit and PEFT see T base tokens (+ PEFT's p virtual)
        s1 = torch.cat([torch.tensor(D).expand(batch, p), tokens[:, : seq - p]], 1)
        s2 = torch.cat([torch.tensor(D).expand(batch, p), tokens[:, : seq - 2 * p],
                        torch.tensor(Fv).expand(batch, p)], 1)  # <D> data <F>, length T
        self.s1, self.s2 = self._batch(s1), self._batch(s2)
        self.y = torch.randn(batch, 1)
        self.p, self.batch, self.seq = p, batch, seq
        self.opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)
        self.prefix = FrozenPrefix(m, ["<F>"], budget_bytes=0)  # recompute every step
        self.cached = FrozenPrefix(m, ["<F>"], budget_bytes=1e12)  # kept across steps
        self._peft = None

    def _batch(self, ids: torch.Tensor) -> Batch:
        mask = torch.ones_like(ids)
        return Batch(ids, mask, mask.cumsum(1) - 1).to(self.m.device)

    def _step(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def limit(self) -> None:
        base = self.m.base
        e = base.get_input_embeddings()(self.plain).detach().requires_grad_()  # (B, T, H)
        logits = base(inputs_embeds=e).logits[:, :-1]  # (B, T-1, V)
        F.cross_entropy(logits.flatten(0, 1).float(), self.plain[:, 1:].flatten()).backward()

    def stage1(self) -> None:
        self.m.set_trainable(["<D>"])
        self._step(self.m.lm_loss(self.s1))

    def stage1_bf16(self) -> None:
        """Stage 1 under bf16 autocast (TrainConfig.autocast="bf16")."""
        with torch.autocast(self.m.device.type, dtype=torch.bfloat16):
            self.m.set_trainable(["<D>"])
            loss = self.m.lm_loss(self.s1)
        self._step(loss)

    def stage1_ckpt(self) -> None:
        """Stage 1 with activation checkpointing (TrainConfig.activation_checkpointing)."""
        with activation_checkpointing(self.m, True):
            self.m.set_trainable(["<D>"])
            loss = self.m.lm_loss(self.s1)
        self._step(loss)

    def stage2_full(self) -> None:
        self.m.set_trainable(["<F>"])
        self._step(self.m.head_loss(self.s2, "<F>", self.y))

    def _stage2(self, prefix: FrozenPrefix) -> None:
        self.m.set_trainable(["<F>"])
        head = self.m.head("<F>")
        feats = prefix.tag_features(self.s2.input_ids.tolist(), "<F>")
        self._step(head.loss(head(feats), self.y))

    def stage2_prefix(self) -> None:
        self._stage2(self.prefix)

    def stage2_cached(self) -> None:
        self._stage2(self.cached)

    def peft(self) -> None:
        if self._peft is None:
            from peft import PromptTuningConfig, get_peft_model

            # prompt tuning adds no module to the base: wrapping the shared frozen base
            # keeps one copy of the weights in memory, as for the tags
            pm = get_peft_model(self.m.base, PromptTuningConfig(task_type="CAUSAL_LM",
                                                                num_virtual_tokens=self.p))
            opt = torch.optim.AdamW([q for q in pm.parameters() if q.requires_grad], lr=1e-4)
            self._peft = (pm, opt)
        pm, opt = self._peft
        ids = self.plain[:, : self.seq - self.p]  # + p virtual tokens = T
        pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, sync: Callable[[], None]
                ) -> dict[str, float]:
    """Median seconds per call of each function, run in turn each round (one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r > 0:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def generation(b: Bench, new_tokens: int, rounds: int) -> dict[str, float]:
    """Seconds for greedy generation of exactly ``new_tokens`` tokens, with and without tag."""
    m = b.m
    text = "<D> The history of the city begins"
    plain = m.tokenizer(text.replace("<D> ", ""), return_tensors="pt").to(m.device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def tagged() -> None:
        m.generate([text], **kw)

    def untagged() -> None:
        m.base.generate(**plain, pad_token_id=m.pad_id, **kw)

    with torch.inference_mode():
        return interleaved({"generate_tagged": tagged, "generate_plain": untagged}, rounds,
                           lambda: None)


def peak_memory(kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Memory (MB) of a fresh process that loads the model and runs two steps of ``kind``:
    resident after set-up, and the peak while stepping (Linux VmHWM, reset after set-up)."""
    cmd = [sys.executable, __file__, "--_memory", kind, "--model", args.model,
           "--batch", str(args.batch), "--seq", str(args.seq), "--p", str(args.p)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _memory_child(args: argparse.Namespace) -> None:
    b = Bench(args.model, args.batch, args.seq, args.p)
    if args._memory == "peft":
        b.peft()  # builds the PEFT wrapper (set-up, not training)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    loaded = _status_mb("VmRSS")
    for _ in range(2):
        getattr(b, args._memory)()
    print(json.dumps({"loaded_mb": loaded, "peak_mb": _status_mb("VmHWM")}))


def _above(m: dict[str, float]) -> float:
    return m["peak_mb"] - m["loaded_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--p", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--out", default="runs/speed.json")
    ap.add_argument("--_memory", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory:
        return _memory_child(args)

    b = Bench(args.model, args.batch, args.seq, args.p)
    dev = b.m.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = generation(b, args.new_tokens, args.rounds)  # before PEFT wraps the base
    b.stage2_cached()  # fill the cross-epoch cache once: later calls are "epoch 2+"
    t = interleaved({k: getattr(b, k) for k in KINDS}, args.rounds, sync)
    t.update(gen)
    mem = {k: peak_memory(k, args)
           for k in ("limit", "stage1", "stage1_ckpt", "stage2_prefix", "peft")}

    ratios = {
        "stage-1 step / limit": (t["stage1"] / t["limit"], 1.05),
        "stage-1 step, bf16 autocast / fp32": (t["stage1_bf16"] / t["stage1"], None),
        "stage-1 step, activation checkpointing / plain": (t["stage1_ckpt"] / t["stage1"], None),
        "stage-2 step, full sequence / limit": (t["stage2_full"] / t["limit"], None),
        "stage-2 step, frozen prefix / limit": (t["stage2_prefix"] / t["limit"], 0.5),
        "stage-2 step, cached prefix / limit": (t["stage2_cached"] / t["limit"], 0.2),
        "stage-1 step / PEFT prompt tuning": (t["stage1"] / t["peft"], 1.0),
        "stage-2 step, frozen prefix / PEFT prompt tuning":
            (t["stage2_prefix"] / t["peft"], 0.5),
        "generation with a tag / plain generate":
            (t["generate_tagged"] / t["generate_plain"], 1.10),
        "peak memory, stage-1 training / limit":
            (mem["stage1"]["peak_mb"] / mem["limit"]["peak_mb"], 1.2),
        "peak memory, stage-1 with activation checkpointing / limit":
            (mem["stage1_ckpt"]["peak_mb"] / mem["limit"]["peak_mb"], None),
        "peak memory, stage-2 frozen prefix / limit":
            (mem["stage2_prefix"]["peak_mb"] / mem["limit"]["peak_mb"], 1.2),
        "peak memory, PEFT prompt tuning / limit":
            (mem["peft"]["peak_mb"] / mem["limit"]["peak_mb"], None),
        "memory above the loaded model, stage-1 training / limit":
            (_above(mem["stage1"]) / _above(mem["limit"]), None),
        "memory above the loaded model, stage-2 frozen prefix / limit":
            (_above(mem["stage2_prefix"]) / _above(mem["limit"]), None),
    }
    setting = (f"{b.m.model_name}, batch {args.batch} x {args.seq} tokens, p={args.p}, "
               f"{dev.type}, {torch.get_num_threads()} threads, median of {args.rounds} "
               "interleaved rounds")
    table = Table(title=f"tagllm speed and memory ({setting})")
    for col in ("ratio", "measured", "target", "met"):
        table.add_column(col, justify="right" if col != "ratio" else "left")
    for name, (v, target) in ratios.items():
        met = "-" if target is None else ("yes" if v <= target else "[red]no[/red]")
        table.add_row(name, f"{v:.3f}", "-" if target is None else f"<= {target}", met)
    console = Console()
    console.print(table)
    console.print("seconds per step: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    console.print("peak MB: " + ", ".join(f"{k} {v['peak_mb']:.0f} (after load "
                                          f"{v['loaded_mb']:.0f})" for k, v in mem.items()))
    doc = {"setting": setting, "machine": platform.platform(), "torch": torch.__version__,
           "seconds": t, "memory_mb": mem,
           "ratios": {k: {"value": v, "target": tg} for k, (v, tg) in ratios.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
