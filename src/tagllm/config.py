"""Typed configuration dataclasses: a tag, its head, a training run, and the data and
evaluation entries of a stage (what ``tagllm run``'s recipes and ``tagllm train`` /
``tagllm evaluate``'s flags both become).

Every config validates itself in ``__post_init__`` and raises :class:`ConfigError` naming the
offending field, so a bad recipe or flag fails before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

from tagllm.errors import ConfigError
from tagllm.evaluation.baselines import BASELINES
from tagllm.heads import HEADS, head_class
from tagllm.records import JSONObject

#: a tag in a text: ``<`` a letter, then letters, digits, ``_ . -``, then ``>`` (the one
#: definition: the tag tokenizer, recipes' templates and tag names all use it)
TAG_RE = re.compile(r"<[A-Za-z][A-Za-z0-9_.\-]*>")
TAG_NAME_RE = re.compile(f"^{TAG_RE.pattern}$")

TooLong = Literal["error", "skip"]
#: what an evaluation scores (:attr:`EvalConfig.kind`); every evaluation row records it
EvalKind = Literal["head", "generation", "loss"]
TagKind = Literal["domain", "function"]
InitKind = Literal["vocab_mean", "text", "random"]


def _check(cond: bool, owner: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{owner}.{name}: {msg}")


def from_dict(cls: type, data: JSONObject, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}"
        )
    return cls(**data)


def _without_later_defaults(config: Any) -> JSONObject:
    """``asdict(config)`` without the fields of ``LATER_FIELDS`` that hold their default."""
    return {k: v for k, v in asdict(config).items()
            if k not in config.LATER_FIELDS or v != config.LATER_FIELDS[k]}


@dataclass
class HeadConfig:
    """A task head on the last hidden state of a function tag's last vector."""

    kind: str = field(
        default="regression",
        metadata={"help": "a registered head kind: regression, classification or lm"}
    )
    num_outputs: int = field(
        default=1, metadata={"help": "regression outputs, or number of classes"}
    )
    loss: str = field(
        default="", metadata={"help": "mse, l1 or cross_entropy; empty picks the kind's default"}
    )
    readout_layer: int | Literal["auto"] = field(
        default=-1,
        metadata={"help": "the layer whose hidden states the head reads: k = the output of "
                          "decoder layer k (1 = the first), -1 = the last layer after the "
                          "final norm, auto = chosen on the validation rows before training "
                          "(closed-form fits at a range of layers)"},
    )
    pool: Literal["tag", "tag+mean", "auto"] = field(
        default="tag",
        metadata={"help": "tag: the hidden state at the tag's last vector; tag+mean: that, "
                          "concatenated with the mean over the input's text tokens (tags, "
                          "padding and special tokens left out) at the same layer; auto: "
                          "chosen on the validation rows with the layer"},
    )

    LATER_FIELDS: ClassVar[JSONObject] = {"readout_layer": -1, "pool": "tag"}

    def __post_init__(self) -> None:
        _check(self.kind in HEADS, "HeadConfig", "kind",
               f"unknown head kind {self.kind!r}; known: {sorted(HEADS)}")
        _check(self.readout_layer == "auto" or (
            isinstance(self.readout_layer, int) and not isinstance(self.readout_layer, bool)
            and (self.readout_layer >= 1 or self.readout_layer == -1)),
               "HeadConfig", "readout_layer", f"must be -1 (the last layer), a layer number "
               f">= 1 or 'auto', got {self.readout_layer!r}")
        _check(self.pool in ("tag", "tag+mean", "auto"), "HeadConfig", "pool",
               f"{self.pool!r} is not 'tag', 'tag+mean' or 'auto'")
        _check(HEADS[self.kind].has_parameters or (self.readout_layer == -1
                                                   and self.pool == "tag"),
               "HeadConfig", "readout_layer", f"a {self.kind} head reads the last layer "
               "at the tag (readout_layer and pool are for heads with parameters)")
        cls = HEADS[self.kind]  # the registry says what each kind takes
        _check(isinstance(self.num_outputs, int) and self.num_outputs >= 1, "HeadConfig",
               "num_outputs", f"must be an int >= 1, got {self.num_outputs!r}")
        self.loss = self.loss or cls.losses[0]
        problem = cls.config_error(self.num_outputs, self.loss)
        _check(problem is None, "HeadConfig", "num_outputs" if "outputs" in str(problem)
               else "loss", str(problem))

    @property
    def supervised(self) -> bool:
        """Whether the head trains on labels (it owns parameters at the tag position)."""
        return head_class(self.kind).has_parameters

    @property
    def pooled(self) -> bool:
        """Whether the head also reads the mean over the input's text tokens."""
        return self.pool == "tag+mean"

    @property
    def auto(self) -> bool:
        """Whether its readout is still to be chosen on validation rows."""
        return self.readout_layer == "auto" or self.pool == "auto"

    def to_dict(self) -> JSONObject:
        return _without_later_defaults(self)


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
    reparam: Literal["none", "residual_mlp"] = field(
        default="none",
        metadata={"help": "residual_mlp: while training, the vectors are P + MLP(P) (a "
                          "two-layer MLP shared by the p vectors, its output layer starting "
                          "at zero, so the untrained tag is the plain one); saved folded "
                          "into plain vectors, so the tag file and predictions cost the "
                          "same"},
    )
    reparam_size: int = field(default=64,
                              metadata={"help": "hidden width of the residual MLP"})
    depth: Literal["input", "deep"] = field(
        default="input",
        metadata={"help": "input: p vectors in the input embeddings; deep: also p learned "
                          "offsets added to the hidden states at the tag's positions at the "
                          "input of every later decoder layer (starting at zero, so the "
                          "untrained deep tag is the input one)"},
    )

    #: fields added after tag files existed: left out of to_dict at their defaults, so the
    #: files and store keys of tags that do not use them stay as they were
    LATER_FIELDS: ClassVar[JSONObject] = {"reparam": "none", "reparam_size": 64,
                                              "depth": "input"}

    def __post_init__(self) -> None:
        _check(self.depth in ("input", "deep"), "TagConfig", "depth",
               f"{self.depth!r} is not 'input' or 'deep'")
        _check(self.reparam in ("none", "residual_mlp"), "TagConfig", "reparam",
               f"{self.reparam!r} is not 'none' or 'residual_mlp'")
        _check(isinstance(self.reparam_size, int) and 1 <= self.reparam_size <= 65536,
               "TagConfig", "reparam_size", f"must be an int in [1, 65536], got "
               f"{self.reparam_size!r}")
        _check(self.reparam == "residual_mlp" or self.reparam_size == 64, "TagConfig",
               "reparam_size", "is the residual MLP's width: set it with "
               "reparam: residual_mlp")
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
        _check(self.head is None or isinstance(self.head, HeadConfig), "TagConfig", "head",
               f"expected a mapping (kind, num_outputs, ...), got {type(self.head).__name__}")
        if self.head is not None:
            _check(self.kind == "function", "TagConfig", "head",
                   f"only function tags own heads; {self.name} is a {self.kind} tag")

    def to_dict(self) -> JSONObject:
        d = _without_later_defaults(self)
        d["head"] = self.head.to_dict() if self.head else None
        return d

    @classmethod
    def from_json(cls, data: JSONObject) -> TagConfig:
        return from_dict(cls, dict(data))


