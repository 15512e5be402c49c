"""Training data: parts, their checked encoding, and the seeded batch order.

A :class:`Part` is one data stream of a training job. :func:`encode_parts` turns the parts
into token ids and targets and checks, before any step, that each labelled part feeds one
trained head (the head's own :meth:`~tagllm.heads.Head.check_targets` says what its targets
must be) and that every trained tag gets data. :func:`mixed_batches` is the data order: a
pure function of the seed, so a resumed run replays it exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tagllm.errors import DataError
from tagllm.model import Batch, TaggedModel
from tagllm.tags import pad_batch


@dataclass
class Part:
    """One data stream of a training job: texts, optional targets and a mixing weight.

    A part with ``targets`` trains the head of the one trained function tag in its texts; a
    part without trains every trained tag in its texts by next-token prediction.
    """

    texts: Sequence[str]
    targets: np.ndarray | None = None
    weight: float = 1.0
    name: str = ""
    #: per row, the values (e.g. ligand, protein; a homology group) that no validation row
    #: may share with a training row (:func:`validation_split`); None: rows are independent
    groups: Sequence[tuple] | None = None
    #: the rows to validate on, fixed by the caller (a split of its own, or rows already
    #: kept out of in-context examples); None: drawn by :func:`carve_validation`
    val_rows: Sequence[int] | None = None


@dataclass
class Encoded:
    """The parts as the loop uses them: per part, token ids, targets (None for next-token
    parts) and the tag whose head the targets train."""

    ids: list[list[list[int]]]
    targets: list[torch.Tensor | None]
    head_of: list[str | None]
    weights: list[float]
    names: list[str] = field(default_factory=list)  # each part's name, for messages
    rows: list[list[int]] = field(default_factory=list)  # each id's row in its part
    groups: list[Sequence[tuple] | None] = field(default_factory=list)  # see Part
    val_rows: list[Sequence[int] | None] = field(default_factory=list)  # see Part

    def __post_init__(self) -> None:
        self.names = self.names or [f"part {k}" for k in range(len(self.ids))]
        self.rows = self.rows or [list(range(len(part))) for part in self.ids]
        self.groups = self.groups or [None] * len(self.ids)
        self.val_rows = self.val_rows or [None] * len(self.ids)

    @property
    def supervised(self) -> list[int]:
        """Indices of the labelled parts."""
        return [k for k, t in enumerate(self.head_of) if t is not None]


def collate(model: TaggedModel, ids: Sequence[Sequence[int]]) -> Batch:
    """A right-padded batch on the model's device."""
    return Batch(*pad_batch(ids, model.pad_id)).to(model.device)


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int,
                            bucket: int = 32):
    """Endless batches of indices: shuffled each epoch, then sorted by length within chunks
    of ``bucket`` batches so each batch pads little; batch order shuffled again."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    while True:
        perm = rng.permutation(n)
        batches = []
        chunk = batch_size * bucket
        for s in range(0, n, chunk):
            part = sorted(perm[s:s + chunk].tolist(), key=lambda i: lengths[i])
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        if n >= batch_size:  # drop a ragged final batch when full ones exist
            batches = [b for b in batches if len(b) == batch_size] or batches
        for k in rng.permutation(len(batches)):
            yield batches[k]


def mixed_batches(lengths: Sequence[Sequence[int]], weights: Sequence[float],
                  batch_size: int, seed: int) -> Iterator[list[tuple[int, list[int]]]]:
    """Endless batches that mix parts: each batch is a list of ``(part, indices)``.

    With one part this is :func:`length_bucketed_batches`. With several, each batch's
    ``batch_size`` slots are split between the parts by a multinomial draw with ``weights``
    and filled from each part's own length-bucketed stream, so consecutive indices of a
    part have similar lengths. Everything follows from ``seed``: replaying the generator
    reproduces the batches exactly (resume relies on it).
    """
    if len(lengths) == 1:
        for b in length_bucketed_batches(lengths[0], batch_size, seed):
            yield [(0, b)]
        return
    rng = np.random.default_rng([seed, len(lengths)])
    streams = [itertools.chain.from_iterable(length_bucketed_batches(ls, batch_size, seed + k))
               for k, ls in enumerate(lengths)]
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    while True:
        counts = rng.multinomial(batch_size, w)
        yield [(k, list(itertools.islice(streams[k], int(c))))
               for k, c in enumerate(counts) if c > 0]


def _trained_heads(model: TaggedModel, tags: Sequence[str]) -> list[str]:
    return [t for t in tags if (h := model.head(t)) is not None and h.has_parameters]


def _head_tag(model: TaggedModel, tags: Sequence[str], text: str, where: str) -> str:
    """The one trained tag with a trainable head that occurs in ``text``."""
    present = {s for s, is_tag in model.tagtok.split(text) if is_tag}
    found = [t for t in _trained_heads(model, tags) if t in present]
    if not found:
        raise DataError(f"{where}: labelled inputs do not contain a trained function tag with "
                        f"a head ({_trained_heads(model, tags) or 'none is being trained'}); "
                        f"first input: {text[:80]!r}")
    if len(found) > 1:
        raise DataError(f"{where}: labelled inputs contain several trained tags with heads "
                        f"({found}); give each its own data")
    return found[0]


def _encode_targets(model: TaggedModel, tags: Sequence[str], part: Part, ids: list[list[int]],
                    where: str) -> tuple[torch.Tensor, str]:
    """A labelled part's targets, checked by the head they train, and that head's tag."""
    tag = _head_tag(model, tags, part.texts[0], where)
    y = torch.as_tensor(np.asarray(part.targets), dtype=torch.float32)
    if len(y) != len(part.texts):
        raise DataError(f"{where}: {len(part.texts)} texts but {len(y)} targets")
    model.head(tag).check_targets(y, where)
    model.head_positions(collate(model, ids[:1]).input_ids, tag)  # the tag is present
    return y, tag


def encode_parts(model: TaggedModel, tags: Sequence[str], parts: Sequence[Part],
                 max_length: int) -> Encoded:
    """Token ids, target tensors and the head-owning tag of each part, all checked."""
    out = Encoded([], [], [], [p.weight for p in parts],
                  [p.name or f"part {k}" for k, p in enumerate(parts)])
    for k, part in enumerate(parts):
        where = part.name or f"part {k}"
        if not part.texts:
            raise DataError(f"{where}: no training examples")
        ids = [e.ids for e in model.tagtok.encode_batch(part.texts, max_length, where=where)]
        y, tag = (None, None) if part.targets is None else \
            _encode_targets(model, tags, part, ids, where)
        if part.groups is not None and len(part.groups) != len(ids):
            raise DataError(f"{where}: {len(part.groups)} groups for {len(ids)} rows")
        out.ids.append(ids)
        out.rows.append(list(range(len(ids))))
        out.targets.append(y)
        out.head_of.append(tag)
        out.groups.append(part.groups)
        out.val_rows.append(part.val_rows)
    _check_coverage(model, tags, parts, out.head_of)
    return out


def _check_coverage(model: TaggedModel, tags: Sequence[str], parts: Sequence[Part],
                    head_of: list[str | None]) -> None:
    """Every trained head gets labels from exactly one part; every tag gets data."""
    supervised = [t for t in head_of if t is not None]
    for t in _trained_heads(model, tags):
        if t not in supervised:
            raise DataError(f"tag {t} has a {model.head(t).kind} head: training needs targets "
                            "(a label column)")
    if len(set(supervised)) != len(supervised):
        raise DataError(f"two labelled parts train the same head: {supervised}")
    lm_tags = {t for k, p in enumerate(parts) if head_of[k] is None
               for t, is_tag in model.tagtok.split(p.texts[0]) if is_tag and t in tags}
    untouched = [t for t in tags if t not in lm_tags and t not in supervised]
    if untouched:
        raise DataError(f"no training data contains {untouched}")


def validation_split(n: int, fraction: float, seed: Sequence[int] | int,
                     groups: Sequence[tuple] | None = None, where: str = "data"
                     ) -> tuple[list[int], list[int]]:
    """(training rows, validation rows) of ``n`` rows: ``fraction`` of them (at least one,
    always leaving rows to train on) drawn with a generator seeded by ``seed``.

    With ``groups`` (a tuple of values per row, one per grouping column) no validation row
    shares a value with a training row, as a grouped test split demands: the values of each
    column are taken in a seeded random order, the same share of each, until the rows whose
    values are all taken hold ``fraction`` of the rows. Those rows validate; rows with no
    taken value train; rows with some taken and some not (a known ligand on a new protein)
    do neither. With one column this is a split by whole groups."""
    rng = np.random.default_rng(seed)
    if groups is None:
        n_val = min(max(1, round(fraction * n)), n - 1)
        perm = rng.permutation(n)
        return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
    columns = list(zip(*groups, strict=True)) if groups else []
    orders = [[values[i] for i in rng.permutation(len(values))]
              for values in (sorted(set(c), key=repr) for c in columns)]
    want = max(1, round(fraction * n))
    for step in range(1, 101):
        taken = [set(order[:max(1, round(step / 100 * len(order)))]) for order in orders]
        val = [i for i in range(n) if all(g in t for g, t in zip(groups[i], taken, strict=True))]
        if len(val) >= want:
            break
    train = [i for i in range(n) if not any(g in t for g, t in zip(groups[i], taken,
                                                                   strict=True))]
    if not train or not val:
        raise DataError(f"{where}: no validation split keeps its groups apart from the "
                        f"training rows ({len(set(groups))} distinct groups in {n} rows); "
                        "give validation rows of their own or set validation: 0")
    return train, val


def carve_validation(data: Encoded, fraction: float, seed: int
                     ) -> tuple[Encoded, Encoded | None, list[int]]:
    """Split every part into training and validation rows: its fixed ``val_rows``, else
    :func:`validation_split` of ``fraction`` of its rows (by its ``groups`` where it has
    them) seeded by ``(seed, part)``. Returns (training data, validation data or None,
    validation rows of each part)."""
    fixed = any(v is not None for v in data.val_rows)
    if fraction <= 0 and not fixed:
        return data, None, [0] * len(data.ids)
    train, val = (Encoded([], [], list(data.head_of), list(data.weights), list(data.names))
                  for _ in range(2))
    counts = []
    for k, ids in enumerate(data.ids):
        n = len(ids)
        if data.val_rows[k] is not None:
            chosen = set(data.val_rows[k])
            rows = ([i for i in range(n) if i not in chosen], sorted(chosen))
        elif fraction <= 0:
            rows = (list(range(n)), [])
        else:
            rows = validation_split(n, fraction, [seed, k], data.groups[k], data.names[k])
        n_val = len(rows[1])
        for enc, idx in zip((train, val), rows, strict=True):
            enc.ids.append([ids[i] for i in idx])
            enc.rows.append([data.rows[k][i] for i in idx])
            y = data.targets[k]
            enc.targets.append(None if y is None else y[idx])
        counts.append(n_val)
    if not any(counts):
        return data, None, counts
    return train, val, counts


def lm_target_count(seq: Sequence[int], after: set[int], vocab: int) -> int:
    """How many tokens of ``seq`` are LM targets: base tokens after one of ``after``."""
    seen, n = False, 0
    for j, t in enumerate(seq):
        if j and seen and t < vocab:
            n += 1
        seen = seen or t in after
    return n
