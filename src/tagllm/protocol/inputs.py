"""A data or evaluation entry's rows: loaded, validated, rendered, held out, length-checked.

:func:`read_rows` needs no model: it loads the source (every row checked), renders the
template, leaves out inputs that an evaluation set holds, and parses the labels (each
checked by the head it feeds). :func:`fit_length` then applies the entry's ``too_long``
policy with the tag tokenizer, and :func:`add_context` prefixes in-context examples. Both
``tagllm run`` and ``tagllm evaluate`` go through these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from tagllm.config import DataConfig, EvalConfig, HeadConfig
from tagllm.data import LengthLimit, Table, parse_labels
from tagllm.errors import DataError, InputTooLongError
from tagllm.heads import head_class
from tagllm.model import TaggedModel
from tagllm.records import JSONObject
from tagllm.sources import (
    HELD_OUT_COLUMNS,
    SMILES_COLUMNS,
    default_groups,
    label_columns,
    load_source,
)
from tagllm.tags import TagTokenizer

Log = Callable[[str], None]
Entry = DataConfig | EvalConfig


@dataclass
class LoadedData:
    """A data entry loaded, validated and rendered."""

    config: Entry
    table: Table
    texts: list[str]
    targets: np.ndarray | None
    skipped: list[str] = field(default_factory=list)
    #: the rows of ``config.validation_source`` (validation rows of their own)
    val: LoadedData | None = None
    #: per row, whether it validates: rows held out before in-context examples were drawn,
    #: so that no validation row is shown, with its label, inside a training input
    val_mask: list[bool] | None = None

    def group_columns(self) -> list[str]:
        """The columns whose values validation keeps apart from training: the entry's
        ``groups``, else its source's (:func:`~tagllm.sources.default_groups`)."""
        cols = getattr(self.config, "groups", None)
        return default_groups(self.config.source) if cols is None else list(cols)

    def groups(self) -> list[tuple] | None:
        """Per row, the values of :meth:`group_columns` (None when there are none)."""
        cols = self.group_columns()
        if not cols:
            return None
        missing = [c for c in cols if c not in self.table.columns]
        if missing:
            raise DataError(f"{self.config.source}: groups names column(s) {missing} that it "
                            f"does not have; columns: {sorted(self.table.columns)}")
        return list(zip(*(self.table[c] for c in cols), strict=True))

    def validation_material(self) -> JSONObject:
        """What decides this entry's validation rows (part of the stage's key)."""
        groups = self.groups()
        out: JSONObject = {"groups": self.group_columns(),
                               "group_values": None if groups is None else
                               hashlib.sha256(repr(groups).encode()).hexdigest()}
        if self.val is not None:
            out["rows"] = {"source": self.config.validation_source, "n": len(self.val.texts),
                           "fingerprint": self.val.fingerprint()}
        if self.val_mask is not None:
            out["held_out_before_context"] = sum(self.val_mask)
        return out

    def fingerprint(self) -> str:
        """SHA-256 of the rendered inputs and targets: what training actually sees."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode())
            h.update(b"\0")
        if self.targets is not None:
            h.update(np.ascontiguousarray(self.targets, dtype=np.float64).tobytes())
        return "sha256:" + h.hexdigest()

    def keep(self, rows: list[int], texts: list[str] | None = None) -> None:
        """Keep only ``rows`` (and, if given, replace the inputs by ``texts``)."""
        texts = self.texts if texts is None else texts
        self.table = self.table.select(rows)
        self.texts = [texts[i] for i in rows]
        if self.targets is not None:
            self.targets = self.targets[rows]
        if self.val_mask is not None:
            self.val_mask = [self.val_mask[i] for i in rows]


@dataclass
class HeldOut:
    """What no training entry may contain: the evaluation sets' molecules, sequences and
    rendered inputs."""

    smiles: set[str] = field(default_factory=set)
    sequences: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)

    def add(self, d: LoadedData) -> None:
        self.texts.update(d.texts)
        for col, values in d.table.columns.items():
            if col.lower() in SMILES_COLUMNS:
                self.smiles.update(values)
            if col.lower() in HELD_OUT_COLUMNS:
                self.sequences.update(values)


def read_rows(cfg: Entry, seed: int, held: HeldOut | None = None, progress: bool = True,
              log: Log = print, head: HeadConfig | None = None,
              limit: LengthLimit | None = None) -> LoadedData:
    """Load ``cfg``'s source (``cfg.seed`` or ``seed`` for the sample), render its template,
    leave out held-out rows, and parse the labels, which ``head`` (the head they feed)
    checks. Needs no model; ``limit`` (:func:`length_limit`) checks each row's length
    before its molecules and sequences."""
    held = held or HeldOut()
    table, skipped = load_source(cfg.source, cfg.n, cfg.seed if cfg.seed is not None else seed,
                                 label=cfg.label, skip_invalid=cfg.skip_invalid,
                                 exclude_smiles=held.smiles, exclude_sequences=held.sequences,
                                 progress=progress, limit=limit)
    d = LoadedData(cfg, table, table.render(cfg.template), None, skipped)
    same = [i for i, t in enumerate(d.texts) if t in held.texts]
    if same:  # the very same input is in an evaluation set: never train on it
        log(f"{cfg.source}: left out {len(same)} row(s) whose input is in an evaluation set")
        if len(same) == len(d.texts):
            raise DataError(f"{cfg.source}: every input is also in an evaluation set")
        d.keep(sorted(set(range(len(d.texts))) - set(same)))
    cols = label_columns(cfg.source, cfg.label)
    if cols:
        d.targets = parse_labels(d.table, cols[0] if len(cols) == 1 else cols)
        _check_labels(d, cols, head)
    return d


def _check_labels(d: LoadedData, cols: list[str], head: HeadConfig | None) -> None:
    """Labels the head cannot take fail naming the first such row and the count."""
    if head is None:
        return
    bad = head_class(head.kind).label_errors(d.targets, head.num_outputs)
    if bad:
        i, why = bad[0]
        raise DataError(f"{d.table.where(i)}: label {cols[0]!r}: {why} ({len(bad)} such "
                        "row(s))")


def length_limit(cfg: Entry, counter: TagTokenizer, max_length: int, log: Log = print
                 ) -> LengthLimit:
    """The entry's too_long policy as the check data readers apply to every row before its
    chemistry or biology (:class:`~tagllm.data.LengthLimit`)."""
    return counter.length_limit(cfg.template, max_length, skip=cfg.too_long == "skip",
                                hint="raise max_length, or set too_long: skip to drop them",
                                log=lambda msg: log(msg + " (too_long: skip)"))


def fit_length(d: LoadedData, tagger: TaggedModel, max_length: int, log: Log = print,
               what: str = "", texts: list[str] | None = None) -> None:
    """The entry's too_long policy on its inputs (or on ``texts``, which then replace them):
    ``error`` names the first row over ``max_length`` tokens; ``skip`` drops those rows,
    counted and logged, and never all of them. Nothing is ever truncated."""
    texts = d.texts if texts is None else texts
    lengths = [len(tagger.tagtok.encode(t).ids) for t in texts]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long and d.config.too_long == "error":
        i = long[0]
        raise InputTooLongError(
            f"{d.table.where(i)}: {lengths[i]} tokens{what} > max_length {max_length} "
            f"({len(long)} such input(s)); raise the stage's max_length, or set too_long: "
            "skip to drop them")
    if long:  # too_long: skip, an explicit policy: the dropped rows are counted and logged
        log(f"{d.config.source}: skipped {len(long)} of {len(texts)} input(s) longer than "
            f"{max_length} tokens{what} (too_long: skip)")
        if len(long) == len(texts):
            raise DataError(f"{d.config.source}: every input is longer than {max_length} "
                            f"tokens{what}")
    d.skipped += [f"{d.table.where(i)}: {lengths[i]} tokens{what} > {max_length}" for i in long]
    drop = set(long)
    d.keep([i for i in range(len(texts)) if i not in drop], texts)


def add_context(d: LoadedData, pool: LoadedData, seed: int, tagger: TaggedModel,
                max_length: int, log: Log = print) -> None:
    """Prefix every input of ``d`` with ``k`` labelled examples drawn (seeded, per row)
    from ``pool``'s rows, each written as its input followed by its label, one per line.
    When ``pool`` is ``d`` itself a row never serves as its own example. Inputs that grow
    beyond ``max_length`` follow the entry's too_long policy."""
    k = d.config.context
    # a row held out for validation is never shown as an example
    shown = [j for j in range(len(pool.texts)) if not (pool.val_mask and pool.val_mask[j])]
    if len(shown) < k + (pool is d):
        raise DataError(f"{d.config.source}: context {k} needs more than {len(shown)} "
                        "labelled training rows")
    rng = np.random.default_rng([seed, 7919])
    texts = []
    for i, t in enumerate(d.texts):
        choice: list[int] = []
        while len(choice) < k:
            j = shown[int(rng.integers(len(shown)))]
            if j not in choice and not (pool is d and j == i):
                choice.append(j)
        examples = [f"{pool.texts[j]} {_shown(pool.targets[j])}" for j in choice]
        texts.append("\n".join([*examples, t]))
    fit_length(d, tagger, max_length, log, f" with {k} in-context examples", texts)


def _shown(y: np.ndarray | float) -> str:
    return " ".join(f"{v:.3g}" for v in np.atleast_1d(y))


def report_skipped(label: str, entries: Iterable[LoadedData], log: Log) -> None:
    """One log line per entry that dropped rows, with the first three reasons."""
    for d in entries:
        if d.skipped:
            more = f" (and {len(d.skipped) - 3} more)" if len(d.skipped) > 3 else ""
            log(f"{label}: skipped {len(d.skipped)} row(s) of {d.config.source}: "
                + "; ".join(d.skipped[:3]) + more)
