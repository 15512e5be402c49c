"""The head features training has already computed, for ``refit_rows: seen``.

A re-fit of a head in closed form (``refit_every``) needs the current tags' features of many
rows. A fresh pass over the warm-start rows costs as much as many training steps; the
training steps compute the features of their own rows anyway. A :class:`SeenWindow` keeps
them for N distinct rows (N = the warm-start rows), starting from the warm start's own
features: a row seen again overwrites its own slot, a new row the slot written longest ago.
A re-fit then costs one closed-form fit. The price: a feature vector can be many steps old,
computed with the tags of its step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SeenWindow:
    """The latest feature vector of each of ``N`` distinct rows of one part."""

    features: torch.Tensor  # (N, F) float32 on the CPU
    rows: torch.Tensor  # (N,) int64: the part's row of each slot, all different
    stamps: torch.Tensor  # (N,) int64: the add that last wrote each slot (0: the warm start)
    clock: int = 0  # adds so far
    _slot: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slot = {r: i for i, r in enumerate(self.rows.tolist())}
        if len(self._slot) != len(self.rows):
            raise ValueError(f"a window of {len(self.rows)} slots holds only "
                             f"{len(self._slot)} distinct rows")

    @classmethod
    def start(cls, features: torch.Tensor, rows: Sequence[int]) -> SeenWindow:
        """A full window of the warm start's features of ``rows``."""
        if len(features) != len(rows) or not len(rows):
            raise ValueError(f"{len(features)} feature vectors for {len(rows)} rows")
        return cls(features.detach().float().cpu(), torch.as_tensor(list(rows)).long(),
                   torch.zeros(len(rows), dtype=torch.int64))

    def add(self, features: torch.Tensor, rows: Sequence[int]) -> None:
        """Put ``features`` (n, F) of ``rows`` in: over a row's own slot if it has one,
        else over the slot written longest ago."""
        if len(features) != len(rows):
            raise ValueError(f"{len(features)} feature vectors for {len(rows)} rows")
        self.clock += 1
        features = features.detach().float().cpu()
        for f, r in zip(features, (int(r) for r in rows), strict=True):
            slot = self._slot.get(r)
            if slot is None:
                slot = int(torch.argmin(self.stamps))  # the oldest; ties: the first
                del self._slot[int(self.rows[slot])]
                self._slot[r] = slot
                self.rows[slot] = r
            self.features[slot] = f
            self.stamps[slot] = self.clock

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The window as checkpoint tensors named ``prefix.*``."""
        return {f"{prefix}.features": self.features, f"{prefix}.rows": self.rows,
                f"{prefix}.stamps": self.stamps,
                f"{prefix}.clock": torch.tensor([self.clock], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> SeenWindow | None:
        """The window a checkpoint holds under ``prefix``, or None if it holds none."""
        if f"{prefix}.features" not in tensors:
            return None
        try:
            feats, rows = tensors[f"{prefix}.features"], tensors[f"{prefix}.rows"]
            stamps, clock = tensors[f"{prefix}.stamps"], int(tensors[f"{prefix}.clock"][0])
        except (KeyError, IndexError) as e:
            raise ValueError(f"{prefix}: an incomplete window ({e})") from None
        if feats.ndim != 2 or rows.shape != (len(feats),) or stamps.shape != rows.shape \
                or (len(stamps) and not 0 <= int(stamps.min()) <= int(stamps.max()) <= clock):
            raise ValueError(f"{prefix}: a window of {tuple(feats.shape)} features, "
                             f"{tuple(rows.shape)} rows and {tuple(stamps.shape)} stamps "
                             f"(clock {clock}) is inconsistent")
        return cls(feats.float(), rows.long(), stamps.long(), clock)