#: What ``tagllm train`` uses for a tag with a regression or classification head unless
#: told otherwise: the setting validation chose in benchmarks/tag_training_sweep.py (the
#: only one whose trained tag beat its untrained start on a test set): a low constant tag
#: rate for many steps, the head held and re-fitted in closed form every 50 steps, and
#: early stopping. Where training does not help, validation keeps the untrained tag.
HEAD_TRAINING: dict[str, int | float | str] = {"steps": 900, "lr": 1e-4, "schedule": "constant",
                                 "head_lr": 1e-6, "refit_every": 50, "patience": 4}


def head_training(given: JSONObject) -> JSONObject:
    """The :data:`HEAD_TRAINING` settings to add to the ``given`` ones (TrainConfig fields):
    those not given, less what the given ones rule out (re-fits need the closed-form warm
    start; early stopping needs validation rows)."""
    out = {k: v for k, v in HEAD_TRAINING.items() if k not in given}
    if given.get("warm_start_head") is False:
        out.pop("refit_every", None)
    if given.get("validation") == 0:
        out.pop("patience", None)
    return out


@dataclass
class TrainConfig:
    """Hyper-parameters of one tag-training run."""

    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of tags"})
    head_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of heads"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    schedule: Literal["cosine", "constant", "linear"] = field(
        default="cosine",
        metadata={"help": "learning rate after the warm-up: cosine or linear decay to 0 at "
                          "`steps`, or constant"},
    )
    optimizer: Literal["adamw", "adafactor"] = field(
        default="adamw",
        metadata={"help": "adamw, or adafactor (torch.optim.Adafactor: each step scaled by "
                          "the parameter's RMS and at most min(lr, 1/sqrt(step)); prompt "
                          "tuning's choice, with lr 0.3)"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
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
    ridge_alpha: float = field(default=1.0, metadata={
        "help": "the closed-form fits choose their penalty by cross-validation among "
                "ridge_alpha x 10^-2 .. 10^4 (ridge for values, logistic regression with "
                "C = 1 / penalty for classes)"})
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
    prefix_cache_disk_gb: float = field(
        default=0.0,
        metadata={"help": "disk for prefix key/values beyond prefix_cache_gb (temporary files "
                          "under $TAGLLM_HOME/prefix-cache, read back without resident "
                          "memory); 0 = none"},
    )
    prefix_cache_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={"help": "dtype of the kept prefix key/values: bfloat16 halves their memory "
                          "(gradients within 0.5% of float32 in tests/test_prefix.py)"},
    )
    autocast: Literal["no", "bf16", "fp16"] = field(
        default="no",
        metadata={"help": "run the training passes (steps, the warm start's features, "
                          "validation) under torch.autocast in bf16/fp16; weights stay as "
                          "loaded; tags, heads and optimizer state stay fp32; evaluations "
                          "run in the model's dtype"},
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in the backward pass of "
                          "full-sequence steps (less memory, more time; for large models)"},
    )
    validation: float = field(
        default=0.1,
        metadata={"help": "fraction of each part's training rows held out (seeded) to "
                          "validate on; 0 = none"},
    )
    eval_every: int = field(
        default=50,
        metadata={"help": "steps between validation losses (also before the first step and "
                          "after the last)"},
    )
    select: Literal["best", "last"] = field(
        default="best",
        metadata={"help": "keep the tags of the step with the lowest validation loss (step "
                          "0, the untrained tags with fitted heads, included) or the last"},
    )
    patience: int = field(
        default=0,
        metadata={"help": "stop early after this many validation points (every eval_every "
                          "steps) without a new lowest validation loss; 0 = run all steps"},
    )
    refit_every: int = field(
        default=0,
        metadata={"help": "every N steps, re-fit each head in closed form on the current "
                          "tags' features of the warm-start rows (the head follows its "
                          "moving features); 0 = never"},
    )
    refit_rows: Literal["warm_start", "seen"] = field(
        default="warm_start",
        metadata={"help": "the rows a refit_every re-fit uses: warm_start = a fresh pass over "
                          "the warm-start rows (exact; costs that pass), seen = the latest "
                          "features training computed for each of warm_start_examples "
                          "distinct rows (no extra pass; the warm start's at first)"},
    )
    refit_head: bool = field(
        default=False,
        metadata={"help": "after training, re-fit each head in closed form on the kept tags' "
                          "features (the warm-start rows); kept only where the validation "
                          "loss drops"},
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
        _check(self.prefix_cache_disk_gb >= 0, "TrainConfig", "prefix_cache_disk_gb",
               "must be >= 0")
        _check(self.prefix_cache_dtype in ("float32", "bfloat16"), "TrainConfig",
               "prefix_cache_dtype", f"{self.prefix_cache_dtype!r} is not 'float32' or "
               "'bfloat16'")
        _check(self.autocast in ("no", "bf16", "fp16"), "TrainConfig", "autocast",
               f"{self.autocast!r} is not 'no', 'bf16' or 'fp16'")
        _check(isinstance(self.validation, (int, float)) and 0 <= self.validation < 1,
               "TrainConfig", "validation", f"must be a fraction in [0, 1), got "
               f"{self.validation!r}")
        _check(isinstance(self.eval_every, int) and self.eval_every >= 1, "TrainConfig",
               "eval_every", f"must be a positive int, got {self.eval_every!r}")
        _check(self.select in ("best", "last"), "TrainConfig", "select",
               f"{self.select!r} is not 'best' or 'last'")
        _check(self.select == "last" or self.validation > 0, "TrainConfig", "select",
               "'best' needs validation rows (validation > 0); use select='last'")
        _check(self.schedule in ("cosine", "constant", "linear"), "TrainConfig", "schedule",
               f"{self.schedule!r} is not 'cosine', 'constant' or 'linear'")
        _check(self.optimizer in ("adamw", "adafactor"), "TrainConfig", "optimizer",
               f"{self.optimizer!r} is not 'adamw' or 'adafactor'")
        if self.optimizer == "adafactor":
            import torch

            _check(hasattr(torch.optim, "Adafactor"), "TrainConfig", "optimizer",
                   f"adafactor needs torch.optim.Adafactor (torch >= 2.5); this is torch "
                   f"{torch.__version__}")
        for name in ("patience", "refit_every"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                   "TrainConfig", name, f"must be an int >= 0, got {getattr(self, name)!r}")
        _check(not self.patience or self.validation > 0, "TrainConfig", "patience",
               "early stopping needs validation rows (validation > 0)")
        _check(not self.refit_every or self.warm_start_head, "TrainConfig", "refit_every",
               "re-fitting needs the closed-form fit (warm_start_head)")
        _check(self.refit_rows in ("warm_start", "seen"), "TrainConfig", "refit_rows",
               f"{self.refit_rows!r} is not 'warm_start' or 'seen'")
        _check(self.refit_rows == "warm_start" or self.refit_every, "TrainConfig",
               "refit_rows", "'seen' is the rows of the refit_every re-fits: set refit_every")
        _check(not self.refit_head or (self.validation > 0 and self.warm_start_head),
               "TrainConfig", "refit_head",
               "needs validation rows (validation > 0) and warm_start_head")
        _check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
               "TrainConfig", "checkpoint_every", "must be an int >= 0")

    def to_dict(self) -> JSONObject:
        return asdict(self)

    #: Fields that change how a run is logged, cached, checkpointed or how much memory it
    #: takes, never its result.
    NOT_RESULT = ("log_every", "prefix_cache_gb", "prefix_cache_disk_gb", "checkpoint_every",
                  "activation_checkpointing")

    def result_dict(self) -> JSONObject:
        """The fields that determine the trained tags and differ from their defaults (the tag
        store's key uses these). Leaving defaults out keeps keys stable when a new field with
        a neutral default is added; changing a default must bump ``store.STORE_FORMAT``."""
        default = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items()
                if k not in self.NOT_RESULT and v != default[k]}


