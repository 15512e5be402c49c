"""Named data sources: a file path, or a built-in data set shipped by a PyPI package.

``moses:train`` / ``moses:test`` / ``moses:test_scaffolds``: MOSES molecules (``molsets``)
with columns ``smiles`` and, when asked for, ``qed`` (computed with RDKit and cached).
Anything else is a path to a CSV/TSV/.smi file, validated row by row.
"""

from __future__ import annotations

from collections.abc import Iterable

from tagllm.data import Table, check_number, check_text, read_table, validate_rows
from tagllm.data.smiles import check_smiles, moses_table, shuffled

BUILTIN_PREFIXES = ("moses:",)

#: Columns whose values are SMILES and are checked with RDKit when read from a file.
SMILES_COLUMNS = {"smiles", "drug", "drug1", "drug2"}


def load_source(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    label: str | None = None,
    text_columns: Iterable[str] = (),
    skip_invalid: bool = False,
    exclude_smiles: Iterable[str] = (),
    progress: bool = True,
) -> tuple[Table, list[str]]:
    """Load ``spec`` as a validated :class:`Table` and the list of skipped-row messages.

    ``n`` takes a seeded random sample; ``label`` is a numeric column that must be finite.
    """
    if spec.startswith("moses:"):
        split = spec.split(":", 1)[1]
        if label not in (None, "qed"):
            raise ValueError(f"{spec} has no label {label!r}; it provides 'qed'")
        table = moses_table(split, n, seed, labels=label == "qed", exclude=exclude_smiles,
                            progress=progress)
        return table, []
    table = read_table(spec, [c for c in [*text_columns, label] if c])
    checks = {c: check_text for c in text_columns}
    checks.update({c: check_smiles for c in table.columns if c.lower() in SMILES_COLUMNS})
    if label:
        checks[label] = check_number
    table, problems = validate_rows(table, checks, skip_invalid=skip_invalid)
    if n is not None and n < len(table):
        table = table.select(sorted(shuffled(len(table), seed)[:n].tolist()))
    return table, problems

