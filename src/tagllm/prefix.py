"""Frozen-prefix training for function tags.

In stages 2 and 3 everything before the first trainable tag of an input is frozen
(``<SMILES> CCO <QED>``: the domain tag and the data are fixed), so the prefix's key/value
cache is a constant. The prefix runs once without gradients; forward and backward then run
only over the suffix (the function tag's ``p`` vectors and whatever follows), attending to
the cached prefix. The gradients equal those of a full-sequence pass (tested to float
tolerance). Prefix key/values can be kept across epochs within a memory budget, so later
epochs skip the prefix entirely. The store is keyed by the prefix's token ids, so one cache
can serve several training calls on the same data (a sweep over p, seeds or lr: see
:meth:`FrozenPrefix.retarget`); it empties itself when a frozen tag's vectors change.
Two tiers bound its memory: up to ``budget_bytes`` in RAM, then up to ``disk_bytes`` in
safetensors files under a private temporary folder (read back with plain file reads, so
they cost no resident memory; the folder goes when the cache does). The key/values can be
kept in bfloat16, half the bytes of float32.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tagllm.fileio import TempDir, remove_stale
from tagllm.model import Batch, TaggedModel
from tagllm.tags import pad_batch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (kv_heads, T, head_dim) each


def cache_arg(module: torch.nn.Module) -> str:
    """The name this transformers version gives a decoder body's key/value cache argument
    (``cache`` or ``past_key_values``)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def out_cache(out):
    """The key/value cache a decoder body's forward returned, whatever its field name."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _size(kv: KV) -> int:
    """Bytes of one prefix's key/values."""
    return sum(t.numel() * t.element_size() for pair in kv for t in pair)


def split_point(ids: Sequence[int], trainable_ids: set[int]) -> int:
    """Index of the first token that belongs to a trainable tag (len(ids) if none)."""
    for i, t in enumerate(ids):
        if t in trainable_ids:
            return i
    return len(ids)


def supports_frozen_prefix(model: TaggedModel) -> bool:
    """Whether the base model attends to a full cached prefix in every layer.

    Sliding-window layers (Gemma 3, Mistral-style) keep only the last window of keys in
    their cache, so a cached prefix would not give the full-sequence gradients: such
    models train function tags with full-sequence passes instead.
    """
    cfg = model.base.config
    cfg = getattr(cfg, "text_config", None) or cfg
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return not any("sliding" in t for t in layer_types)
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))


