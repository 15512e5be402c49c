"""Choosing what a head reads (``readout_layer: auto``, ``pool: auto``) on validation rows.

One pass over the warm-start rows and one over the validation rows gives every candidate
layer's hidden state at the tag and mean over the text tokens (the frozen-prefix cache serves
both, its prefix sums holding every layer). Each candidate (layer, pool) gets a fresh head of
the tag's kind fitted in closed form on the warm-start rows; the one with the lowest
validation loss is kept (the last layer at the tag unless another is strictly lower). The
choice and every candidate's loss go into the warm-start record, so a resumed run reads the
same head and results files show what was compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tagllm.heads import build_head
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.training.batching import collate

#: candidate layers as fractions of the depth, beside the last layer (-1)
FRACTIONS = (0.15, 0.25, 0.4, 0.5, 0.65, 0.8)


def candidate_layers(num_layers: int) -> list[int]:
    """-1 (the last layer, normed) first, then layers spread over the depth."""
    inner = sorted({min(max(1, round(f * num_layers)), num_layers - 1) for f in FRACTIONS}
                   if num_layers > 1 else set())
    return [-1, *inner]


@torch.no_grad()
def layer_features(model: TaggedModel, tag: str, ids: Sequence[Sequence[int]],
                   layers: Sequence[int], batch_size: int = 32,
                   prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, len(layers), H) the hidden state at ``tag``'s last vector and (N, len(layers),
    H) the mean over the text tokens, at each of ``layers``, in one pass per batch."""
    n, H = len(ids), model.hidden_size
    at_tag, means = torch.zeros(n, len(layers), H), torch.zeros(n, len(layers), H)
    rows = [(layer if layer != -1 else model.num_layers) for layer in layers]
    order = sorted(range(n), key=lambda i: len(ids[i]))
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        batch_ids = [ids[i] for i in idx]
        parts = [prefix.split(x) for x in batch_ids] if prefix is not None else []
        if parts and all(p for p, _ in parts):
            kvs, sums = prefix.get_with_sums([p for p, _ in parts])
            out, suf_ids, suf_mask = prefix.suffix_states(
                kvs, [len(p) for p, _ in parts], [x for _, x in parts], all_layers=True)
            states = out.hidden_states
            for j, r in enumerate(rows):
                at_tag[idx, j] = model.at_tag(states[r], suf_ids, tag).cpu()
                means[idx, j] = prefix.text_mean([p for p, _ in parts], sums, r, states[r],
                                                 suf_ids, suf_mask).cpu()
            continue
        batch = collate(model, batch_ids)
        states = model.layer_states(batch)
        for j, r in enumerate(rows):
            at_tag[idx, j] = model.at_tag(states[r], batch.input_ids, tag).cpu()
            means[idx, j] = model.text_mean(states[r], batch.input_ids,
                                            batch.attention_mask).cpu()
    return at_tag, means


def choose_readout(model: TaggedModel, tag: str, train_ids: Sequence[Sequence[int]],
                   train_y: torch.Tensor, val_ids: Sequence[Sequence[int]],
                   val_y: torch.Tensor, alpha: float, batch_size: int,
                   prefix: FrozenPrefix | None, log: Callable[[str], None]) -> dict:
    """Choose and set ``tag``'s readout among the candidates its config leaves open (a
    fixed layer or pool stays fixed); returns the choice and every candidate's loss."""
    cfg = model.bank.configs[tag].head
    layers = candidate_layers(model.num_layers) if cfg.readout_layer == "auto" \
        else [cfg.readout_layer]
    pools = [False, True] if cfg.pool == "auto" else [cfg.pool == "tag+mean"]
    tr_tag, tr_mean = layer_features(model, tag, train_ids, layers, batch_size, prefix)
    va_tag, va_mean = layer_features(model, tag, val_ids, layers, batch_size, prefix)
    scores = []
    for j, layer in enumerate(layers):
        for pooled in pools:
            def feats(t: torch.Tensor, m: torch.Tensor, j: int = j,
                      pooled: bool = pooled) -> torch.Tensor:
                return torch.cat([t[:, j], m[:, j]], -1) if pooled else t[:, j]

            head = build_head(cfg.kind, model.hidden_size * (2 if pooled else 1),
                              cfg.num_outputs, cfg.loss)
            head.prepare(train_y)
            head.warm_start(feats(tr_tag, tr_mean), train_y.numpy(), alpha)
            with torch.no_grad():
                loss = float(head.loss(head(feats(va_tag, va_mean)), val_y))
            scores.append({"layer": layer, "pool": "tag+mean" if pooled else "tag",
                           "validation_loss": loss})
    best = scores[0]
    for c in scores[1:]:  # the first candidate (the last layer, at the tag) unless beaten
        if np.isfinite(c["validation_loss"]) and c["validation_loss"] < best["validation_loss"]:
            best = c
    model.set_readout(tag, best["layer"], best["pool"] == "tag+mean")
    where = "the last" if best["layer"] == -1 else best["layer"]
    log(f"readout of {tag}: layer {where} of {model.num_layers}, pool {best['pool']}, "
        f"closed-form validation loss "
        f"{best['validation_loss']:.4f} (the last layer at the tag: "
        f"{scores[0]['validation_loss']:.4f}; {len(scores)} candidates)")
    return {"layer": best["layer"], "pool": best["pool"], "candidates": scores}
