"""The methods that read the same frozen model without trained tags: a linear probe on its
hidden states, and the tags written as plain words."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from tagllm.evaluation.registry import Baseline, Rows


def untagged(texts: Sequence[str], tag_names: Sequence[str]) -> list[str]:
    """The inputs with every tag removed (and spaces collapsed): what the frozen model reads
    without tags."""
    return tags_as_words(texts, dict.fromkeys(tag_names, ""))


class LinearProbe(Baseline):
    """A linear model on the frozen model's own features of the untagged input: its last
    layer mean-pooled over the tokens and at the last token (no tags, nothing trained in
    the model): what the tags must add to."""

    key, uses_model = "probe", True

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        return None if self.task.features else "needs the frozen model's features"

    def name(self, train: Rows | None, test: Rows) -> str:
        return "linear probe (frozen hidden states, no tags)"

    def predict(self, test: Rows) -> np.ndarray:
        feats = self.task.features
        return self.linear(feats(untagged(self.train.texts, self.task.tag_names)),
                           feats(untagged(test.texts, self.task.tag_names)))


def tags_as_words(texts: Sequence[str], words: dict[str, str]) -> list[str]:
    """The inputs with every tag replaced by its plain words (spaces collapsed)."""
    if not words:
        return [" ".join(t.split()) for t in texts]
    pattern = re.compile("|".join(re.escape(t) for t in sorted(words, key=len, reverse=True)))
    return [" ".join(pattern.sub(lambda m: f" {words[m.group(0)]} ", t).split())
            for t in texts]


class TagsAsText(Baseline):
    """The tags written as plain words where the learned vectors stand (``<SMILES> CCO
    <QED>`` -> ``SMILES: CCO QED:``), read by the frozen model, with the tags' kind of head
    (linear, fitted in closed form) on the last layer at the last token: what the learned
    vectors must beat at equal head."""

    key, uses_model = "text_tags", True

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if not (self.task.features and self.task.tag_words):
            return "needs the frozen model's features and the tags' names"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        return "tags as plain text + linear head"

    def _last(self, texts: Sequence[str]) -> np.ndarray:
        feats = self.task.features(tags_as_words(texts, self.task.tag_words))  # (N, 2H)
        return feats[:, feats.shape[1] // 2:]  # (N, H): the last token's state

    def predict(self, test: Rows) -> np.ndarray:
        return self.linear(self._last(self.train.texts), self._last(test.texts))
