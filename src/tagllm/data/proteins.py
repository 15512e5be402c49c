"""Protein sequences: a FASTA reader with amino-acid validation, and the offline default set.

The default proteins are the ~2,100 real sequences of one genome that ``pyhmmer`` ships as
test data (``pip install --no-deps pyhmmer``); the file is read, the package never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tagllm.data import DataError, Table, _open_text
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
    with _open_text(p) as f:
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
            elif not ids:
                raise DataError(f"{p} line {lineno}: sequence before the first '>' header")
            else:
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
    spec = importlib.util.find_spec("pyhmmer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default proteins need the pyhmmer package: "
                                "pip install --no-deps pyhmmer==0.12.3")
    return Path(list(spec.submodule_search_locations)[0]) / PYHMMER_FASTA


def pyhmmer_table(n: int | None, seed: int) -> Table:
    """A seeded sample of the pyhmmer proteins (columns ``id``, ``sequence``), validated."""
    from tagllm.data import validate_rows

    table, _ = validate_rows(read_fasta(pyhmmer_fasta()), {"sequence": check_protein})
    if n is not None and n < len(table):
        table = table.select(sorted(shuffled(len(table), seed)[:n].tolist()))
    return table
