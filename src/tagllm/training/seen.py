"""The head features training has already computed, for ``refit_rows: seen``.

A re-fit of a head in closed form (``refit_every``) needs the current tags' features of many
rows. A fresh pass over the warm-start rows costs as much as many training steps; the
training steps compute the features of their own rows anyway. A :class:`SeenWindow` keeps the
last N of them (N = the warm-start rows), starting from the warm start's own features, so a
re-fit costs one ridge solve. The price: a feature vector can be up to N / batch_size steps
old, computed with the tags of that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SeenWindow:
    """A ring of the last ``N`` feature vectors of one part and the rows they belong to."""

    features: torch.Tensor  # (N, F) float32 on the CPU
    rows: torch.Tensor  # (N,) int64: the part's row of each feature vector
    pos: int = 0  # where the next vector goes: the oldest one

    @classmethod
    def start(cls, features: torch.Tensor, rows: Sequence[int]) -> SeenWindow:
        """A full window of the warm start's features of ``rows``."""
        if len(features) != len(rows) or not len(rows):
            raise ValueError(f"{len(features)} feature vectors for {len(rows)} rows")
        return cls(features.detach().float().cpu().clone(),
                   torch.as_tensor(list(rows), dtype=torch.int64))

    def add(self, features: torch.Tensor, rows: Sequence[int]) -> None:
        """Overwrite the oldest vectors with ``features`` (n, F) of ``rows``, in order."""
        if len(features) != len(rows):
            raise ValueError(f"{len(features)} feature vectors for {len(rows)} rows")
        cap = len(self.rows)
        features, rows = features[-cap:], list(rows)[-cap:]  # more than fit: the newest
        where = (self.pos + torch.arange(len(rows))) % cap
        self.features[where] = features.detach().float().cpu()
        self.rows[where] = torch.as_tensor(rows, dtype=torch.int64)
        self.pos = (self.pos + len(rows)) % cap

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The window as checkpoint tensors named ``prefix.*`` (the position included)."""
        return {f"{prefix}.features": self.features, f"{prefix}.rows": self.rows,
                f"{prefix}.pos": torch.tensor([self.pos], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> SeenWindow | None:
        """The window a checkpoint holds under ``prefix``, or None if it holds none."""
        if f"{prefix}.features" not in tensors:
            return None
        feats, rows = tensors[f"{prefix}.features"], tensors[f"{prefix}.rows"]
        pos = int(tensors[f"{prefix}.pos"][0])
        if feats.ndim != 2 or rows.shape != (len(feats),) or not 0 <= pos < max(len(rows), 1):
            raise ValueError(f"{prefix}: a window of {tuple(feats.shape)} features, "
                             f"{tuple(rows.shape)} rows and position {pos} is inconsistent")
        return cls(feats.float(), rows.long(), pos)
