"""Tag folders: round trip, verification, refusal of another base model, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig
from tagllm.serialization import META, TENSORS, TagFileError, read_tag

from tiny import tiny_tagged


def _trained(tmp_path):
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_()
        m.heads["Q"].target_mean.fill_(0.5)
    s = m.save_tag("<S>", tmp_path / "S", provenance={"stage": 1})
    q = m.save_tag("<Q>", tmp_path / "Q", trained_with=["<S>"], provenance={"stage": 2})
    return m, s, q


def test_round_trip_gives_same_predictions(tmp_path):
    m, s, q = _trained(tmp_path)
    texts = ["<S> CCO <Q>", "<S> c1ccccc1 <Q>"]
    want = m.predict(texts)
    m2 = tiny_tagged("llama")
    assert m2.load_tag(s) == "<S>" and m2.load_tag(q) == "<Q>"
    np.testing.assert_array_equal(m2.predict(texts), want)
    assert not any(p.requires_grad for p in m2.parameters())  # loaded frozen by default
    meta = json.loads((q / META).read_text())
    assert meta["base_model"]["name"] == "tiny-llama-0"
    assert meta["base_model"]["fingerprint"].startswith("sha256:")
    assert meta["trained_with"].keys() == {"<S>"}
    assert meta["provenance"] == {"stage": 2}
    assert sorted(p.name for p in q.iterdir()) == [META, TENSORS]


def test_other_base_model_is_refused_naming_both(tmp_path):
    _, s, _ = _trained(tmp_path)
    other = tiny_tagged("llama", seed=1)
    with pytest.raises(TagFileError) as e:
        other.load_tag(s)
    msg = str(e.value)
    assert "'tiny-llama-0'" in msg and "'tiny-llama-1'" in msg and str(s) in msg
    gpt2 = tiny_tagged("gpt2")
    with pytest.raises(TagFileError, match=r"trained for base model 'tiny-llama-0'.*'tiny-gpt2-0'"):
        gpt2.load_tag(s)


def test_corrupt_tensor_file_is_refused(tmp_path):
    _, s, _ = _trained(tmp_path)
    data = bytearray((s / TENSORS).read_bytes())
    data[-3] ^= 0xFF
    (s / TENSORS).write_bytes(bytes(data))
    with pytest.raises(TagFileError, match=r"tag.safetensors: checksum .* does not match"):
        read_tag(s)


def test_bad_json_missing_fields_and_shapes(tmp_path):
    _, s, _ = _trained(tmp_path)
    meta = json.loads((s / META).read_text())
    (s / META).write_text("{not json")
    with pytest.raises(TagFileError, match="not valid JSON"):
        read_tag(s)
    bad = dict(meta)
    del bad["base_model"]
    (s / META).write_text(json.dumps(bad))
    with pytest.raises(TagFileError, match="field 'base_model' missing"):
        read_tag(s)
    bad = dict(meta, num_tokens=7)
    (s / META).write_text(json.dumps(bad))
    with pytest.raises(TagFileError, match=r"shape \(3, 32\), expected \(7, 32\)"):
        read_tag(s)
    with pytest.raises(TagFileError, match="missing tag.json"):
        (s / META).unlink()
        read_tag(s)
    with pytest.raises(TagFileError, match="not a tag folder"):
        read_tag(tmp_path / "nope")


def test_loading_the_same_tag_twice_is_refused(tmp_path):
    m, s, _ = _trained(tmp_path)
    with pytest.raises(TagFileError, match="already loaded"):
        m.load_tag(s)


def test_failed_write_leaves_previous_folder_intact(tmp_path, monkeypatch):
    m, s, _ = _trained(tmp_path)
    before = {p.name: p.read_bytes() for p in s.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("tagllm.serialization.save_file", boom)
    with torch.no_grad():
        m.bank.parameter("<S>").add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        m.save_tag("<S>", s)
    assert {p.name: p.read_bytes() for p in s.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nan_tag_is_not_saved(tmp_path):
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<S>", num_tokens=2))
    with torch.no_grad():
        m.bank.parameter("<S>")[0, 0] = float("nan")
    with pytest.raises(TagFileError, match="NaN"):
        m.save_tag("<S>", tmp_path / "S")
    assert not (tmp_path / "S").exists()


def test_no_pickle_in_tag_files(tmp_path):
    _, s, q = _trained(tmp_path)
    for d in (s, q):
        raw = (d / TENSORS).read_bytes()
        assert raw[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header
