"""Predictions and features for a file: read, check, compute and write it chunk by chunk.

Memory stays flat however long the input. Under ``torchrun`` / ``accelerate launch`` the
chunks are shared among the processes; each finished chunk is kept as a part, so a rerun
after a crash resumes, and the output (CSV or Parquet) appears atomically, in input order,
when every row is done (:mod:`tagllm.shards`). :class:`Screen` is what is computed for a
chunk, the same in every engine (these processes, or Ray actors: :mod:`tagllm.scale`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tagllm.data import LengthLimit, Table, check_output
from tagllm.distributed import World, world
from tagllm.errors import ConfigError, DataError
from tagllm.model import FEATURE_POOLS, TaggedModel
from tagllm.progress import bar
from tagllm.records import JSONObject
from tagllm.shards import Parts, RowFormat, Rows, input_identity, row_format
from tagllm.sources import check_chunk, stream_source

#: rows per chunk: the unit that is checked, computed, written as one part and resumed
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class Screen:
    """What is computed for each row of a file: a function tag's predictions (``predict``)
    or the features at a tag (``embed``, at ``layer`` with ``pool``), for ``template``
    filled from the row. ``tag``, ``layer`` and ``pool`` left None are taken from the tags
    (:meth:`resolved`)."""

    task: Literal["predict", "embed"]
    template: str
    tag: str | None = None
    layer: int | None = None
    pool: str | None = None
    batch_size: int = 32
    max_length: int = 512
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        if self.task not in ("predict", "embed"):
            raise ConfigError(f"task {self.task!r} is not 'predict' or 'embed'")
        if self.task == "predict" and (self.layer is not None or self.pool is not None):
            raise ConfigError("layer and pool are for embed (predict reads what the head reads)")
        if self.pool is not None and self.pool not in FEATURE_POOLS:
            raise ConfigError(f"pool {self.pool!r} is not one of {', '.join(FEATURE_POOLS)}")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    def resolved(self, model: TaggedModel) -> Screen:
        """The tag (the template's function tag with a head for predict, its last tag for
        embed), layer and pool made explicit for ``model``'s tags, checked."""
        heads = self.task == "predict"
        tag = self.tag or _template_tag(model, self.template, heads)
        if heads:
            head = model.head(tag)
            if head is None or not head.has_parameters:
                raise ConfigError(f"tag {tag} has no regression/classification head")
            return dataclasses.replace(self, tag=tag)
        layer, pool = model.embedding_readout(tag, self.layer, self.pool)
        return dataclasses.replace(self, tag=tag, layer=layer, pool=pool)

    def limit(self, model: TaggedModel) -> LengthLimit:
        """The rendered-length check of a row, before its molecules and sequences."""
        return dataclasses.replace(model.tagtok.length_limit(
            self.template, self.max_length, skip=self.skip_invalid,
            hint="raise --max_length, or --skip_invalid to drop such rows"), partial=True)

    def rows(self, model: TaggedModel, table: Table, checked: bool = False
             ) -> tuple[Rows, list[str]]:
        """A chunk's rows (checked here unless ``checked``) with their computed columns,
        and the skipped rows' messages. ``self`` must be :meth:`resolved`."""
        skipped: list[str] = []
        if not checked:
            table, skipped = check_chunk(table, self.skip_invalid, self.limit(model))
        if not len(table):
            return Rows(table, {}), skipped
        texts = table.render(self.template)
        if self.task == "predict":
            preds = model.predict(texts, tag=self.tag, batch_size=self.batch_size,
                                  max_length=self.max_length)  # (n, outputs)
            names = model.head(self.tag).output_names()
            return Rows(table, {name: preds[:, j] for j, name in enumerate(names)}), skipped
        feats = model.features(texts, self.tag, self.layer, self.pool, self.batch_size,
                               self.max_length)  # (n, F)
        return Rows(table, {"embedding": feats}), skipped

    def output_format(self, output: str | Path) -> RowFormat:
        """The output's format, checked: features are vectors, which only Parquet holds."""
        return row_format(output, vectors=self.task == "embed")

    def job(self, input: JSONObject, chunk_rows: int, model: TaggedModel) -> JSONObject:
        """What identifies this computation over the input (its :func:`input_identity`,
        taken where the input is read) with ``model`` for resuming its parts."""
        return {**dataclasses.asdict(self), "input": input, "chunk_rows": chunk_rows,
                "model": model.model_name, "embeddings": model.embedding_fingerprint,
                "dtype": model.weights_dtype, "tags": model.tags_digest()}


def predict_file(model: TaggedModel, input: str, output: str | Path, template: str,
                 tag: str | None = None, batch_size: int = 32, max_length: int = 512,
                 skip_invalid: bool = False, progress: bool = True,
                 on_skipped: Callable[[list[str]], None] = lambda rows: None,
                 chunk_rows: int = CHUNK_ROWS, log: Callable[[str], None] = lambda s: None,
                 processes: World | None = None) -> int | None:
    """Predict with a function tag's head for every row of ``input`` (CSV/TSV/.smi/Parquet/
    FASTA or a built-in source) and write ``output`` (.csv or .parquet): the input columns
    and the head's prediction columns (:meth:`~tagllm.heads.Head.output_names`). ``tag``
    defaults to the function tag of ``template``. Returns the number of rows written (None
    in a process other than the main one).

    Each row is checked in cost order: its rendered length against ``max_length`` first,
    then its molecules and sequences; a row that fails is an error naming the file and row,
    or with ``skip_invalid`` left out and reported through ``on_skipped``."""
    screen = Screen("predict", template, tag, batch_size=batch_size, max_length=max_length,
                    skip_invalid=skip_invalid)
    return screen_file(model, screen, input, output, chunk_rows, progress, on_skipped, log,
                       processes)


