"""Row files written in parts: a long job over a file's rows, split across processes and
resumable.

The input is read in chunks of a fixed number of rows. Under ``torchrun`` or ``accelerate
launch`` chunk k belongs to process k mod N; a single process takes them all. Each finished
chunk is written (atomically) as its own part in ``OUTPUT.parts/``, so a crash, Ctrl-C or a
killed worker loses at most the chunks in flight, and a rerun of the same job skips the
parts already there. When every part exists, the main process joins them in input order into
``OUTPUT`` (CSV or Parquet, written atomically) and removes the parts. The parts folder
records its job (the input file with its size and time, the settings, the tags' digest), so
the parts of another job are never mixed in: a rerun with anything changed starts over.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tagllm.data import Table
from tagllm.distributed import World
from tagllm.errors import ConfigError, DataError
from tagllm.fileio import (
    atomic_write_dir,
    atomic_write_file,
    atomic_write_text,
    json_text,
    temp_name,
)
from tagllm.records import JSONObject

#: the format a parts folder's ``job.json`` declares
PARTS_FORMAT = "tagllm.parts/1"


@dataclass(frozen=True)
class Rows:
    """A chunk's input rows and the columns computed for them: ``values[name]`` is (n,), a
    number per row, or (n, k), a vector per row."""

    table: Table
    values: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        for name, v in self.values.items():
            if name in self.table.columns:
                raise DataError(f"{self.table.source} has a column named {name!r}, the name of "
                                "an output column; rename it")
            if len(v) != len(self.table) or v.ndim not in (1, 2):
                raise ValueError(f"column {name!r}: {v.shape} values for {len(self.table)} rows")


class RowFormat(Protocol):
    """How rows are written to one file (a part) and how parts are joined."""

    suffix: str

    def write(self, rows: Rows, path: Path) -> None: ...

    def join(self, parts: list[Path], path: Path) -> int: ...


class CsvRows:
    """CSV: the input columns as read, then each computed number (6 significant digits)."""

    suffix = ".csv"

    def write(self, rows: Rows, path: Path) -> None:
        if any(v.ndim != 1 for v in rows.values.values()):
            raise ConfigError(f"{path.name}: vectors are written to Parquet (.parquet), not CSV")
        inputs, outputs = list(rows.table.columns.values()), list(rows.values.values())
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*rows.table.columns, *rows.values])
            for j in range(len(rows.table)):
                w.writerow([*(c[j] for c in inputs), *(f"{v[j]:.6g}" for v in outputs)])

    def join(self, parts: list[Path], path: Path) -> int:
        n, header = 0, None
        with open(path, "w", newline="") as out:
            w = csv.writer(out)
            for part in parts:
                with open(part, newline="") as f:
                    r = csv.reader(f)
                    first = next(r, None)
                    if first is None:
                        raise DataError(f"{part}: an empty part (a write cut short, e.g. by "
                                        "a power loss); delete it and run again")
                    if header is None:
                        header = first
                        w.writerow(header)
                    elif first != header:
                        raise DataError(f"{part}: columns {first} differ from the first "
                                        f"part's {header}")
                    for row in r:
                        w.writerow(row)
                        n += 1
        return n


class ParquetRows:
    """Parquet: the input columns as text, each computed number as float32, each vector as
    a fixed-size list of float32."""

    suffix = ".parquet"

    def write(self, rows: Rows, path: Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(to_arrow(rows), path)

    def join(self, parts: list[Path], path: Path) -> int:
        import pyarrow.parquet as pq

        n, writer = 0, None
        try:
            for part in parts:
                f = pq.ParquetFile(part)
                if writer is None:
                    writer = pq.ParquetWriter(path, f.schema_arrow)
                elif not f.schema_arrow.equals(writer.schema):
                    raise DataError(f"{part}: columns {f.schema_arrow.names} differ from the "
                                    f"first part's {writer.schema.names}")
                for batch in f.iter_batches():
                    writer.write_batch(batch)
                    n += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        return n


def to_arrow(rows: Rows):
    """``rows`` as a pyarrow Table: the input columns as text, each computed number as
    float32, each vector as a fixed-size list of float32."""
    import pyarrow as pa

    arrays = {name: pa.array(col, pa.string()) for name, col in rows.table.columns.items()}
    for name, v in rows.values.items():
        v = np.ascontiguousarray(v, dtype=np.float32)
        arrays[name] = pa.array(v) if v.ndim == 1 else \
            pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    return pa.table(arrays)


FORMATS: dict[str, RowFormat] = {".csv": CsvRows(), ".parquet": ParquetRows()}


def row_format(output: str | Path, flag: str = "--output", vectors: bool = False
               ) -> RowFormat:
    """The format of ``output`` by its suffix; ``vectors``: one that holds vector columns."""
    suffix = Path(output).suffix.lower()
    if Path(output).is_dir():
        raise ConfigError(f"{flag} {output} is a folder; name the file to write")
    allowed = [".parquet"] if vectors else list(FORMATS)
    if suffix not in allowed:
        raise ConfigError(f"{flag} {output}: write a {' or '.join(allowed)} file"
                          + (" (vectors go to Parquet)" if vectors and suffix == ".csv" else ""))
    return FORMATS[suffix]


def input_identity(spec: str) -> JSONObject:
    """What identifies an input for resuming: each file or folder it reads (the file
    itself, or those a built-in source names, as in ``split:train:FILE``) by its resolved
    path, size and modification time, so that a file changed since leaves no part in use;
    a built-in source by its name."""
    paths = [spec] if Path(spec).exists() else [p for p in spec.split(":")[1:] if p]
    found: list[JSONObject] = []
    for p in map(Path, paths):
        if p.exists():
            st = p.stat()
            found.append({"path": str(p.resolve()), "bytes": st.st_size,
                          "mtime_ns": st.st_mtime_ns})
    return {"source": spec, "files": found}


def _remove(folder: Path) -> None:
    """Delete a parts folder: renamed to a hidden ``del`` name first (which ``tagllm gc``
    recognises), so that a kill during the deletion never leaves a half-deleted folder
    under the parts folder's name."""
    gone = folder.with_name(temp_name(folder.name, "del"))
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


