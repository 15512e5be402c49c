"""The cost account of a run: seconds, forward tokens and peak memory per phase.

Every pass through a :class:`~tagllm.model.TaggedModel`'s decoder body counts the tokens it
runs (its non-padding input positions; a suffix attending to a cached prefix counts only
the suffix) into the process-wide :data:`ACCOUNT`. Code marks phases with
:func:`phase`; phases nest (``stage qed/warm start``) and are exclusive: an inner phase's
seconds and tokens are not counted again in the outer one, so the rows add up to the run.
Each phase also records the process's peak resident memory (``ru_maxrss``) when it ends: that
peak never falls, so the first phase that reaches a run's peak is the one that set it.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (10^9 bytes)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1e9 if sys.platform == "darwin" else kb * 1024 / 1e9


class Account:
    """Seconds and forward tokens per phase path, exclusive of nested phases."""

    def __init__(self) -> None:
        self.tokens = 0  # every forward token counted so far
        self.phases: dict[str, dict[str, float]] = {}
        self._stack: list[list[Any]] = []  # [path, segment start time, segment start tokens]

    def count(self, n: int) -> None:
        self.tokens += int(n)

    def _close_segment(self) -> None:
        path, t0, k0 = self._stack[-1]
        row = self.phases.setdefault(path, {"seconds": 0.0, "tokens": 0})
        row["seconds"] += time.perf_counter() - t0
        row["tokens"] += self.tokens - k0
        row["peak_gb"] = max(row.get("peak_gb", 0.0), peak_rss_gb())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count what runs inside under ``outer/name``."""
        if self._stack:
            self._close_segment()
        path = f"{self._stack[-1][0]}/{name}" if self._stack else name
        self._stack.append([path, time.perf_counter(), self.tokens])
        try:
            yield
        finally:
            self._close_segment()
            self._stack.pop()
            if self._stack:
                self._stack[-1][1:] = [time.perf_counter(), self.tokens]

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Each phase path's seconds (rounded), tokens and peak memory (GB) so far."""
        return {k: {"seconds": round(v["seconds"], 2), "tokens": int(v["tokens"]),
                    "peak_gb": round(v["peak_gb"], 3)}
                for k, v in self.phases.items()}

    def since(self, before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """What each phase added after ``before`` (a :meth:`snapshot`); ``peak_gb`` is the
        process's peak when the phase last ended, not a difference."""
        out = {}
        for k, v in self.snapshot().items():
            b = before.get(k, {"seconds": 0.0, "tokens": 0})
            d = {"seconds": round(v["seconds"] - b["seconds"], 2),
                 "tokens": int(v["tokens"] - b["tokens"]), "peak_gb": v["peak_gb"]}
            if d["seconds"] > 0 or d["tokens"] > 0:
                out[k] = d
        return out


#: The process's account (the model hooks count into it).
ACCOUNT = Account()


def phase(name: str) -> contextlib.AbstractContextManager[None]:
    """A phase of :data:`ACCOUNT`."""
    return ACCOUNT.phase(name)


def count_forward(module: Any, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a decoder body: count the input positions it runs (those the
    attention mask marks real, among the last ``T`` columns for a suffix over a cache)."""
    x = kwargs.get("inputs_embeds")
    if x is None:
        x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        return
    B, T = x.shape[0], x.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
        ACCOUNT.count(int(mask[:, -T:].sum()))
    else:
        ACCOUNT.count(B * T)
