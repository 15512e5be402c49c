"""TaggedModel: a frozen Hugging Face causal LM + a bank of learned tags + task heads."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagllm.backbones import cached_fingerprint, load_backbone, model_folder
from tagllm.config import TagConfig
from tagllm.costs import count_forward
from tagllm.distributed import is_sharded
from tagllm.errors import ConfigError, DataError, TagFileError
from tagllm.heads import Head, build_head
from tagllm.hub import resolve_tag_dir, tag_folders
from tagllm.progress import track
from tagllm.serialization import (
    check_base_model,
    read_tag,
    tensor_digest,
    values_digest,
    write_tag,
)
from tagllm.tags import TagBank, TagTokenizer, pad_batch

#: what :meth:`TaggedModel.features` reads at a layer: the state at the tag, the mean over the
#: text tokens, or both side by side
FEATURE_POOLS = ("tag", "mean", "tag+mean")


@dataclass
class Batch:
    """A padded batch: input_ids, attention_mask and position_ids are (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                               self.position_ids)))


log = logging.getLogger(__name__)

#: per thread, (decoder body, tag bank, input ids) of the pass :meth:`TaggedModel.embed`
#: started: what the deep tags' layer hooks add offsets for (threads never see each other's)
_DEEP = threading.local()


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of every weight of ``module`` (its state dict: names, shapes and values
    rounded to bfloat16, so fp32 and bf16 loads of the same checkpoint agree). Two models
    that share their embeddings but differ in any layer (a fine-tune, a merged LoRA) differ."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu")
        t = t.to(torch.bfloat16).view(torch.int16) if t.is_floating_point() else t
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def embedding_fingerprint(weight: torch.Tensor) -> str:
    """SHA-256 of the input-embedding matrix rounded to bfloat16 (so fp32 and bf16 loads of
    the same checkpoint agree), prefixed by its shape."""
    w = weight.detach().to("cpu", torch.bfloat16).contiguous()
    h = hashlib.sha256(f"{tuple(w.shape)}".encode())
    h.update(w.view(torch.int16).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _head_key(name: str) -> str:
    return name.strip("<>").replace(".", "_")


class TaggedModel(nn.Module):
    """A frozen causal LM whose inputs may contain learned tags.

    Every base parameter has ``requires_grad=False``; the only trainable parameters are tag
    embeddings (``bank``) and task heads (``heads``).
    """

    def __init__(self, base: nn.Module, tokenizer, model_name: str, strict_tags: bool = True):
        super().__init__()
        self.base = base
        self.base.eval()
        self.base.requires_grad_(False)
        body = getattr(base, "base_model", base)
        if not getattr(body, "_tagllm_counted", False):  # once per module, however many banks
            body.register_forward_pre_hook(count_forward, with_kwargs=True)
            body._tagllm_counted = True
        self.tokenizer = tokenizer
        self.model_name = model_name
        embed = base.get_input_embeddings()
        self.hidden_size = int(embed.weight.shape[1])
        self.bank = TagBank(self.hidden_size, int(embed.weight.shape[0]))
        self.heads = nn.ModuleDict()
        self.tagtok = TagTokenizer(tokenizer, self.bank, strict=strict_tags)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._embedding_fingerprint: str | None = None
        self._trained_with: dict[str, dict[str, str]] = {}  # a loaded tag's record

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        model: str = "smollm2",
        tags: Iterable[str | Path] = (),
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TaggedModel:
        """Load a base model (HF id, local folder or embedded short name) and tags: each a
        tag folder, a folder of tag folders, or a Hub repository (``ORG/NAME[@REVISION]``)
        holding either."""
        base, tok, name = load_backbone(model, dtype=dtype)
        tm = cls(base.to(device), tok, name)
        folder = model_folder(model)
        if folder is not None:  # hashed once per model folder, not at every load
            tm.base._tagllm_fingerprint = cached_fingerprint(
                folder, lambda: weights_fingerprint(tm.base))
        for t in tags:
            for d in tag_folders(t):
                tm.load_tag(d)
        return tm

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    @property
    def num_layers(self) -> int:
        """Decoder layers of the base model."""
        cfg = self.base.config
        return int((getattr(cfg, "text_config", None) or cfg).num_hidden_layers)

    def readout(self, tag: str) -> tuple[int, bool]:
        """(layer, pooled) that ``tag``'s head reads (-1: the last layer, normed)."""
        head = self.bank.configs[self.bank.require(tag)].head
        if head is None:
            return -1, False
        if head.auto:
            raise ConfigError(f"the readout of tag {tag} is 'auto': it is chosen on the "
                              "validation rows when the tag trains, before any prediction")
        return head.readout_layer, head.pooled

    def set_readout(self, tag: str, layer: int, pooled: bool) -> None:
        """Make ``tag``'s head read ``layer`` (with the token mean if ``pooled``); a head of
        another input width is built anew (its values are fitted afterwards)."""
        cfg = self.bank.configs[self.bank.require(tag)]
        head_cfg = replace(cfg.head, readout_layer=layer, pool="tag+mean" if pooled else "tag")
        self.bank.configs[tag] = replace(cfg, head=head_cfg)
        old = self.head(tag)
        size = self.hidden_size * (2 if pooled else 1)
        if old.hidden_size != size:
            head = build_head(head_cfg.kind, size, head_cfg.num_outputs, head_cfg.loss)
            head.requires_grad_(old.linear.weight.requires_grad)
            self.heads[_head_key(tag)] = head.to(self.device)

    def feature_size(self, tag: str) -> int:
        """Width of the features ``tag``'s head reads: H, or 2H with pooling."""
        return self.hidden_size * (2 if self.readout(tag)[1] else 1)

    @property
    def weights_dtype(self) -> str:
        """The base model's weights: ``int8`` once :meth:`quantize_int8` ran, else their
        torch dtype (``float32``, ``bfloat16``)."""
        if getattr(self.base, "_tagllm_int8", False):
            return "int8"
        return str(self.base.get_input_embeddings().weight.dtype).removeprefix("torch.")

    def quantize_int8(self) -> int:
        """Replace the decoder's linear layers by torch's dynamically quantised int8 ones
        (weights int8 per tensor, activations quantised per batch), in place: forward-only
        work on the CPU (predict, embed) in about a quarter of the weights' memory. The
        embeddings stay float32, so tags splice in as before; the tags' and heads' values
        do not change. Returns the number of layers replaced."""
        import warnings

        from torch.ao.quantization import quantize_dynamic

        if self.device.type != "cpu" or self.base.get_input_embeddings().weight.dtype \
                != torch.float32:
            raise ConfigError("int8 needs the float32 model on the CPU (torch's dynamic "
                              "quantisation runs on the CPU only)")
        _ = self.fingerprint  # of the float32 weights, kept before they change
        body = self.base.base_model  # the decoder, without the LM head
        before = sum(isinstance(m, nn.Linear) for m in body.modules())
        with warnings.catch_warnings():  # torch's notice that the API moves to torchao
            warnings.simplefilter("ignore")
            quantize_dynamic(body, {nn.Linear}, dtype=torch.qint8, inplace=True)
        self.base.requires_grad_(False)
        self.base._tagllm_int8 = True
        return before - sum(isinstance(m, nn.Linear) for m in body.modules())

    @property
    def sharded(self) -> bool:
        """Whether the base model's blocks are sharded across processes (FSDP): then every
        process must run the same forward passes."""
        return is_sharded(self.base)

    @property
    def fingerprint(self) -> str:
        """A hash of every weight of the base model (:func:`weights_fingerprint`), kept on
        the base module: every tag bank on it shares it, and a base sharded later (FSDP)
        keeps the value of its whole weights."""
        found = getattr(self.base, "_tagllm_fingerprint", None)
        if found is None:
            found = self.base._tagllm_fingerprint = weights_fingerprint(self.base)
        return found

    @property
    def embedding_fingerprint(self) -> str:
        """A hash of the input embeddings alone: what tag files written before
        :attr:`fingerprint` covered every weight recorded."""
        if self._embedding_fingerprint is None:
            self._embedding_fingerprint = embedding_fingerprint(
                self.base.get_input_embeddings().weight)
        return self._embedding_fingerprint

    def add_tag(self, config: TagConfig, seed: int = 0, init: torch.Tensor | None = None,
                deep: torch.Tensor | None = None) -> None:
        """Add a new tag, trainable: with ``init`` (p, H) as its vectors, else initialised
        as its config says (a deep tag's offsets: ``deep``, else zeros)."""
        if init is None:
            init = self._initial_vectors(config, seed)
        if config.depth == "deep":
            self._hook_layers()
        if config.head is not None and config.head.readout_layer != "auto" and \
                config.head.readout_layer > self.num_layers:
            raise ConfigError(f"tag {config.name}: head readout_layer "
                              f"{config.head.readout_layer} > the {self.num_layers} layers of "
                              f"{self.model_name}")
        self.bank.add(config, init, self.num_layers, deep)
        if config.head is not None:  # an 'auto' pool is sized when it is chosen
            size = self.hidden_size * (2 if config.head.pooled else 1)
            head = build_head(config.head.kind, size, config.head.num_outputs, config.head.loss)
            self.heads[_head_key(config.name)] = head.to(self.device)

    def _hook_layers(self) -> None:
        """Once per base model: a pre-hook on every decoder layer after the first adds the
        deep tags' offsets at their positions (the ids of the pass that :meth:`embed`
        started; a pass over other positions, such as a decoding step, is left alone)."""
        body = self.base.base_model
        if getattr(body, "_tagllm_deep_hooks", False):
            return
        layers = getattr(body, "layers", None) or getattr(body, "h", None)  # GPT-2: h
        if not isinstance(layers, nn.ModuleList) or len(layers) != self.num_layers:
            raise ConfigError(f"{type(body).__name__} has no list of its {self.num_layers} "
                              "decoder layers: deep tags cannot be placed")

        def add_offsets(index: int):
            def hook(module, args, kwargs):
                state = getattr(_DEEP, "state", None)
                hidden = args[0] if args else kwargs.get("hidden_states")
                if state is None or state[0] is not body or hidden is None \
                        or hidden.shape[:2] != state[2].shape:
                    return None
                offsets = state[1].layer_offsets(index, state[2].to(hidden.device), hidden)
                if offsets is None:
                    return None
                if args:
                    return (hidden + offsets, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden + offsets}
            return hook

        for i, layer in enumerate(layers):
            if i:
                layer.register_forward_pre_hook(add_offsets(i), with_kwargs=True)
        def done(*_) -> None:  # a later pass (a decoding step) has other positions; a pass
            # with gradients keeps them for activation checkpointing's recomputation (in
            # transformers versions that checkpoint a layer's hooks with it)
            if not torch.is_grad_enabled():
                _DEEP.state = None

        body.register_forward_hook(done)
        body._tagllm_deep_hooks = True

    def _initial_vectors(self, config: TagConfig, seed: int) -> torch.Tensor:
        """(p, H) starting vectors: vocab_mean, random, or the embeddings of init_text."""
        embed = self.base.get_input_embeddings()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            V = self.bank.vocab_rows
            sample = torch.randperm(V, generator=g)[: min(V, 8192)].to(self.device)
            vocab = embed(sample).float().cpu()  # (S, H), includes any embedding scale
            mean, std = vocab.mean(0), vocab.std(0)
            noise = torch.randn(config.num_tokens, self.hidden_size, generator=g)
            if config.init == "vocab_mean":
                init = mean + 0.1 * std * noise
            elif config.init == "random":
                init = mean + std * noise
            else:
                init = embed(torch.tensor(self._init_text_ids(config),
                                          device=self.device)).float().cpu()
        return init

    def _init_text_ids(self, config: TagConfig) -> list[int]:
        """p token ids for init='text': the text's tokens right-aligned after line breaks,
        so the untrained tag reads as the text itself after blank lines (the model sees
        "\\n\\n…Spanish:" where the tag stands). Repeating the text to fill p reads as
        "Spanish:Spanish:…", and padding with spaces as "▁▁▁Spanish:"; both measurably
        broke translation prompts that line breaks did not (docs/tasks.md)."""
        p = config.num_tokens
        ids = self.tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"tag {config.name}: init_text {config.init_text!r} has no tokens")
        if len(ids) > p:
            raise ConfigError(
                f"tag {config.name}: init_text {config.init_text!r} is {len(ids)} tokens for "
                f"this tokenizer, more than num_tokens={p}; shorten it or raise num_tokens")
        pad = self.tokenizer("\n", add_special_tokens=False)["input_ids"][-1:] or ids[:1]
        return pad * (p - len(ids)) + ids

    def head(self, name: str) -> Head | None:
        key = _head_key(self.bank.require(name))
        return self.heads[key] if key in self.heads else None

    def set_trainable(self, names: Iterable[str]) -> None:
        """Make exactly these tags (and their heads) trainable; freeze all other tags."""
        names = {self.bank.require(n) for n in names}
        for n in self.bank.names:
            self.set_requires_grad(n, n in names)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- files
    def base_model_info(self) -> dict:
        """What a tag file records of the base model it belongs to."""
        return {"name": self.model_name, "architecture": type(self.base).__name__,
                "fingerprint": self.fingerprint, "fingerprint_of": "weights",
                "vocab_rows": self.bank.vocab_rows, "hidden_size": self.hidden_size}

    def save_tag(self, name: str, directory: str | Path, provenance: dict | None = None,
                 trained_with: Sequence[str] = ()) -> Path:
        """Write tag ``name`` (embedding and head) to a tag folder, atomically."""
        cfg = self.bank.configs[self.bank.require(name)]
        tensors = {"embedding": self.bank.vectors(name)}  # through its MLP, if any
        if (deep := self.bank.deep_offsets(name)) is not None:
            tensors["deep"] = deep
        head = self.head(name)
        if head is not None:
            tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        base = {k: v for k, v in self.base_model_info().items() if k != "hidden_size"}
        return write_tag(directory, cfg, tensors, base, self.hidden_size, provenance or {},
                         {t: tensor_digest(self.bank.snapshot(t)) for t in trained_with
                          if t != name})

    def load_tag(self, directory: str | Path, trainable: bool = False) -> str:
        """Load a tag folder, verified against this base model (frozen unless
        ``trainable``); returns the tag name. ``directory`` may be a Hub repository id
        (``ORG/NAME[@REVISION]``) holding one tag."""
        directory = resolve_tag_dir(directory)
        meta, tensors = read_tag(directory)
        base = self.base_model_info()
        if meta["base_model"].get("fingerprint_of") != "weights":
            log.warning("%s: tag %s was written by an older tagllm, whose fingerprint covers "
                        "only the base model's input embeddings: only those are checked. "
                        "Retrain it (or train it again through the store) to have every "
                        "weight checked.", directory, meta["name"])
            base = {**base, "fingerprint": self.embedding_fingerprint}
        check_base_model(directory, meta, base)
        name = meta["name"]
        if name in self.bank:
            raise TagFileError(f"{directory}: tag {name} is already loaded in this model")
        config = TagConfig.from_json(meta["config"])
        deep = tensors.get("deep")
        if config.depth == "deep" and (deep is None or deep.shape[0] != self.num_layers - 1):
            raise TagFileError(f"{directory}: deep tag {name} holds offsets for "
                               f"{None if deep is None else deep.shape[0] + 1} layers, the "
                               f"base model has {self.num_layers}")
        digest = values_digest(tensors)
        self._check_trained_with(directory, name, digest, meta.get("trained_with") or {})
        self.add_tag(config, init=tensors["embedding"], deep=deep)
        head = self.head(name)
        if head is not None:
            state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
            try:
                with torch.no_grad():
                    head.load_state_dict(state)
            except RuntimeError as e:
                raise TagFileError(f"{directory}: head tensors do not match the head config "
                                   f"({e})") from e
        self.set_requires_grad(name, trainable)
        self._trained_with[name] = dict(meta.get("trained_with") or {})
        return name

    def tags_digest(self) -> str:
        """sha256 over every tag's configuration (its head's kind and readout among it),
        vectors and head parameters: what predictions and features depend on beside the
        base model."""
        import json

        h = hashlib.sha256()
        for name in sorted(self.bank.names):
            config = json.dumps(self.bank.configs[name].to_dict(), sort_keys=True, default=str)
            h.update(f"{name}\0{config}\0{self._digest(name)}\0".encode())
            head = self.head(name)
            for key, value in sorted((head.state_dict() if head is not None else {}).items()):
                h.update(key.encode())
                h.update(value.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    def _digest(self, name: str) -> str:
        """The digest of tag ``name``'s vectors now, as a tag file records it (the bank
        holds them in float32, as the file does)."""
        return tensor_digest(self.bank.snapshot(name))

    def _check_trained_with(self, directory: Path, name: str, digest: str,
                            trained_with: dict[str, str]) -> None:
        """Refuse a tag beside another version of a tag it was trained with (a function tag
        trained on one <SMILES> cannot read another), in both orders of loading."""
        pairs = [(name, other, want, self._digest(other)) for other, want in
                 trained_with.items() if other in self.bank]
        pairs += [(other, name, tw[name], digest) for other, tw in self._trained_with.items()
                  if name in tw and other in self.bank]
        for user, dep, want, got in pairs:
            if want != got:
                raise TagFileError(
                    f"{directory}: tag {user} was trained with a {dep} whose values have "
                    f"digest {want}, but the {dep} loaded beside it has {got}: they come "
                    f"from different runs. Load the {dep} that {user} was trained with (the "
                    f"tag folder written beside it), or retrain {user} on this {dep}")

    def set_requires_grad(self, name: str, trainable: bool) -> None:
        """Make one tag (and its head) trainable or frozen."""
        for p in self.bank.tag_parameters(name):
            p.requires_grad_(trainable)
        head = self.head(name)
        if head is not None:
            head.requires_grad_(trainable)

    # ----------------------------------------------------------------- encoding
    def encode(self, texts: Sequence[str], side: str = "right", max_length: int | None = None,
               where: str = "input") -> Batch:
        enc = self.tagtok.encode_batch(texts, max_length=max_length, where=where)
        ids, mask, pos = pad_batch([e.ids for e in enc], self.pad_id, side=side)
        return Batch(ids, mask, pos).to(self.device)

    # ----------------------------------------------------------------- forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, H) with the tags spliced in; the decoder pass that
        follows adds the deep tags' offsets at their positions."""
        # this thread's next decoder pass on this base: the deep offsets of these ids (or
        # none: a bank without deep tags clears what another bank left)
        _DEEP.state = (self.base.base_model, self.bank, input_ids) if len(self.bank.deep) \
            else None
        return self.bank.splice(input_ids, self.base.get_input_embeddings())  # (B, T, H)

    def hidden_states(self, batch: Batch, layer: int = -1) -> torch.Tensor:
        """Hidden states (B, T, H) of the frozen decoder, tags spliced in: the last layer
        (normed), or the output of decoder layer ``layer``."""
        out = self.base.base_model(
            inputs_embeds=self.embed(batch.input_ids),
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            output_hidden_states=layer != -1,
        )
        return out.last_hidden_state if layer == -1 else out.hidden_states[layer]

    def layer_states(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Every layer's hidden states (B, T, H) in one pass: entry k is the output of
        decoder layer k (0: the embeddings), the last one normed."""
        return self.base.base_model(
            inputs_embeds=self.embed(batch.input_ids), attention_mask=batch.attention_mask,
            position_ids=batch.position_ids, use_cache=False, output_hidden_states=True,
        ).hidden_states

    def text_mean(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) float32 mean of ``hidden`` (B, T, H) over each row's text tokens."""
        mask = self.text_mask(input_ids, attention_mask).unsqueeze(-1)  # (B, T, 1)
        return (hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1)

    def text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                  ) -> torch.Tensor:
        """(B, T) bool: the positions of text tokens (not tags, padding or the tokenizer's
        special tokens such as BOS)."""
        special = torch.tensor(sorted(self.tokenizer.all_special_ids), dtype=torch.long,
                               device=input_ids.device)
        return attention_mask.bool() & (input_ids < self.bank.vocab_rows) & \
            ~torch.isin(input_ids, special)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The frozen LM head (with the model's logit soft-capping, if any)."""
        logits = self.base.get_output_embeddings()(hidden)
        cap = getattr(self.base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def head_positions(self, input_ids: torch.Tensor, tag: str) -> torch.Tensor:
        """(B,) index of the last vector of the last occurrence of ``tag`` in each row."""
        hit = input_ids == self.bank.last_virtual_id(tag)  # (B, T)
        missing = (~hit.any(-1)).nonzero().flatten().tolist()
        if missing:
            raise DataError(f"input(s) {missing} do not contain the function tag {tag}")
        arange = torch.arange(input_ids.shape[1], device=input_ids.device)
        return torch.where(hit, arange, -1).amax(-1)

    def head_outputs(self, batch: Batch, tag: str) -> torch.Tensor:
        """Raw head outputs (B, n) on the hidden state of ``tag``'s last vector."""
        head = self.head(tag)
        if head is None or not head.has_parameters:
            raise ConfigError(f"tag {tag} has no regression/classification head")
        feats = self.tag_features(batch, tag)
        return head(feats)

    def tag_features(self, batch: Batch, tag: str) -> torch.Tensor:
        """(B, F) float32 features ``tag``'s head reads: the hidden state at its last vector
        at the head's readout layer (F = H), with ``pool: tag+mean`` concatenated with the
        mean over the text tokens (F = 2H)."""
        layer, pooled = self.readout(tag)
        return self.batch_features(batch, tag, layer, "tag+mean" if pooled else "tag")

    def batch_features(self, batch: Batch, tag: str, layer: int, pool: str) -> torch.Tensor:
        """(B, F) float32: at decoder layer ``layer``, the hidden state at ``tag``'s last
        vector (``pool`` ``tag``, F = H), the mean over the text tokens (``mean``), or both
        side by side (``tag+mean``, F = 2H)."""
        hidden = self.hidden_states(batch, layer)  # (B, T, H)
        parts = []
        if pool != "mean":
            parts.append(self.at_tag(hidden, batch.input_ids, tag))  # (B, H)
        if pool != "tag":
            parts.append(self.text_mean(hidden, batch.input_ids, batch.attention_mask))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]  # (B, F)

    def at_tag(self, hidden: torch.Tensor, input_ids: torch.Tensor, tag: str) -> torch.Tensor:
        """Rows of ``hidden`` (B, T, H) at ``tag``'s last vector in ``input_ids`` (B, T):
        (B, H) float32."""
        pos = self.head_positions(input_ids, tag)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos].float()

    def lm_loss(self, batch: Batch, reduction: str = "mean",
                after: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token loss on base tokens only (tag positions and padding are not targets):
        the mean over those tokens, with ``reduction="sum"`` their sum, with
        ``reduction="row"`` the sum of each input (B,). ``after``: see :meth:`lm_targets`."""
        hidden = self.hidden_states(batch)[:, :-1]  # (B, T-1, H)
        targets = batch.input_ids[:, 1:]  # (B, T-1)
        valid = self.lm_targets(batch, after)
        logits = self.logits(hidden[valid]).float()  # (N, V)
        if reduction != "row":
            return F.cross_entropy(logits, targets[valid], reduction=reduction)
        per_token = F.cross_entropy(logits, targets[valid], reduction="none")  # (N,)
        rows = valid.nonzero()[:, 0]
        return per_token.new_zeros(len(valid)).index_add_(0, rows, per_token)  # (B,)

    def lm_targets(self, batch: Batch, after: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T-1) mask of the positions whose next token is a loss target: base tokens,
        and with ``after`` (token ids, e.g. the virtual ids of the tags being trained) only
        those that follow one of these ids; the earlier ones cannot depend on them."""
        targets = batch.input_ids[:, 1:]
        valid = batch.attention_mask[:, 1:].bool() & (targets < self.bank.vocab_rows)
        if after is not None:
            seen = torch.isin(batch.input_ids, after.to(batch.input_ids.device)).cumsum(1) > 0
            valid &= seen[:, :-1]  # (B, T-1): a tag at or before the predicting position
        return valid

    def head_loss(self, batch: Batch, tag: str, targets: torch.Tensor) -> torch.Tensor:
        head = self.head(tag)
        return head.loss(self.head_outputs(batch, tag), targets.to(self.device))

    # ----------------------------------------------------------------- inference
    def function_tag_of(self, text: str) -> str:
        """The last tag in ``text`` that owns a regression/classification head."""
        found = [t for t in self.tagtok.encode(text).tags
                 if (h := self.head(t)) is not None and h.has_parameters]
        if not found:
            raise DataError(f"no function tag with a head in input {text[:80]!r}; "
                             f"tags with heads: {self.head_tags()}")
        return found[-1]

    def head_tags(self) -> list[str]:
        return [n for n in self.bank.names if (h := self.head(n)) is not None
                and h.has_parameters]

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], tag: str | None = None, batch_size: int = 32,
                max_length: int | None = None, progress: bool = False) -> np.ndarray:
        """Head predictions for each text: (N, n_outputs) (class probabilities for
        classification heads). ``tag`` defaults to the function tag found in the text."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        tag = tag or self.function_tag_of(texts[0])
        head = self.head(tag)
        if head is None or not head.has_parameters:
            raise ConfigError(f"tag {tag} has no regression/classification head")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        out = np.zeros((len(texts), head.num_outputs), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for s in track(starts, f"predicting with {tag}", progress, unit="batch"):
            idx = order[s:s + batch_size]
            batch = self.encode([texts[i] for i in idx], max_length=max_length)
            y = head.postprocess(self.head_outputs(batch, tag))
            out[idx] = y.float().cpu().numpy()
        return out

    def embedding_readout(self, tag: str, layer: int | None = None, pool: str | None = None
                          ) -> tuple[int, str]:
        """(layer, pool) of :meth:`features`: the given ones, else what ``tag``'s head reads
        (its readout layer, ``tag`` or ``tag+mean``), else the last layer at the tag."""
        self.bank.require(tag)
        head = self.head(tag)
        own_layer, pooled = self.readout(tag) if head is not None and head.has_parameters \
            else (-1, False)
        layer = own_layer if layer is None else layer
        if not (layer == -1 or 0 <= layer <= self.num_layers):
            raise ConfigError(f"layer {layer}: the base model has decoder layers 1 to "
                              f"{self.num_layers} (0: the input embeddings, -1: the last, "
                              "normed)")
        pool = pool or ("tag+mean" if pooled else "tag")
        if pool not in FEATURE_POOLS:
            raise ConfigError(f"pool {pool!r} is not one of {', '.join(FEATURE_POOLS)}")
        return layer, pool

    @torch.inference_mode()
    def features(self, texts: Sequence[str], tag: str, layer: int | None = None,
                 pool: str | None = None, batch_size: int = 32, max_length: int | None = None,
                 progress: bool = False) -> np.ndarray:
        """(N, F) float32 hidden states of the frozen model at ``tag`` for each text, the
        features a head, a probe or a user's own model reads: at ``layer`` (-1: the last,
        normed; 0: the input embeddings; k: the output of decoder layer k), ``pool``
        ``tag`` (the state at the tag's last vector, F = H), ``mean`` (the mean over the
        text tokens, F = H) or ``tag+mean`` (both, F = 2H). By default those of ``tag``'s
        head (:meth:`embedding_readout`), so they equal :meth:`tag_features`."""
        layer, pool = self.embedding_readout(tag, layer, pool)
        texts = list(texts)
        width = self.hidden_size * (2 if pool == "tag+mean" else 1)
        out = np.zeros((len(texts), width), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        for s in track(range(0, len(texts), batch_size), f"features at {tag}", progress,
                       unit="batch"):
            idx = order[s:s + batch_size]
            batch = self.encode([texts[i] for i in idx], max_length=max_length)
            out[idx] = self.batch_features(batch, tag, layer, pool).cpu().numpy()  # (B, F)
        return out

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str], batch_size: int = 32,
                      progress: bool = False, layer: int = -1) -> np.ndarray:
        """(N, 2H) features of the frozen model alone (no tags may appear in ``texts``): the
        last layer (or decoder layer ``layer``) mean-pooled over each text's tokens, then at
        its last token."""
        texts = list(texts)
        out = np.zeros((len(texts), 2 * self.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        for s in track(range(0, len(texts), batch_size), "frozen features", progress,
                       unit="batch"):
            idx = order[s:s + batch_size]
            batch = self.encode([texts[i] for i in idx])
            hidden = self.hidden_states(batch, layer).float()  # (B, T, H)
            mask = batch.attention_mask.unsqueeze(-1).float()  # (B, T, 1), right padding
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, H)
            last = hidden[torch.arange(len(idx)), batch.attention_mask.sum(1) - 1]  # (B, H)
            out[idx] = torch.cat([mean, last], -1).cpu().numpy()
        return out

    @torch.inference_mode()
    def generate(self, texts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16,
                 do_sample: bool = False, stop: Sequence[str] = (), progress: bool = False,
                 **kwargs) -> list[str]:
        """Greedy (by default) continuation of each text with the KV cache; left padding.
        A sequence ends at the end-of-text token or at any of the ``stop`` strings."""
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        results: list[str] = []
        starts = range(0, len(texts), batch_size)
        for s in track(starts, "generating", progress, unit="batch"):
            batch = self.encode(list(texts[s:s + batch_size]), side="left")
            out = self.base.generate(
                inputs_embeds=self.embed(batch.input_ids),
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=self.pad_id,
                synced_gpus=self.sharded,  # sharded blocks: all processes step together
                **kwargs,
            )
            results.extend(self.tokenizer.batch_decode(out, skip_special_tokens=True))
        return results
