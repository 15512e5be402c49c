"""Tags on the Hugging Face Hub, offline: what a push uploads (checked with
huggingface_hub's own card parsers), loading by repo id from a snapshot laid out in the Hub
cache's documented structure (resolved by huggingface_hub itself), and refusal of a tampered
file. A push's network calls go to ``RecordingHub``, which stands in for the Hub (none can
be reached here) and lays the upload out as a cache snapshot."""

from __future__ import annotations

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard, metadata_load

from tagllm import TaggedModel
from tagllm.cli import main
from tagllm.errors import TagFileError
from tagllm.protocol.standalone import tag_dirs
from tagllm.serialization import TENSORS

from tiny import HUB_REV, RecordingHub, saved_tiny_tags


@pytest.fixture
def tags(tmp_path, monkeypatch):
    """A tiny model folder, its <S> + <Q> tags as a recipe exports them (tags/), and an
    empty Hub cache that the recorder uploads into."""
    prov = {"recipe": "r", "stage": {"name": "q"}, "data": [{"source": "mols.csv", "rows": 8}],
            "eval": [{"name": "test.csv", "rows": 4, "metrics": {"mse": 0.5, "pearson": 0.1},
                      "baselines": {"ablation: <Q> untrained": {"mse": 0.6}}}]}
    m = saved_tiny_tags(tmp_path, prov)
    RecordingHub.calls, RecordingHub.cache = [], tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return m, tmp_path


def test_push_uploads_the_files_unchanged_with_a_model_card(tags):
    m, d = tags
    main(["push", str(d / "tags"), "alice/tiny-tags", "--private"])
    assert [c[0] for c in RecordingHub.calls] == ["init", "create_repo", "upload_folder"]
    assert RecordingHub.calls[1][2]["private"] is True and RecordingHub.calls[1][2]["exist_ok"]
    remote = d / "hub" / "models--alice--tiny-tags" / "snapshots" / HUB_REV
    got = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    assert got == ["Q/tag.json", "Q/tag.safetensors", "README.md", "S/tag.json",
                   "S/tag.safetensors"]
    for f in got[:2] + got[3:]:
        assert (remote / f).read_bytes() == (d / "tags" / f).read_bytes()
    card = ModelCard.load(remote / "README.md")
    meta = metadata_load(remote / "README.md")
    assert card.data.library_name == meta["library_name"] == "tagllm"
    assert card.data.base_model == m.model_name
    assert {"tagllm", "function-tag", "domain-tag", "regression-head"} <= set(meta["tags"])
    assert meta["metrics"] == ["mse", "pearson"]
    assert "## `<Q>`" in card.text and "&lt;Q&gt; untrained: mse 0.6" in card.text
    assert 'tags=["alice/tiny-tags"]' in card.text


def test_push_refuses_a_bad_repo_id_and_a_corrupt_tag_before_creating_anything(tags):
    _, d = tags
    from tagllm.hub import push

    with pytest.raises(TagFileError, match="not a Hub repository id"):
        push(d / "tags", "no-slash")
    (d / "tags" / "Q" / TENSORS).write_bytes(b"x")
    with pytest.raises(TagFileError, match="checksum"):
        push(d / "tags", "alice/x")
    assert [c[0] for c in RecordingHub.calls if c[0] != "init"] == []  # nothing created


def test_load_by_repo_id_offline_from_the_hub_cache_and_refuse_a_tampered_file(tags):
    m, d = tags
    main(["push", str(d / "tags"), "alice/tiny-tags"])
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # no network: the cache answers
    texts = ["<S> CCO <Q>", "<S> c1ccccc1 <Q>"]
    want = m.predict(texts)
    for spec in ("alice/tiny-tags", f"alice/tiny-tags@{HUB_REV}"):
        m2 = TaggedModel.from_pretrained(str(d / "tiny"), tags=[spec])
        assert sorted(m2.bank.names) == ["<Q>", "<S>"]
        np.testing.assert_array_equal(m2.predict(texts), want)
    assert [p.name for p in tag_dirs("alice/tiny-tags")] == ["Q", "S"]  # --tags ORG/NAME

    with pytest.raises(TagFileError, match=r"alice/nothing.*could not be fetched"):
        TaggedModel.from_pretrained(str(d / "tiny"), tags=["alice/nothing"])
    snap = d / "hub" / "models--alice--tiny-tags" / "snapshots" / HUB_REV
    data = bytearray((snap / "Q" / TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (snap / "Q" / TENSORS).write_bytes(bytes(data))
    with pytest.raises(TagFileError, match=r"Q/tag\.safetensors: checksum .* does not match"):
        TaggedModel.from_pretrained(str(d / "tiny"), tags=["alice/tiny-tags"])
