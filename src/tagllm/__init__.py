"""tagllm: learned input tags that repurpose a frozen causal LM (Tag-LLM, arXiv 2402.05140).

The public names below are imported on first use (PEP 562), so ``import tagllm.errors`` or
``tagllm --help`` does not pay for torch and transformers, and this file imports nothing of
tagllm but the version.
"""

from __future__ import annotations

import importlib
from typing import Any

from tagllm._version import __version__

_EXPORTS = {"HeadConfig": "tagllm.config", "TagConfig": "tagllm.config",
            "TrainConfig": "tagllm.config", "TaggedModel": "tagllm.model",
            "TagllmError": "tagllm.errors"}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tagllm' has no attribute {name!r}")
