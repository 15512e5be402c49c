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


def test_a_model_that_differs_only_past_its_embeddings_is_refused(tmp_path):
    """A fine-tune with frozen embeddings or a merged LoRA: same input embeddings, other
    layers. The fingerprint covers every weight, so its tags do not load there."""
    _, s, _ = _trained(tmp_path)
    tuned = tiny_tagged("llama")
    with torch.no_grad():
        tuned.base.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    assert tuned.embedding_fingerprint == tiny_tagged("llama").embedding_fingerprint
    assert tuned.fingerprint != tiny_tagged("llama").fingerprint
    with pytest.raises(TagFileError, match="retrain the tag for this model"):
        tuned.load_tag(s)


def test_fingerprint_agrees_across_dtypes_and_is_cached_by_the_weight_files(tmp_path):
    from tagllm import TaggedModel
    from tagllm.backbones import FINGERPRINT_SCHEME
    from tagllm.paths import tagllm_home

    from tiny import save_tiny

    folder = tmp_path / "tiny"
    save_tiny(folder)
    f32 = TaggedModel.from_pretrained(str(folder))
    bf16 = TaggedModel.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert f32.fingerprint == bf16.fingerprint == tiny_tagged("llama").fingerprint
    cache = tagllm_home() / "fingerprints.json"
    entry = json.loads(cache.read_text())[str(folder.resolve())]
    assert entry["scheme"] == FINGERPRINT_SCHEME and entry["fingerprint"] == f32.fingerprint
    entries = json.loads(cache.read_text())  # the cached value is what a load reports ...
    entries[str(folder.resolve())]["fingerprint"] = "sha256:" + "c" * 32
    cache.write_text(json.dumps(entries))
    assert TaggedModel.from_pretrained(str(folder)).fingerprint == "sha256:" + "c" * 32
    weights = next(folder.glob("*.safetensors"))  # ... until a weight file changes
    weights.touch()
    assert TaggedModel.from_pretrained(str(folder)).fingerprint == f32.fingerprint
    for bad in ({}, {"fingerprint": None}, {"fingerprint": "x" * 10_000}):  # a broken cache
        entries = json.loads(cache.read_text())  # entry is recomputed, never trusted or fatal
        entry = entries[str(folder.resolve())]
        entries[str(folder.resolve())] = {**{k: v for k, v in entry.items()
                                             if k != "fingerprint"}, **bad}
        cache.write_text(json.dumps(entries))
        assert TaggedModel.from_pretrained(str(folder)).fingerprint == f32.fingerprint
    cache.write_text("[1, 2")
    assert TaggedModel.from_pretrained(str(folder)).fingerprint == f32.fingerprint


def test_tag_files_of_the_embedding_only_fingerprint_load_with_a_warning(tmp_path, caplog):
    m, s, _ = _trained(tmp_path)
    meta = json.loads((s / META).read_text())
    meta["base_model"].pop("fingerprint_of")
    meta["base_model"]["fingerprint"] = m.embedding_fingerprint  # what older files hold
    (s / META).write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        assert tiny_tagged("llama").load_tag(s) == "<S>"
    assert "only the base model's input embeddings" in caplog.text
    with pytest.raises(TagFileError, match="retrain the tag"):
        tiny_tagged("llama", seed=1).load_tag(s)


def test_a_tag_beside_another_version_of_a_tag_it_was_trained_with_is_refused(tmp_path):
    """<Q> was trained beside one <S>: loading it with another <S> fails in either order;
    with its own <S>, or alone, it loads."""
    _, s, q = _trained(tmp_path)
    other = tiny_tagged("llama")
    other.add_tag(TagConfig("<S>", num_tokens=3, init="random"), seed=5)
    s2 = other.save_tag("<S>", tmp_path / "S2")
    for order in ((s2, q), (q, s2)):
        m = tiny_tagged("llama")
        m.load_tag(order[0])
        with pytest.raises(TagFileError, match=r"<Q> was trained with a <S> whose values"):
            m.load_tag(order[1])
    for order in ((s, q), (q, s)):
        m = tiny_tagged("llama")
        assert {m.load_tag(d) for d in order} == {"<S>", "<Q>"}
    assert tiny_tagged("llama").load_tag(q) == "<Q>"
