"""Experiment tracking through accelerate's tracker interface: a stage's training losses,
learning rates, validation losses and evaluation metrics as TensorBoard scalars, so runs are
compared with the tools users already have (``tensorboard --logdir runs/qed/tensorboard``).

Only the main process of a multi-process launch writes. ``track="none"`` writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

from tagllm.errors import ConfigError, MissingPackageError
from tagllm.records import EvalResult, JSONObject

Track = Literal["tensorboard", "none"]
TRACKERS: tuple[str, ...] = ("tensorboard", "none")


def check_tracker(track: str) -> None:
    """Fail before any model loads when ``track`` cannot work here."""
    if track not in TRACKERS:
        from tagllm.errors import ConfigError

        raise ConfigError(f"track: {track!r} is not one of {list(TRACKERS)}")
    if track == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise MissingPackageError("tracking to TensorBoard needs the tensorboard package: "
                                      "pip install tensorboard (or track with 'none')") from None


def scalar_name(*parts: str) -> str:
    """A TensorBoard scalar tag from free-text parts (row and method names)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.+=-]+", "_", p).strip("_") for p in parts)


class Tracker:
    """One stage's run: ``log(values, step)`` of named scalars, ``close()`` at the end."""

    def __init__(self, track: str, directory: str | Path, name: str,
                 config: JSONObject | None = None) -> None:
        from tagllm.distributed import world

        self._t = None
        if track == "none" or not world().is_main:
            return
        check_tracker(track)
        from accelerate.tracking import TensorBoardTracker

        root = Path(directory).resolve()
        if (root / name).resolve().parent != root:
            raise ConfigError(f"tracking: the run name {name!r} is not one folder name "
                              f"inside {directory}")
        self._t = TensorBoardTracker(name, str(directory))
        self._t.start()
        self.directory = Path(directory) / name
        if config:
            self._t.store_init_configuration(_hparams(config))

    @property
    def active(self) -> bool:
        return self._t is not None

    def log(self, values: dict[str, float], step: int) -> None:
        if self._t is not None:
            self._t.log({k: float(v) for k, v in values.items()
                         if v is not None and v == v}, step=step)

    def close(self) -> None:
        if self._t is not None:
            self._t.finish()
            self._t = None


def _hparams(config: Any) -> dict[str, bool | int | float | str]:
    """A config as TensorBoard hyperparameters: scalars kept, anything else as text."""
    d = asdict(config) if is_dataclass(config) else dict(config)
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in d.items()}


def log_evaluations(tracker: Tracker, rows: list[EvalResult], step: int) -> None:
    """Every evaluation's metrics (the tags' and each other method's) at ``step``."""
    for row in rows:
        methods = {"tags": row.metrics, **{n: s.metrics for n, s in row.methods.items()}}
        for method, metrics in methods.items():
            tracker.log({scalar_name("eval", row.name, method, k): v
                         for k, v in metrics.items() if isinstance(v, (int, float))}, step)