class Parts:
    """``OUTPUT.parts/``: the finished chunks of one job over an input, by chunk index.

    Every process calls :meth:`open` (the main one checks or creates the folder first),
    :meth:`takes` for each chunk, :meth:`write` for the chunks it takes, and
    :meth:`finish`, where the main process waits for every part and joins them."""

    def __init__(self, output: str | Path, job: JSONObject, world: World,
                 fmt: RowFormat | None = None, log: Callable[[str], None] = lambda s: None):
        self.output = Path(output)
        self.format = fmt or row_format(output)
        self.dir = self.output.with_name(self.output.name + ".parts")
        self.job: JSONObject = {"format": PARTS_FORMAT, "job": job}
        self.world, self.log = world, log
        self.done: set[int] = set()

    # ------------------------------------------------------------------- layout
    def _part(self, index: int) -> Path:
        return self.dir / f"part-{index:08d}{self.format.suffix}"

    def _empty(self, index: int) -> Path:
        return self.dir / f"part-{index:08d}.empty"

    def _failed(self, rank: int) -> Path:
        return self.dir / f"failed-{rank}.txt"

    def _indices(self) -> Iterator[int]:
        for p in self.dir.glob("part-*"):
            stem = p.name.removeprefix("part-").split(".")[0]
            if stem.isdigit() and p.suffix in (self.format.suffix, ".empty"):
                yield int(stem)

    # ------------------------------------------------------------------- steps
    def open(self) -> int:
        """Check or create the folder (main process), then find the parts already written:
        returns how many."""
        if self.world.is_main:
            self._prepare()
        self.world.barrier()
        self.done = set(self._indices())
        return len(self.done)

    def _prepare(self) -> None:
        manifest = self.dir / "job.json"
        if self.dir.is_symlink():
            raise DataError(f"{self.dir} is a symbolic link; remove it or choose another "
                            "output")
        if self.dir.exists():
            try:
                found = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if not self.dir.is_dir() or not isinstance(found, dict) or \
                    found.get("format") != PARTS_FORMAT:
                raise DataError(f"{self.dir} exists and is not a tagllm parts folder; remove "
                                "it or choose another output")
            if found == self.job:
                for p in self.dir.glob("failed-*.txt"):
                    p.unlink(missing_ok=True)
                if n := sum(1 for _ in self._indices()):
                    self.log(f"resuming: {n} chunk(s) of an earlier run are done ({self.dir})")
                return
            self.log(f"{self.dir} holds the parts of another job (the input, a setting or a "
                     "tag changed since); starting over")
            _remove(self.dir)
        # the folder appears with its job.json, never without
        atomic_write_dir(self.dir, lambda tmp: (tmp / "job.json").write_text(
            json_text(self.job), encoding="utf-8"))

    def takes(self, index: int) -> bool:
        """Whether this process computes chunk ``index``: its own, and not done already."""
        return index % self.world.size == self.world.rank and index not in self.done

    def write(self, index: int, rows: Rows | None) -> None:
        """Write chunk ``index``'s rows (None or no rows: an empty chunk, every row skipped)."""
        if rows is None or not len(rows.table):
            atomic_write_text(self._empty(index), "")
        else:
            atomic_write_file(self._part(index), lambda tmp: self.format.write(rows, tmp))
        self.done.add(index)

    def fail(self, error: BaseException) -> None:
        """Record this process's failure, so that the main process stops waiting for it."""
        if self.world.distributed and self.dir.is_dir():
            atomic_write_text(self._failed(self.world.rank),
                              f"{type(error).__name__}: {error}")

    def finish(self, chunks: int, poll_s: float = 0.5) -> int | None:
        """Main process: wait until each of the ``chunks`` chunks has its part, join them in
        order into the output (atomically), remove the folder and return the row count
        (0: no rows, nothing written). Another process returns None at once."""
        if not self.world.is_main:
            return None
        missing = [i for i in range(chunks) if not self._written(i)]
        waited = 0.0
        while missing:
            for p in self.dir.glob("failed-*.txt"):
                rank = p.stem.removeprefix("failed-")
                raise DataError(f"process {rank} failed: "
                                f"{p.read_text(encoding='utf-8', errors='replace')}")
            if not (self.dir / "job.json").is_file():
                raise DataError(f"{self.dir} was removed while this run waited for its "
                                "parts (another run on the same output?)")
            time.sleep(poll_s)
            waited += poll_s
            if waited % 300 < poll_s:
                self.log(f"waiting for {len(missing)} chunk(s) of the other processes")
            missing = [i for i in missing if not self._written(i)]
        parts = [p for i in range(chunks) if (p := self._part(i)).exists()]
        if not parts:
            _remove(self.dir)
            return 0
        n = 0

        def join(tmp: Path) -> None:
            nonlocal n
            n = self.format.join(parts, tmp)

        atomic_write_file(self.output, join)
        _remove(self.dir)
        return n

    def _written(self, index: int) -> bool:
        return self._part(index).exists() or self._empty(index).exists()
