"""Shared fixtures: tiny models from tests/tiny.py, isolated caches."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import ARCHS, save_tiny  # noqa: E402


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny Llama saved as a local Hugging Face folder (for CLI tests)."""
    d = tmp_path / "tiny-llama"
    save_tiny(d)
    return d


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path_factory, monkeypatch):
    """Fast tests cache into a per-run folder; slow tests keep the user's cache so the
    default model is converted once, not once per run."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("TAGLLM_HOME", str(tmp_path_factory.getbasetemp() / "home"))
