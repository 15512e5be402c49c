"""What the benchmark scripts share: the best-of-n timer and the machine description that
goes into every results file. Imported as ``from timing import ...`` (a script's own
folder is on ``sys.path`` when it runs)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def best(fn: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock timings of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> dict[str, object]:
    """The CPU, its core count, torch's threads and the versions, for a results file."""
    return {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"torch threads {torch.get_num_threads()}",
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}
