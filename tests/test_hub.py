"""Tags on the Hugging Face Hub, offline: what a push uploads (checked with
huggingface_hub's own card parsers), loading by repo id from a snapshot laid out in the Hub
cache's documented structure (resolved by huggingface_hub itself), and refusal of a tampered
file. The network calls of a push go to a recorder standing in for the Hub (none can be
reached here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, metadata_load

from tagllm import HeadConfig, TagConfig, TaggedModel
from tagllm.cli import main
from tagllm.errors import TagFileError
from tagllm.protocol.standalone import tag_dirs
from tagllm.serialization import TENSORS

from tiny import save_tiny

REV = "0123456789abcdef0123456789abcdef01234567"


class RecordingHub:
    """Stands in for ``HfApi``: records the calls and keeps what would be uploaded."""

    calls: list[tuple] = []
    remote: Path

    def __init__(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.remote)
        return f"https://huggingface.co/{repo_id}/commit/{REV}"


@pytest.fixture
def tags(tmp_path):
    """A tiny model folder and its <S> + <Q> tags as a recipe exports them (out/tags)."""
    save_tiny(tmp_path / "tiny")
    m = TaggedModel.from_pretrained(str(tmp_path / "tiny"))
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_()
    prov = {"recipe": "r", "stage": {"name": "q"}, "data": [{"source": "mols.csv", "rows": 8}],
            "eval": [{"name": "test.csv", "rows": 4, "metrics": {"mse": 0.5, "pearson": 0.1},
                      "baselines": {"ablation: <Q> untrained": {"mse": 0.6}}}]}
    m.save_tag("<S>", tmp_path / "out" / "S", provenance={"stage": {"name": "s"}})
    m.save_tag("<Q>", tmp_path / "out" / "Q", trained_with=["<S>"], provenance=prov)
    return m, tmp_path


def _in_hub_cache(cache: Path, repo: str, files: Path) -> Path:
    """``files`` as the snapshot REV of ``repo`` in the Hub cache layout
    (models--ORG--NAME/refs/main, snapshots/REV/...)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REV)
    shutil.copytree(files, root / "snapshots" / REV)
    return root / "snapshots" / REV


def test_push_uploads_the_files_unchanged_with_a_model_card(tags, tmp_path, monkeypatch):
    m, d = tags
    RecordingHub.calls, RecordingHub.remote = [], tmp_path / "remote"
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    main(["push", str(d / "out"), "alice/tiny-tags", "--private"])
    kinds = [c[0] for c in RecordingHub.calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert RecordingHub.calls[1][2]["private"] is True and RecordingHub.calls[1][2]["exist_ok"]
    got = sorted(str(p.relative_to(RecordingHub.remote))
                 for p in RecordingHub.remote.rglob("*") if p.is_file())
    assert got == ["Q/tag.json", "Q/tag.safetensors", "README.md", "S/tag.json",
                   "S/tag.safetensors"]
    for f in got[:2] + got[3:]:
        assert (RecordingHub.remote / f).read_bytes() == (d / "out" / f).read_bytes()
    card = ModelCard.load(RecordingHub.remote / "README.md")
    meta = metadata_load(RecordingHub.remote / "README.md")
    assert card.data.library_name == meta["library_name"] == "tagllm"
    assert card.data.base_model == m.model_name
    assert {"tagllm", "function-tag", "domain-tag", "regression-head"} <= set(meta["tags"])
    assert meta["metrics"] == ["mse", "pearson"]
    assert "## `<Q>`" in card.text and "&lt;Q&gt; untrained: mse 0.6" in card.text
    assert 'tags=["alice/tiny-tags"]' in card.text


def test_push_refuses_a_bad_repo_id_and_a_corrupt_tag_before_creating_anything(
        tags, tmp_path, monkeypatch):
    _, d = tags
    RecordingHub.calls, RecordingHub.remote = [], tmp_path / "remote"
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    from tagllm.hub import push

    with pytest.raises(TagFileError, match="not a Hub repository id"):
        push(d / "out", "no-slash")
    (d / "out" / "Q" / TENSORS).write_bytes(b"x")
    with pytest.raises(TagFileError, match="checksum"):
        push(d / "out", "alice/x")
    assert [c[0] for c in RecordingHub.calls if c[0] != "init"] == []  # nothing created


def test_load_by_repo_id_offline_from_the_hub_cache_and_refuse_a_tampered_file(
        tags, tmp_path, monkeypatch):
    m, d = tags
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from tagllm.hub import stage_for_hub

    snap = _in_hub_cache(cache, "alice/tiny-tags",
                         stage_for_hub(d / "out", "alice/tiny-tags", tmp_path / "staged"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # no network: the cache answers
    texts = ["<S> CCO <Q>", "<S> c1ccccc1 <Q>"]
    want = m.predict(texts)
    for spec in ("alice/tiny-tags", f"alice/tiny-tags@{REV}"):
        m2 = TaggedModel.from_pretrained(str(d / "tiny"), tags=[spec])
        assert sorted(m2.bank.names) == ["<Q>", "<S>"]
        np.testing.assert_array_equal(m2.predict(texts), want)
    assert [p.name for p in tag_dirs("alice/tiny-tags")] == ["Q", "S"]  # --tags ORG/NAME

    with pytest.raises(TagFileError, match=r"alice/nothing.*could not be fetched"):
        TaggedModel.from_pretrained(str(d / "tiny"), tags=["alice/nothing"])
    data = bytearray((snap / "Q" / TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (snap / "Q" / TENSORS).write_bytes(bytes(data))
    with pytest.raises(TagFileError, match=r"Q/tag\.safetensors: checksum .* does not match"):
        TaggedModel.from_pretrained(str(d / "tiny"), tags=["alice/tiny-tags"])
