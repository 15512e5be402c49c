"""Predictions for a file: read, check, predict and write a CSV chunk by chunk.

Memory stays flat however long the input; the output appears atomically when every row is
done, so a failure never leaves a partial file.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path

from tagllm.data import check_output
from tagllm.errors import DataError
from tagllm.fileio import atomic_write_file
from tagllm.model import TaggedModel
from tagllm.progress import bar
from tagllm.sources import stream_source


def predict_file(model: TaggedModel, input: str, output: str | Path, template: str,
                 tag: str | None = None, batch_size: int = 32, max_length: int = 512,
                 skip_invalid: bool = False, progress: bool = True,
                 on_skipped: Callable[[list[str]], None] = lambda rows: None) -> int:
    """Predict with a function tag's head for every row of ``input`` (CSV/TSV/.smi/FASTA
    or a built-in source) and write ``output``: the input columns and the head's prediction
    columns (:meth:`~tagllm.heads.Head.output_names`). Returns the number of rows.

    Each row is checked in cost order: its rendered length against ``max_length`` first,
    then its molecules and sequences; a row that fails is an error naming the file and row,
    or with ``skip_invalid`` left out and reported through ``on_skipped``."""
    check_output(input, output)
    written = 0
    pbar = bar(None, "predicting", progress, unit="row")
    limit = dataclasses.replace(model.tagtok.length_limit(
        template, max_length, skip=skip_invalid,
        hint="raise --max_length, or --skip_invalid to drop such rows"), partial=True)

    def fill(tmp: Path) -> None:
        nonlocal written, tag
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            for table, skipped in stream_source(input, 32 * batch_size, skip_invalid, progress,
                                                limit):
                on_skipped(skipped)
                if not len(table):
                    continue
                texts = table.render(template)
                tag = tag or model.function_tag_of(texts[0])  # the first rows fix the tag
                preds = model.predict(texts, tag=tag, batch_size=batch_size,
                                      max_length=max_length)
                if not written:
                    w.writerow([*table.columns, *model.head(tag).output_names()])
                for j, row in enumerate(preds):
                    w.writerow([*(table.columns[c][j] for c in table.columns),
                                *(f"{x:.6g}" for x in row)])
                written += len(texts)
                pbar.update(len(texts))
        if not written:
            raise DataError(f"{input}: no rows to predict")

    try:
        atomic_write_file(output, fill)
    finally:
        pbar.close()
    return written
