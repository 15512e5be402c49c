"""Shared fixtures: tiny models from tests/tiny.py, isolated caches."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def _test_home(tmp_path_factory) -> Path:
    """One $TAGLLM_HOME for the test run (its own store, data and prefix caches), whose
    models/ is the user's: the embedded models are converted once, not once per run."""
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    user = Path(os.environ.get("TAGLLM_HOME", Path.home() / ".cache" / "tagllm")) / "models"
    user.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(user, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def _isolated_home(_test_home, monkeypatch):
    """Every test (slow or not) writes only into the run's own home: the user's store,
    caches and fingerprints are never touched."""
    monkeypatch.setenv("TAGLLM_HOME", str(_test_home))
