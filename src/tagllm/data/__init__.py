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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagllm.errors import DataError, MissingPackageError
from tagllm.fileio import atomic_write_file

__all__ = ["DataError", "Table", "check_number", "check_text", "iter_table", "parse_labels",
           "package_dir", "read_table", "validate_rows", "write_csv"]

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
                            f"{sorted(self.columns)}")
        return self.columns[name]

    def select(self, index: Sequence[int]) -> Table:
        return Table({k: [v[i] for i in index] for k, v in self.columns.items()},
                     self.source, [self.rows[i] for i in index])

    def where(self, i: int) -> str:
        return f"{self.source} row {self.rows[i]}"

    def render(self, template: str) -> list[str]:
        """Fill ``template`` (``{column}`` placeholders) for each row."""
        try:
            return [template.format_map({k: v[i] for k, v in self.columns.items()})
                    for i in range(len(self))]
        except KeyError as e:
            raise DataError(f"template {template!r} uses column {e} missing from "
                            f"{self.source}; columns: {sorted(self.columns)}") from None
        except (ValueError, IndexError, AttributeError, TypeError) as e:
            raise DataError(f"template {template!r} for {self.source}: {e} (placeholders are "
                            "{column}; write a literal brace as {{ or }})") from None


def package_dir(module: str, install: str, what: str) -> Path:
    """The folder of an installed data package, found without importing it (its code is
    never run); a missing package fails with the pip command that installs it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"{what} need the {module} package: pip install --no-deps "
                                  f"{install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


# a protein or a long text in one field: far beyond csv's default 131,072 characters
csv.field_size_limit(2**31 - 1)


def read_table(path: str | Path, columns: Sequence[str] = ()) -> Table:
    """Read a CSV/TSV (optionally .gz) with a header, or a ``.smi`` file (SMILES [name]).

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
    start, buf = 1, []
    try:
        with text_errors(p), _open_text(p) as f:
            if stem_suffix == ".smi":
                names = ["smiles", "name"]
                rows = ([parts[0] if parts else "", parts[1].strip() if len(parts) > 1 else ""]
                        for parts in (line.split(maxsplit=1) for line in f))
            else:
                reader = csv.DictReader(f, delimiter="\t" if stem_suffix in (".tsv", ".tab")
                                        else ",")
                if not reader.fieldnames:
                    raise DataError(f"{p}: empty file or no header row")
                names = list(reader.fieldnames)
                rows = ([row.get(n) or "" for n in names] for row in reader)
            for c in columns:
                if c not in names:
                    raise DataError(f"{p}: missing column {c!r}; columns: {sorted(names)}")
            for r in rows:
                buf.append(r)
                if chunk_rows and len(buf) == chunk_rows:
                    yield _table(names, buf, p, start)
                    start, buf = start + len(buf), []
            if buf or start == 1:
                yield _table(names, buf, p, start)
    except csv.Error as e:
        raise DataError(f"{p} row {start + len(buf) + 1}: not a valid CSV/TSV row ({e})") \
            from None


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


def validate_rows(
    table: Table,
    checks: dict[str, Callable[[str], str]],
    skip_invalid: bool = False,
) -> tuple[Table, list[str]]:
    """Apply per-column checks that return a normalised value or raise ValueError (the
    validators' contract: :func:`check_number`, ``check_smiles``, ``check_protein``).

    Default: the first bad row stops with a :class:`DataError` naming file, row and reason.
    With ``skip_invalid`` the bad rows are dropped and returned as messages (never silently).
    """
    keep: list[int] = []
    problems: list[str] = []
    new_cols = {k: list(v) for k, v in table.columns.items()}
    for i in range(len(table)):
        ok = True
        for col, check in checks.items():
            try:
                new_cols[col][i] = check(table[col][i])
            except ValueError as e:
                msg = f"{table.where(i)}: column {col!r}: {e}"
                if not skip_invalid:
                    raise DataError(msg + " (use --skip_invalid to drop such rows)") from None
                problems.append(msg)
                ok = False
                break
        if ok:
            keep.append(i)
    if problems:
        log.warning("%s: skipped %d invalid row(s)", table.source, len(problems))
    return Table(new_cols, table.source, table.rows).select(keep), problems


def check_text(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty or whitespace-only value")
    return value.strip()
