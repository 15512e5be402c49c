"""The generation baselines: copying the source, and the frozen model prompted in plain text
without tags."""

from __future__ import annotations

from typing import ClassVar

from tagllm.errors import DataError
from tagllm.evaluation.registry import Baseline, Rows


class TextBaseline(Baseline):
    """A generation baseline: predicts texts, learns nothing, is named by ``title``."""

    needs = "reference"
    needs_train = False
    title: ClassVar[str] = ""

    def name(self, train: Rows | None, test: Rows) -> str:
        return self.title


class CopySource(TextBaseline):
    """The source text unchanged: what a translation must beat."""

    key, title = "copy", "copy the source"

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if self.task.source_column not in test.table.columns:
            return (f"the rows have no column {self.task.source_column!r} to copy; columns: "
                    f"{sorted(test.table.columns)}")
        return None

    def predict(self, test: Rows) -> list[str]:
        return list(test.table[self.task.source_column])


class PlainPrompt(TextBaseline):
    """The same frozen model prompted in plain text, without tags."""

    key, title = "prompt", "plain-text prompt (no tags)"

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        return None if self.task.prompt else "needs a plain-text prompt template"

    def predict(self, test: Rows) -> list[str]:
        if self.task.generate is None:
            raise DataError("the prompt baseline needs a model to generate with")
        return self.task.generate(test.table.render(self.task.prompt))
