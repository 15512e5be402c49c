"""Progress bars (tqdm) that switch off cleanly when not wanted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def track(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
          unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar on stderr (disabled when ``enabled`` is False)."""
    return iter(tqdm(items, desc=desc, disable=not enabled, total=total, unit=unit,
                     dynamic_ncols=True, leave=False))


def bar(total: int | None, desc: str, enabled: bool = True, unit: str = "it") -> tqdm:
    """A manual progress bar (``total=None``: a counter without an end)."""
    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True,
                leave=False)