def _too_long(value: str) -> None:
    if value not in ("error", "skip"):
        raise ConfigError(f"too_long: {value!r} is not 'error' or 'skip' (inputs are never "
                         "truncated silently)")


@dataclass(kw_only=True)
class RowsConfig:
    """Where the rows of a data or evaluation entry come from, and how they are checked."""

    source: str = field(metadata={"help": "CSV/TSV/.smi/FASTA file, or a built-in: "
                                          "moses:train|test|test_scaffolds, proteins:train|test, "
                                          "nci:train|test, bindingdb:SPLIT:FILE, "
                                          "drugcomb:SPLIT:FILE, bible:LANG[-LANG]:SPLIT, "
                                          "flores:SRC-TGT:SPLIT:DIR"})
    label: str | list[str] | None = field(default=None, metadata={
        "help": "target column(s) of the head: one, a list (multi-output regression), or a "
                "source's group name (proteins:*: descriptors)"})
    n: int | None = field(default=None, metadata={"help": "seeded random sample size"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of the sample (default: the recipe's seed; tagllm evaluate: 0)"})
    skip_invalid: bool = field(default=False,
                               metadata={"help": "drop invalid rows (listed) instead of failing"})
    too_long: TooLong = field(default="error", metadata={
        "help": "inputs longer than max_length (a stage's, or evaluate's flag): error, "
                "naming the row, or skip (counted, logged); never truncated"})
    context: int = field(default=0, metadata={
        "help": "in-context examples before each input: k labelled rows of the training "
                "data, each written as the template followed by its label"})

    def __post_init__(self) -> None:
        _too_long(self.too_long)
        if not isinstance(self.context, int) or self.context < 0:
            raise ConfigError(f"context: must be an int >= 0, got {self.context!r}")
        if self.context and not self.label:
            raise ConfigError("context: in-context examples need a label to show")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError("source: must be a non-empty string")
        if self.label is not None and not (
                (isinstance(self.label, str) and self.label.strip()) or (
                isinstance(self.label, list) and self.label
                and all(isinstance(c, str) and c.strip() for c in self.label))):
            raise ConfigError(f"label: a column name or a non-empty list of them, got "
                             f"{self.label!r}")
        if self.n is not None and (not isinstance(self.n, int) or self.n < 1):
            raise ConfigError(f"n: must be a positive int, got {self.n!r}")


@dataclass(kw_only=True)
class DataConfig(RowsConfig):
    """One data stream of a stage: its rows and how each becomes an input."""

    template: str = field(metadata={"help": "input text per row, {column} placeholders"})
    weight: float = field(default=1.0,
                          metadata={"help": "share of each batch when a stage mixes parts"})
    groups: list[str] | None = field(default=None, metadata={
        "help": "columns whose values no validation row may share with a training row (as a "
                "grouped test split demands); default: the source's own (proteins:*: "
                "homology, kiba:*: ligand_id and prot_id), else none; [] for none"})
    validation_source: str | None = field(default=None, metadata={
        "help": "validate on this source's rows (a split of their own, e.g. kiba:val) "
                "instead of rows held out of this entry; same template, label and checks"})
    validation_n: int | None = field(default=None, metadata={
        "help": "seeded random sample of validation_source"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.template, str) or "{" not in self.template:
            raise ConfigError(f"template: {self.template!r} has no {{column}} placeholder")
        if not (isinstance(self.weight, int | float) and self.weight > 0):
            raise ConfigError(f"weight: must be > 0, got {self.weight!r}")
        if self.groups is not None and not (isinstance(self.groups, list) and all(
                isinstance(c, str) and c for c in self.groups)):
            raise ConfigError(f"groups: a list of column names, got {self.groups!r}")
        if self.validation_source is not None and not (
                isinstance(self.validation_source, str) and self.validation_source.strip()):
            raise ConfigError(f"validation_source: a source, got {self.validation_source!r}")
        if self.validation_n is not None and (
                not isinstance(self.validation_n, int) or self.validation_n < 1
                or self.validation_source is None):
            raise ConfigError(f"validation_n: a positive int, with validation_source; got "
                              f"{self.validation_n!r}")
        if self.validation_source is not None and self.context:
            raise ConfigError("validation_source with context: not supported; in-context "
                              "validation rows are held out of the entry's own rows")


@dataclass(kw_only=True)
class EvalConfig(RowsConfig):
    """A held-out evaluation after a stage: head metrics, or next-token loss without label."""

    template: str | None = field(default=None,
                                 metadata={"help": "default: the stage's data template"})
    baselines: list[str] = field(default_factory=list,
                                 metadata={"help": "methods to compare with, from the "
                                                   "registry: " + ", ".join(
                                                       f"{k} ({c.needs})"
                                                       for k, c in BASELINES.items())})
    ablation: bool = field(default=False, metadata={
        "help": "also evaluate the untrained function tag: with its closed-form head, or "
                "generating (reference)"})
    name: str | None = field(default=None, metadata={"help": "row label in the results"})
    reference: str | None = field(default=None, metadata={
        "help": "column of reference texts: generate greedily from the template and score "
                "with BLEU and chrF (translation)"})
    source_column: str = field(default="source", metadata={
        "help": "the column the copy-the-source baseline copies"})
    prompt: str | None = field(default=None, metadata={
        "help": "plain-text prompt template without tags for the prompt baseline, e.g. "
                "\"{src}: {source}\\n{tgt}:\""})
    max_new_tokens: int = field(default=128, metadata={"help": "generation length limit"})
    spm_model: str | None = field(default=None, metadata={
        "help": "local SentencePiece model file: also report spBLEU"})

    @property
    def kind(self) -> EvalKind:
        """What the entry scores: a function tag's ``head`` on ``label``, the model's
        ``generation`` against ``reference``, or else the next-token ``loss``."""
        return "head" if self.label else "generation" if self.reference else "loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"baselines: unknown {bad}; known: {list(BASELINES)}")
        if self.reference and self.label:
            raise ConfigError("give label (a head's target) or reference (generated text), "
                              "not both")
        kind = "reference" if self.reference else "label"
        wrong = [b for b in self.baselines if BASELINES[b].needs != kind]
        if wrong:
            need = BASELINES[wrong[0]].needs
            raise ConfigError(f"baselines {wrong} need {need} ("
                              + ("a generation evaluation" if need == "reference"
                                 else "a head's target, not a reference") + ")")
        if "prompt" in self.baselines and not self.prompt:
            raise ConfigError("the prompt baseline needs prompt: a plain-text template")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