class FrozenPrefix:
    """Computes, caches and re-uses the key/values of the frozen prefix of each example."""

    def __init__(self, model: TaggedModel, trainable_tags: Sequence[str],
                 budget_bytes: float = 4e9, dtype: torch.dtype = torch.float32,
                 disk_bytes: float = 0.0, disk_dir: str | Path | None = None) -> None:
        self.model = model
        self.budget = budget_bytes
        self.dtype = dtype
        self.used = 0.0
        self.store: dict[tuple[int, ...], KV] = {}
        self.disk_budget = disk_bytes
        self.disk_used = 0.0
        self.on_disk: dict[tuple[int, ...], Path] = {}
        self.disk_sizes: dict[tuple[int, ...], int] = {}
        self._dir: Path | None = None
        self._disk_parent = disk_dir
        if disk_bytes > 0:  # what a killed run's cache left goes now, not when this spills
            remove_stale(disk_dir or tempfile.gettempdir(), "tagllm-prefix")
        #: per prefix, (layers + 1, H) float32 sums of its text tokens' hidden states at
        #: every layer (kept in RAM, for heads with ``pool: tag+mean``)
        self.sums: dict[tuple[int, ...], torch.Tensor] = {}
        self.disk_sums: set[tuple[int, ...]] = set()  # prefixes whose file holds their sums
        self.hits = 0
        self.misses = 0
        self._arg = cache_arg(model.base.base_model)
        self._frozen: dict[str, tuple[list[int], torch.Tensor]] = {}
        self.retarget(trainable_tags)

    def retarget(self, trainable_tags: Sequence[str]) -> None:
        """Serve a training call of ``trainable_tags`` (prefixes end before the first of
        them). Every stored prefix was computed with the vectors of the last retarget (a
        prefix holds only tags frozen while it was computed); the prefixes holding a tag
        whose vectors have changed since, or that left the bank, are dropped, whenever
        and however often it was trained in between."""
        bank = self.model.bank
        self.trainable_ids = {v for t in trainable_tags for v in bank.virtual_ids(t)}
        stale = {i for n, (ids, v) in self._frozen.items() if n not in bank
                 or bank.virtual_ids(n) != ids
                 or not torch.equal(bank.snapshot(n).detach().cpu(), v) for i in ids}
        if stale:
            self._drop(stale)
        self._frozen = {n: (list(bank.virtual_ids(n)), bank.snapshot(n).detach().cpu().clone())
                        for n in bank.names}

    def _drop(self, ids: set[int]) -> None:
        """Forget every stored prefix that holds one of the token ``ids``."""
        for key in [k for k in [*self.store, *self.on_disk] if ids.intersection(k)]:
            self._forget(key)

    def _forget(self, key: tuple[int, ...]) -> None:
        """Remove one stored prefix (key/values and sums, in RAM or on disk)."""
        if key in self.store:
            self.used -= _size(self.store.pop(key))
        if key in self.sums:
            t = self.sums.pop(key)
            self.used -= t.numel() * t.element_size()
        if key in self.on_disk:
            self.on_disk.pop(key).unlink(missing_ok=True)
            self.disk_used -= self.disk_sizes.pop(key)
            self.disk_sums.discard(key)

    def split(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        cut = split_point(ids, self.trainable_ids)
        return list(ids[:cut]), list(ids[cut:])

    @torch.no_grad()
    def _compute(self, prefixes: Sequence[Sequence[int]], sums: bool = False
                 ) -> list[tuple[KV, torch.Tensor | None]]:
        """Key/values of each prefix; with ``sums``, also its text tokens' hidden-state sums
        at every layer ((layers + 1, H) float32, the last row the normed last layer)."""
        m = self.model
        input_ids, mask, pos = pad_batch(prefixes, m.pad_id)
        dev = m.device
        out = m.base.base_model(inputs_embeds=m.embed(input_ids.to(dev)),
                                attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                use_cache=True, output_hidden_states=sums)
        cache = out_cache(out)
        if sums:
            text = m.text_mask(input_ids.to(dev), mask.to(dev)).unsqueeze(-1)  # (B, T, 1)
            total = torch.stack([(h.float() * text).sum(1) for h in out.hidden_states])
        per_example = []
        for i, p in enumerate(prefixes):
            n = len(p)
            kv = [(layer.keys[i, :, :n].to(self.dtype).clone(),
                   layer.values[i, :, :n].to(self.dtype).clone()) for layer in cache.layers]
            per_example.append((kv, total[:, i].cpu().clone() if sums else None))
        return per_example

    def get(self, prefixes: Sequence[Sequence[int]]) -> list[KV]:
        """Key/values of each prefix, from the store (RAM, then disk) where it holds them."""
        return self.get_with_sums(prefixes, sums=False)[0]

    def get_with_sums(self, prefixes: Sequence[Sequence[int]], sums: bool = True
                      ) -> tuple[list[KV], list[torch.Tensor | None]]:
        """Key/values of each prefix and (``sums``) its per-layer text sums, from the store
        where it holds them, computed (and kept within the budgets) where it does not."""
        keys = [tuple(p) for p in prefixes]
        # each missing prefix computed (and kept, and counted) once, however often it occurs
        missing = list(dict.fromkeys(
            k for k in keys if (k not in self.store and k not in self.on_disk)
            or (sums and k not in self.sums and k not in self.disk_sums)))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, self._compute(missing, sums), strict=True)) if missing \
            else {}
        for k, (kv, s) in fresh.items():
            self._forget(k)  # kept before without its sums: kept again with them
            self._keep(k, kv, s)
        kvs = [fresh[k][0] if k in fresh else self.store.get(k) or self._read(k)
               for k in keys]
        if not sums:
            return kvs, [None] * len(keys)
        return kvs, [fresh[k][1] if k in fresh else self._sums(k) for k in keys]

    def _keep(self, key: tuple[int, ...], kv: KV, sums: torch.Tensor | None = None) -> None:
        """Keep a computed prefix (and its sums): in RAM within the budget, else on disk
        within its own, else not at all."""
        extra = sums.numel() * sums.element_size() if sums is not None else 0
        size = _size(kv) + extra
        if self.used + size <= self.budget:
            self.store[key] = kv
            if sums is not None:
                self.sums[key] = sums
            self.used += size
        elif self.disk_used + size <= self.disk_budget:
            f = self._folder() / f"{hashlib.sha1(repr(key).encode()).hexdigest()}.safetensors"
            tensors = {f"{i}.{j}": t.contiguous() for i, pair in enumerate(kv)
                       for j, t in enumerate(pair)}
            if sums is not None:
                tensors["sums"] = sums.contiguous()
                self.disk_sums.add(key)
            save_file(tensors, str(f))
            self.on_disk[key] = f
            self.disk_sizes[key] = size
            self.disk_used += size

    def _read(self, key: tuple[int, ...]) -> KV:
        tensors = load_file(str(self.on_disk[key]))
        layers = sum(1 for k in tensors if k.endswith(".0"))  # "sums" is not a layer
        return [(tensors[f"{i}.0"], tensors[f"{i}.1"]) for i in range(layers)]

    def _sums(self, key: tuple[int, ...]) -> torch.Tensor:
        """A kept prefix's per-layer text sums (RAM, else its file)."""
        if key in self.sums:
            return self.sums[key]
        with safe_open(str(self.on_disk[key]), framework="pt") as f:
            return f.get_tensor("sums")

    def _folder(self) -> Path:
        """The private folder of the disk tier (removed with the cache, or at exit; after
        a SIGKILL, by the next cache in the same folder or by ``tagllm gc``)."""
        if self._dir is None:
            tmp = TempDir(self._disk_parent or tempfile.gettempdir(), "tagllm-prefix")
            self._dir = tmp.path
            weakref.finalize(self, tmp.close)
        return self._dir

    def suffix_states(self, kvs: Sequence[KV], prefix_lens: Sequence[int],
                      suffixes: Sequence[Sequence[int]], all_layers: bool = False):
        """The decoder pass of the suffixes attending to the prefixes: (its output, suffix
        ids (B, Ts), suffix attention mask (B, Ts)); with ``all_layers`` the output holds
        every layer's hidden states."""
        from transformers import DynamicCache

        m = self.model
        dev = m.device
        dtype = m.base.get_input_embeddings().weight.dtype
        B, Tp = len(kvs), max(prefix_lens)
        layers = []
        for li in range(len(kvs[0])):
            k0, _ = kvs[0][li]
            K = k0.new_zeros((B, k0.shape[0], Tp, k0.shape[2]), dtype=dtype, device=dev)
            V = torch.zeros_like(K)
            for i, kv in enumerate(kvs):
                n = prefix_lens[i]
                K[i, :, :n] = kv[li][0]
                V[i, :, :n] = kv[li][1]
            layers.append((K, V))  # (B, kv_heads, Tp, head_dim)
        cache = DynamicCache(ddp_cache_data=layers, config=m.base.config)
        suf_ids, suf_mask, _ = pad_batch(suffixes, m.pad_id)
        pre_mask = (torch.arange(Tp)[None] < torch.tensor(prefix_lens)[:, None]).long()
        mask = torch.cat([pre_mask, suf_mask], dim=1)  # (B, Tp + Ts)
        pos = torch.tensor(prefix_lens)[:, None] + torch.arange(suf_ids.shape[1])[None]
        out = m.base.base_model(inputs_embeds=m.embed(suf_ids.to(dev)),
                                attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                use_cache=True, output_hidden_states=all_layers,
                                **{self._arg: cache})
        return out, suf_ids.to(dev), suf_mask.to(dev)

    def suffix_hidden(self, kvs: Sequence[KV], prefix_lens: Sequence[int],
                      suffixes: Sequence[Sequence[int]], layer: int = -1
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (B, Ts, H) at ``layer`` (-1: the last, normed), suffix ids (B, Ts), suffix
        attention mask (B, Ts)) of the suffixes attending to the prefixes."""
        out, suf_ids, suf_mask = self.suffix_states(kvs, prefix_lens, suffixes, layer != -1)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return hidden, suf_ids, suf_mask

    def text_mean(self, prefixes: Sequence[Sequence[int]], sums: Sequence[torch.Tensor],
                  row: int, hidden: torch.Tensor, suf_ids: torch.Tensor,
                  suf_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) the mean over each input's text tokens at layer ``row`` (of the hidden
        states tuple): the prefix's part from its ``sums`` (:meth:`get_with_sums`), the
        suffix's from ``hidden`` (B, Ts, H)."""
        m = self.model
        pre_ids, pre_mask, _ = pad_batch(prefixes, m.pad_id)
        pre_count = m.text_mask(pre_ids, pre_mask).sum(1)  # (B,)
        pre_sum = torch.stack([s[row] for s in sums]).to(m.device)
        text = m.text_mask(suf_ids, suf_mask).unsqueeze(-1)  # (B, Ts, 1)
        total = pre_sum + (hidden.float() * text).sum(1)  # (B, H)
        count = (pre_count.to(m.device) + text.sum((1, 2))).clamp_min(1)  # (B,)
        return total / count.unsqueeze(-1)

    def tag_features(self, ids: Sequence[Sequence[int]], tag: str) -> torch.Tensor:
        """(B, F) float32 features of ``tag``'s head (:meth:`TaggedModel.tag_features`) via
        the cached prefix: with pooling, the prefix's part of the mean comes from its
        cached sums.

        Falls back to a full-sequence pass for a batch where some input has no prefix.
        """
        m = self.model
        layer, pooled = m.readout(tag)
        parts = [self.split(s) for s in ids]
        if any(not p for p, _ in parts):
            batch = Batch(*pad_batch(ids, m.pad_id)).to(m.device)
            return m.tag_features(batch, tag)
        kvs, sums = self.get_with_sums([p for p, _ in parts], sums=pooled)
        hidden, suf_ids, suf_mask = self.suffix_hidden(kvs, [len(p) for p, _ in parts],
                                                       [s for _, s in parts], layer)
        feats = m.at_tag(hidden, suf_ids, tag)  # (B, H)
        if not pooled:
            return feats
        row = layer if layer != -1 else m.num_layers  # the sums' row of this layer
        mean = self.text_mean([p for p, _ in parts], sums, row, hidden, suf_ids, suf_mask)
        return torch.cat([feats, mean], -1)  # (B, 2H)
