"""Predictions and features for a file: read, check, compute and write it chunk by chunk.

Memory stays flat however long the input. Under ``torchrun`` / ``accelerate launch`` the
chunks are shared among the processes; each finished chunk is kept as a part, so a rerun
after a crash resumes, and the output (CSV or Parquet) appears atomically, in input order,
when every row is done (:mod:`tagllm.shards`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tagllm.data import check_output
from tagllm.distributed import World, world
from tagllm.errors import ConfigError, DataError
from tagllm.model import TaggedModel
from tagllm.progress import bar
from tagllm.records import JSONObject
from tagllm.shards import Parts, Rows, input_identity, row_format
from tagllm.sources import stream_source

#: rows per chunk: the unit that is checked, computed, written as one part and resumed
CHUNK_ROWS = 1024


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
    fmt = row_format(output)
    check_output(input, output)
    tag = tag or _template_tag(model, template, heads=True)
    head = model.head(tag)
    if head is None or not head.has_parameters:
        raise ConfigError(f"tag {tag} has no regression/classification head")
    names = head.output_names()

    def compute(texts: list[str]) -> dict[str, np.ndarray]:
        preds = model.predict(texts, tag=tag, batch_size=batch_size, max_length=max_length)
        return {name: preds[:, j] for j, name in enumerate(names)}

    job: JSONObject = {"task": "predict", "tag": tag}
    return _run(model, input, output, template, fmt, job, compute, max_length, skip_invalid,
                progress, on_skipped, chunk_rows, log, processes or world())


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
    fmt = row_format(output, vectors=True)
    check_output(input, output)
    tag = tag or _template_tag(model, template, heads=False)
    layer, pool = model.embedding_readout(tag, layer, pool)

    def compute(texts: list[str]) -> dict[str, np.ndarray]:
        return {"embedding": model.features(texts, tag, layer, pool, batch_size, max_length)}

    job: JSONObject = {"task": "embed", "tag": tag, "layer": layer, "pool": pool}
    return _run(model, input, output, template, fmt, job, compute, max_length, skip_invalid,
                progress, on_skipped, chunk_rows, log, processes or world())


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


def _run(model: TaggedModel, input: str, output: str | Path, template: str, fmt, job: JSONObject,
         compute: Callable[[list[str]], dict[str, np.ndarray]], max_length: int,
         skip_invalid: bool, progress: bool, on_skipped: Callable[[list[str]], None],
         chunk_rows: int, log: Callable[[str], None], w: World) -> int | None:
    """Share ``input``'s chunks among the processes; write each one's rows and ``compute``d
    columns as a part; join the parts in order (main process)."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if model.sharded:
        raise ConfigError("a base model sharded across processes (FSDP) cannot split a "
                          "file's rows among them; predict without --fsdp")
    limit = dataclasses.replace(model.tagtok.length_limit(
        template, max_length, skip=skip_invalid,
        hint="raise --max_length, or --skip_invalid to drop such rows"), partial=True)
    job = {**job, "input": input_identity(input), "template": template,
           "chunk_rows": chunk_rows, "max_length": max_length, "skip_invalid": skip_invalid,
           "model": model.model_name, "dtype": str(next(model.base.parameters()).dtype),
           "tags": model.tags_digest()}
    parts = Parts(output, job, w, fmt, log if w.is_main else lambda s: None)
    parts.open()
    pbar = bar(None, f"{job['task']}: rows", progress and w.is_main, unit="row")
    chunks = 0
    try:
        for index, table, skipped in stream_source(input, chunk_rows, skip_invalid,
                                                   progress and w.is_main, limit, parts.takes):
            chunks = index + 1
            if table is None:
                continue
            on_skipped(skipped)
            parts.write(index, Rows(table, compute(table.render(template)) if len(table)
                                    else {}))
            pbar.update(len(table))
    except BaseException as e:
        parts.fail(e)
        raise
    finally:
        pbar.close()
    n = parts.finish(chunks)
    if n == 0:
        raise DataError(f"{input}: no rows to {job['task']}")
    return n