def embed_file(model: TaggedModel, input: str, output: str | Path, template: str,
               tag: str | None = None, layer: int | None = None, pool: str | None = None,
               batch_size: int = 32, max_length: int = 512, skip_invalid: bool = False,
               progress: bool = True,
               on_skipped: Callable[[list[str]], None] = lambda rows: None,
               chunk_rows: int = CHUNK_ROWS, log: Callable[[str], None] = lambda s: None,
               processes: World | None = None) -> int | None:
    """Write the frozen model's features at ``tag`` for every row of ``input`` to the
    Parquet file ``output``: the input columns and ``embedding``, a float32 vector per row
    (:meth:`~tagllm.model.TaggedModel.features`: ``layer`` and ``pool`` default to what
    the tag's head reads, else the last layer at the tag). ``tag`` defaults to the last tag
    of ``template``. Returns the number of rows written (None in a process other than the
    main one); rows are checked as by :func:`predict_file`."""
    screen = Screen("embed", template, tag, layer, pool, batch_size, max_length, skip_invalid)
    return screen_file(model, screen, input, output, chunk_rows, progress, on_skipped, log,
                       processes)


def screen_file(model: TaggedModel, screen: Screen, input: str, output: str | Path,
                chunk_rows: int = CHUNK_ROWS, progress: bool = True,
                on_skipped: Callable[[list[str]], None] = lambda rows: None,
                log: Callable[[str], None] = lambda s: None, processes: World | None = None
                ) -> int | None:
    """Compute ``screen`` for every row of ``input`` into ``output``, this process taking
    its share of the chunks (every chunk in a single process); the main process joins the
    parts. Returns the number of rows written (None in another process)."""
    w = processes or world()
    fmt = screen.output_format(output)
    check_output(input, output)
    if model.sharded:
        raise ConfigError("a base model sharded across processes (FSDP) cannot split a "
                          "file's rows among them; predict without --fsdp")
    screen = screen.resolved(model)
    job = screen.job(input_identity(input), chunk_rows, model)
    limit = screen.limit(model)

    def compute(chunks: Iterator[tuple[int, Table]]
                ) -> Iterator[tuple[int, Rows, list[str]]]:
        for index, table in chunks:
            yield index, *screen.rows(model, table, checked=True)

    return run_chunks(input, output, fmt, job, chunk_rows, compute, w, progress, on_skipped,
                      log, limit=limit, skip_invalid=screen.skip_invalid)


def run_chunks(input: str, output: str | Path, fmt: RowFormat, job: JSONObject,
               chunk_rows: int,
               compute: Callable[[Iterator[tuple[int, Table]]],
                                 Iterator[tuple[int, Rows, list[str]]]],
               w: World, progress: bool, on_skipped: Callable[[list[str]], None],
               log: Callable[[str], None], limit: LengthLimit | None = None,
               skip_invalid: bool = False) -> int | None:
    """The engine-independent part: open ``output``'s parts, feed this process's chunks not
    yet done to ``compute`` (checked here with ``limit``, or raw when ``limit`` is None:
    then ``compute`` checks them), write each result as a part, and join them (main
    process). ``compute`` may return chunks in any order."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    parts = Parts(output, job, w, fmt, log if w.is_main else lambda s: None)
    parts.open()
    pbar = bar(None, f"{job['task']}: rows", progress and w.is_main, unit="row")
    chunks, start = 0, time.perf_counter()

    def taken() -> Iterator[tuple[int, Table]]:
        nonlocal chunks
        for index, table, skipped in stream_source(input, chunk_rows, skip_invalid,
                                                   progress and w.is_main, limit, parts.takes,
                                                   check=limit is not None):
            chunks = index + 1
            on_skipped(skipped)
            if table is not None:
                yield index, table

    try:
        for index, rows, skipped in compute(taken()):
            on_skipped(skipped)
            parts.write(index, rows)
            pbar.update(len(rows.table))
    except BaseException as e:
        parts.fail(e)
        raise
    finally:
        pbar.close()
    n = parts.finish(chunks)
    if n == 0:
        raise DataError(f"{input}: no rows to {job['task']}")
    if n is not None:
        seconds = time.perf_counter() - start
        log(f"{n} rows in {seconds:.1f} s ({n / seconds:.1f} rows/s, the model loaded)")
    return n


def load_tagged(tags: Sequence[str | Path], model: str, dtype: str = "float32",
                device: str = "cpu") -> TaggedModel:
    """The base model and the tag folders ``tags``, verified as every load is; ``dtype``
    ``int8`` quantises the float32 decoder's linear layers (CPU only)."""
    import torch

    if dtype not in ("float32", "bfloat16", "int8"):
        raise ConfigError(f"dtype {dtype!r} is not float32, bfloat16 or int8")
    if dtype == "int8" and str(device) != "cpu":
        raise ConfigError("dtype int8 runs on the CPU only (torch's dynamic quantisation)")
    m = TaggedModel.from_pretrained(model, tags=[Path(t) for t in tags],
                                    dtype=torch.bfloat16 if dtype == "bfloat16"
                                    else torch.float32, device=device)
    if dtype == "int8":
        m.quantize_int8()
    return m


def _template_tag(model: TaggedModel, template: str, heads: bool) -> str:
    """The function tag (with a head) of ``template``, or (``heads`` False) its last tag."""
    found = model.tagtok.encode(template).tags
    if heads:
        found = [t for t in found if (h := model.head(t)) is not None and h.has_parameters]
    if not found:
        what = "function tag with a head" if heads else "tag"
        raise ConfigError(f"the template {template!r} names no {what}; name the tag with "
                          f"--tag (tags: {model.head_tags() if heads else model.bank.names})")
    return found[-1]
