"""Typed configuration dataclasses.

Every config validates itself in ``__post_init__`` and raises :class:`ValueError` naming the
offending field, so a bad recipe or flag fails before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

TAG_NAME_RE = re.compile(r"^<[A-Za-z][A-Za-z0-9_.\-]*>$")

TagKind = Literal["domain", "function"]
HeadKind = Literal["lm", "regression", "classification"]
InitKind = Literal["vocab_mean", "text", "random"]


def _check(cond: bool, owner: str, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{owner}.{name}: {msg}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}"
        )
    return cls(**data)


@dataclass
class HeadConfig:
    """A task head on the last hidden state of a function tag's last vector."""

    kind: HeadKind = field(
        default="regression", metadata={"help": "lm, regression or classification"}
    )
    num_outputs: int = field(
        default=1, metadata={"help": "regression outputs, or number of classes"}
    )
    loss: str = field(
        default="", metadata={"help": "mse, l1 or cross_entropy; empty picks the kind's default"}
    )

    def __post_init__(self) -> None:
        from tagllm.heads import HEADS, default_loss  # registry lives with the heads

        _check(self.kind in HEADS, "HeadConfig", "kind",
               f"unknown head kind {self.kind!r}; known: {sorted(HEADS)}")
        _check(self.num_outputs >= 1, "HeadConfig", "num_outputs", "must be >= 1")
        if self.kind == "classification":
            _check(self.num_outputs >= 2, "HeadConfig", "num_outputs",
                   "a classification head needs >= 2 classes")
        if not self.loss:
            self.loss = default_loss(self.kind)
        _check(self.loss in {"mse", "l1", "cross_entropy", "lm"}, "HeadConfig", "loss",
               f"unknown loss {self.loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TagConfig:
    """One learned input tag: a token whose embedding is ``num_tokens`` trainable vectors."""

    name: str = field(metadata={"help": "the tag as written in text, e.g. <SMILES>"})
    kind: TagKind = field(default="domain", metadata={"help": "domain or function"})
    num_tokens: int = field(default=10, metadata={"help": "p, the number of vectors"})
    init: InitKind = field(
        default="vocab_mean",
        metadata={"help": "vocab_mean (mean of the vocabulary embeddings plus noise), "
                          "text (init_text's embeddings, right-aligned after line "
                          "breaks), random"},
    )
    init_text: str = field(default="", metadata={"help": "text for init='text'"})
    head: HeadConfig | None = field(default=None, metadata={"help": "optional task head"})

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and bool(TAG_NAME_RE.match(self.name)), "TagConfig",
               "name", f"{self.name!r} is not a tag name like <SMILES> (letters, digits, _.-)")
        _check(self.kind in ("domain", "function"), "TagConfig", "kind",
               f"{self.kind!r} is not 'domain' or 'function'")
        _check(isinstance(self.num_tokens, int) and 1 <= self.num_tokens <= 512, "TagConfig",
               "num_tokens", f"must be an int in [1, 512], got {self.num_tokens!r}")
        _check(self.init in ("vocab_mean", "text", "random"), "TagConfig", "init",
               f"unknown init {self.init!r}")
        if self.init == "text":
            _check(isinstance(self.init_text, str) and self.init_text != "", "TagConfig",
                   "init_text", "init='text' needs a non-empty init_text")  # "\n" is valid
        if isinstance(self.head, dict):
            self.head = from_dict(HeadConfig, self.head, where=f"{self.name}.head")
        if self.head is not None:
            _check(self.kind == "function", "TagConfig", "head",
                   f"only function tags own heads; {self.name} is a {self.kind} tag")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["head"] = self.head.to_dict() if self.head else None
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagConfig:
        return from_dict(cls, dict(data))


@dataclass
class TrainConfig:
    """Hyper-parameters of one tag-training run."""

    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of tags"})
    head_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of heads"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0 = off"})
    max_length: int = field(default=256, metadata={"help": "longest input in tokens"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    warm_start_head: bool = field(
        default=True,
        metadata={"help": "fit a regression head in closed form (ridge on the frozen features) "
                          "before gradient training"},
    )
    warm_start_examples: int = field(
        default=2000, metadata={"help": "examples used for the closed-form warm start"}
    )
    ridge_alpha: float = field(default=1.0, metadata={"help": "ridge penalty of the warm start"})
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    frozen_prefix: bool = field(
        default=True,
        metadata={"help": "for function tags with a head: run the frozen prefix once without "
                          "gradients and back-propagate only through the tag (same gradients)"},
    )
    prefix_cache_gb: float = field(
        default=4.0,
        metadata={"help": "memory for prefix key/values kept across epochs; 0 = recompute"},
    )
    autocast: Literal["no", "bf16", "fp16"] = field(
        default="no",
        metadata={"help": "run forward passes under torch.autocast in bf16/fp16 (weights stay "
                          "as loaded; tags, heads and optimizer state stay fp32)"},
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in the backward pass of "
                          "full-sequence steps (less memory, more time; for large models)"},
    )
    checkpoint_every: int = field(
        default=50,
        metadata={"help": "save a resumable checkpoint every N steps (and on Ctrl-C); 0 = only "
                          "on Ctrl-C"},
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "warm_start_examples", "log_every"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   "TrainConfig", name, f"must be a positive int, got {getattr(self, name)!r}")
        for name in ("lr", "head_lr"):
            _check(getattr(self, name) > 0, "TrainConfig", name, "must be > 0")
        _check(self.warmup_steps >= 0, "TrainConfig", "warmup_steps", "must be >= 0")
        _check(self.weight_decay >= 0, "TrainConfig", "weight_decay", "must be >= 0")
        _check(self.max_grad_norm >= 0, "TrainConfig", "max_grad_norm", "must be >= 0")
        _check(self.ridge_alpha >= 0, "TrainConfig", "ridge_alpha", "must be >= 0")
        _check(self.prefix_cache_gb >= 0, "TrainConfig", "prefix_cache_gb", "must be >= 0")
        _check(self.autocast in ("no", "bf16", "fp16"), "TrainConfig", "autocast",
               f"{self.autocast!r} is not 'no', 'bf16' or 'fp16'")
        _check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
               "TrainConfig", "checkpoint_every", "must be an int >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    #: Fields that change how a run is logged, cached, checkpointed or how much memory it
    #: takes, never its result.
    NOT_RESULT = ("log_every", "prefix_cache_gb", "checkpoint_every", "activation_checkpointing")

    def result_dict(self) -> dict[str, Any]:
        """The fields that determine the trained tags and differ from their defaults (the tag
        store's key uses these). Leaving defaults out keeps keys stable when a new field with
        a neutral default is added; changing a default must bump ``store.STORE_FORMAT``."""
        default = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items()
                if k not in self.NOT_RESULT and v != default[k]}
