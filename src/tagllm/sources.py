"""Named data sources: a file path, or a built-in data set shipped by a PyPI package.

``moses:train`` / ``moses:test`` / ``moses:test_scaffolds``: MOSES molecules (``molsets``)
with columns ``smiles`` and, when asked for, ``qed`` (computed with RDKit and cached).
``proteins:train`` / ``proteins:test``: pyhmmer's real protein sequences (columns ``id``,
``sequence``), split 90/10 by a fixed permutation with no sequence in both.
Anything else is a path to a CSV/TSV/.smi or FASTA (.fa/.fasta/.faa) file, validated row
by row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tagllm.data import (
    DataError,
    Table,
    check_number,
    check_text,
    iter_table,
    read_table,
    validate_rows,
)
from tagllm.data.smiles import canonical_smiles, check_smiles, moses_table, shuffled

BUILTIN_PREFIXES = ("moses:", "proteins:")
FASTA_SUFFIXES = (".fa", ".fasta", ".faa")

#: Columns whose values are SMILES and are checked with RDKit when read from a file.
SMILES_COLUMNS = {"smiles", "drug", "drug1", "drug2"}
#: Columns whose values are protein sequences, checked letter by letter.
PROTEIN_COLUMNS = {"sequence", "protein", "target"}


def _proteins(split: str) -> Table:
    from tagllm.data.proteins import pyhmmer_table

    if split not in ("train", "test", "all"):
        raise ValueError(f"proteins:{split}: unknown split; use proteins:train, proteins:test "
                         "or proteins:all")
    table = pyhmmer_table(None, 0)
    first: dict[str, int] = {}  # identical sequences collapse to one row
    for i, s in enumerate(table["sequence"]):
        first.setdefault(s, i)
    keep = sorted(first.values())
    table = table.select(keep)
    if split == "all":
        return table
    order = shuffled(len(table), 0)  # fixed split, independent of the sample seed
    n_test = len(table) // 10
    part = order[:n_test] if split == "test" else order[n_test:]
    return table.select(sorted(part.tolist()))


def load_source(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    label: str | None = None,
    text_columns: Iterable[str] = (),
    skip_invalid: bool = False,
    exclude_smiles: Iterable[str] = (),
    exclude_sequences: Iterable[str] = (),
    progress: bool = True,
) -> tuple[Table, list[str]]:
    """Load ``spec`` as a validated :class:`Table` and the list of skipped-row messages.

    ``n`` takes a seeded random sample; ``label`` is a numeric column that must be finite.
    ``exclude_smiles`` (compared canonically) and ``exclude_sequences`` name rows that must
    not appear (e.g. the test set when sampling training data); they are removed before
    sampling.
    """
    if spec.startswith("moses:"):
        split = spec.split(":", 1)[1]
        if label not in (None, "qed"):
            raise ValueError(f"{spec} has no label {label!r}; it provides 'qed'")
        table = moses_table(split, n, seed, labels=label == "qed", exclude=exclude_smiles,
                            progress=progress)
        return table, []
    if spec.startswith("proteins:"):
        if label is not None:
            raise ValueError(f"{spec} has no labels (columns: id, sequence)")
        table, problems = _proteins(spec.split(":", 1)[1]), []
    elif _is_fasta(spec):
        from tagllm.data.proteins import check_protein, read_fasta

        if label is not None:
            raise ValueError(f"{spec}: a FASTA file has no label column")
        table, problems = validate_rows(read_fasta(spec), {"sequence": check_protein},
                                        skip_invalid=skip_invalid)
    else:
        table = read_table(spec, [c for c in [*text_columns, label] if c])
        table, problems = _validate(table, label, text_columns, skip_invalid)
    table = _exclude(table, set(exclude_sequences), set(exclude_smiles))
    if n is not None and n < len(table):
        table = table.select(sorted(shuffled(len(table), seed)[:n].tolist()))
    return table, problems


def _validate(table: Table, label: str | None, text_columns: Iterable[str],
              skip_invalid: bool) -> tuple[Table, list[str]]:
    """Check every row of a file's table: SMILES and protein columns by name, the label as
    a finite number, text columns non-empty."""
    from tagllm.data.proteins import check_protein

    checks = {c: check_text for c in text_columns}
    checks.update({c: check_smiles for c in table.columns if c.lower() in SMILES_COLUMNS})
    checks.update({c: check_protein for c in table.columns if c.lower() in PROTEIN_COLUMNS})
    if label:
        checks[label] = check_number
    return validate_rows(table, checks, skip_invalid=skip_invalid)


def stream_source(spec: str, chunk_rows: int, skip_invalid: bool = False,
                  progress: bool = True) -> Iterator[tuple[Table, list[str]]]:
    """Validated chunks of ``spec`` with their skipped-row messages: a CSV/TSV/.smi file is
    read ``chunk_rows`` rows at a time (constant memory however long the file); built-in
    sources and FASTA files come as one chunk."""
    if spec.startswith(BUILTIN_PREFIXES) or _is_fasta(spec):
        yield load_source(spec, skip_invalid=skip_invalid, progress=progress)
        return
    for chunk in iter_table(spec, chunk_rows=chunk_rows):
        yield _validate(chunk, None, (), skip_invalid)


def _is_fasta(spec: str) -> bool:
    name = spec.lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def _exclude(table: Table, sequences: set[str], smiles: set[str]) -> Table:
    drop: set[int] = set()
    canon = {canonical_smiles(s) for s in smiles}
    for col, values in table.columns.items():
        if sequences and col.lower() in PROTEIN_COLUMNS:
            drop |= {i for i, v in enumerate(values) if v in sequences}
        if canon and col.lower() in SMILES_COLUMNS:
            drop |= {i for i, v in enumerate(values) if canonical_smiles(v) in canon}
    if not drop:
        return table
    if len(drop) == len(table):
        raise DataError(f"{table.source}: every row is excluded (all appear in the test data)")
    return table.select([i for i in range(len(table)) if i not in drop])
