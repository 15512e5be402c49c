"""Where tagllm keeps its files, and where installed data packages are. A leaf module.

``$TAGLLM_HOME`` (default ``~/.cache/tagllm``) holds the converted models (``models/``),
cached labels and fixtures (``data/``), the tag store (``store/``, or
``$TAGLLM_STORE``) and the disk tier of prefix caches while a run needs it
(``prefix-cache/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def tagllm_home() -> Path:
    """``$TAGLLM_HOME``, default ``~/.cache/tagllm``."""
    return Path(os.environ.get("TAGLLM_HOME", Path.home() / ".cache" / "tagllm"))


def store_dir() -> Path:
    """The default tag store: ``$TAGLLM_STORE``, else ``$TAGLLM_HOME/store``."""
    env = os.environ.get("TAGLLM_STORE")
    return Path(env) if env else tagllm_home() / "store"


def models_dir() -> Path:
    """Converted copies of the embedded models."""
    return tagllm_home() / "models"


def prefix_cache_dir() -> Path:
    """Where the disk tier of frozen-prefix caches puts its (temporary, private) folders."""
    return tagllm_home() / "prefix-cache"


def data_cache_dir() -> Path:
    """Cached labels (QED) and the synthetic fixtures."""
    return tagllm_home() / "data"
