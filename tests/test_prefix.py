"""Frozen-prefix training gives the gradients of a full-sequence pass."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.prefix import FrozenPrefix, supports_frozen_prefix
from tagllm.training import fit_tag

from tiny import tiny_tagged

TEXTS = ["<S> CCO <Q>", "<S> c1ccccc1CCN(C)C <Q>", "<S> O <Q>", "<S> CC(=O)Oc1ccccc1 <Q> x"]


def _model(arch: str, n_out: int = 2):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"), seed=1)
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, init="random",
                        head=HeadConfig("regression", num_outputs=n_out)), seed=2)
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_()
    m.set_trainable(["<Q>"])
    return m


def _grads(m):
    return [p.grad.detach().clone() for p in m.trainable_parameters()]


def test_prefix_gradients_equal_full_sequence(arch):
    m = _model(arch)
    if not supports_frozen_prefix(m):
        assert arch == "gemma3"  # sliding-window layers: the training loop falls back
        return
    y = torch.randn(len(TEXTS), 2)
    head = m.head("<Q>")
    full = m.encode(TEXTS)  # right-padded: rows have different lengths
    assert int(full.attention_mask.sum(1).min()) < full.input_ids.shape[1]
    head.loss(m.head_outputs(full, "<Q>"), y).backward()
    want = _grads(m)
    m.zero_grad(set_to_none=True)

    fp = FrozenPrefix(m, ["<Q>"])
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    for _ in range(2):  # first pass computes prefixes, second uses the cross-epoch store
        head.loss(head(fp.tag_features(ids, "<Q>")), y).backward()
        got = _grads(m)
        m.zero_grad(set_to_none=True)
        assert len(got) == len(want) == 3  # tag embedding, head weight, head bias
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert fp.misses == len(TEXTS) and fp.hits == len(TEXTS)


def test_prefix_budget_zero_keeps_nothing():
    m = _model("llama")
    fp = FrozenPrefix(m, ["<Q>"], budget_bytes=0)
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    with torch.no_grad():
        fp.tag_features(ids[:4], "<Q>")
        fp.tag_features(ids[:4], "<Q>")
    assert fp.hits == 0 and fp.misses == 8 and fp.used == 0


def _fit_predict(**cfg) -> np.ndarray:
    """Train <Q> (one output) for 5 steps on TEXTS with ``cfg``; its predictions."""
    m = _model("llama", n_out=1)
    fit_tag(m, "<Q>", TEXTS, np.array([0.1, 0.5, 0.9, 0.3]), progress=False,
            cfg=TrainConfig(steps=5, batch_size=2, lr=1e-2, warmup_steps=1, seed=0,
                            warm_start_examples=4, **cfg), log=lambda s: None)
    return m.predict(TEXTS, tag="<Q>")


def test_fit_with_and_without_frozen_prefix_agree():
    np.testing.assert_allclose(_fit_predict(frozen_prefix=True),
                               _fit_predict(frozen_prefix=False), atol=1e-4)


def test_sliding_window_models_fall_back_to_full_sequence_training():
    m = _model("gemma3", n_out=1)
    messages: list[str] = []
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, warm_start_examples=4)
    fit_tag(m, "<Q>", TEXTS, np.array([0.1, 0.5, 0.9, 0.3]), cfg=cfg, progress=False,
            log=messages.append)
    assert any("sliding-window attention" in s for s in messages)
    assert not any("frozen prefix:" in s for s in messages)
    assert supports_frozen_prefix(_model("qwen2"))  # sliding_window set, but not used


def test_a_cache_reused_across_training_calls_gives_the_same_tags():
    """A sweep shares one cache (keyed by prefix tokens): the second call computes no
    prefix and trains exactly as with a cache of its own."""
    y = np.array([0.1, 0.5, 0.9, 0.3])
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=1, seed=0,
                      warm_start_examples=4, validation=0.0, select="last")
    quiet = lambda s: None  # noqa: E731
    fresh = _model("llama", n_out=1)
    fresh.add_tag(TagConfig("<R>", kind="function", num_tokens=3, init="random",
                            head=HeadConfig("regression")), seed=3)
    other = [t.replace("<Q>", "<R>") for t in TEXTS]
    fit_tag(fresh, "<R>", other, y, cfg=cfg, progress=False, log=quiet)
    want = fresh.predict(other, tag="<R>")

    m = _model("llama", n_out=1)
    m.add_tag(TagConfig("<R>", kind="function", num_tokens=3, init="random",
                        head=HeadConfig("regression")), seed=3)
    shared = FrozenPrefix(m, ["<Q>"])
    fit_tag(m, "<Q>", TEXTS, y, cfg=cfg, progress=False, log=quiet, prefix=shared)
    misses = shared.misses
    assert misses == 4  # "<S> ... " of each text, computed once
    fit_tag(m, "<R>", other, y, cfg=cfg, progress=False, log=quiet, prefix=shared)
    assert shared.misses == misses  # the same prefixes: all from the store
    np.testing.assert_allclose(m.predict(other, tag="<R>"), want, atol=1e-5)


def test_the_cache_empties_when_a_frozen_tag_changes():
    m = _model("llama")
    fp = FrozenPrefix(m, ["<Q>"])
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    with torch.no_grad():
        before = fp.tag_features(ids, "<Q>")
        fp.retarget(["<Q>"])  # nothing changed: the store is kept
        assert len(fp.store) == 4
        m.bank.parameter("<S>").add_(1.0)  # e.g. <S> trained between two calls
        fp.retarget(["<Q>"])
        assert not fp.store and fp.used == 0
        after = fp.tag_features(ids, "<Q>")
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, m.tag_features(m.encode(TEXTS), "<Q>"),
                               atol=1e-5, rtol=1e-4)


def test_a_cache_of_another_model_is_refused():
    import pytest

    from tagllm.errors import ConfigError

    a, b = _model("llama", n_out=1), _model("llama", n_out=1)
    with pytest.raises(ConfigError, match="another model"):
        fit_tag(a, "<Q>", TEXTS, np.array([0.1, 0.5, 0.9, 0.3]), progress=False,
                log=lambda s: None, prefix=FrozenPrefix(b, ["<Q>"]),
                cfg=TrainConfig(steps=1, batch_size=2, warmup_steps=0))


def test_a_bfloat16_cache_halves_the_memory_and_keeps_the_gradients_within_tolerance():
    """The compact cache: prefix key/values stored in bfloat16 take half the bytes, and the
    tag's and head's gradients stay within 0.5% (relative, in norm) of the float32
    full-sequence pass (0.01-0.1% measured on the tiny Llama, Qwen2 and GPT-2); training
    with it ends near the float32 run."""
    m = _model("llama")
    y = torch.randn(len(TEXTS), 2)
    head = m.head("<Q>")
    head.loss(m.head_outputs(m.encode(TEXTS), "<Q>"), y).backward()
    want = _grads(m)
    m.zero_grad(set_to_none=True)
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    used = {}
    for dtype in (torch.float32, torch.bfloat16):
        fp = FrozenPrefix(m, ["<Q>"], dtype=dtype)
        for _ in range(2):  # computed, then from the store
            head.loss(head(fp.tag_features(ids, "<Q>")), y).backward()
            for g, w in zip(_grads(m), want, strict=True):
                err = ((g - w).norm() / w.norm()).item()
                assert err < (1e-5 if dtype == torch.float32 else 5e-3), (dtype, err)
            m.zero_grad(set_to_none=True)
        used[dtype] = fp.used
    assert used[torch.bfloat16] == used[torch.float32] / 2
    np.testing.assert_allclose(_fit_predict(prefix_cache_dtype="bfloat16"),
                               _fit_predict(prefix_cache_dtype="float32"), atol=2e-2)


def test_evaluation_through_the_cache_equals_full_passes_and_reuses_the_test_prefixes():
    """The head's test predictions through a frozen-prefix cache equal full-sequence
    predictions; a second evaluation of the same rows (the trained tag after its ablation)
    computes no prefix again, and the kept prefixes can then enter training's graph."""
    from tagllm.scoring import predictions

    m = _model("llama")
    want = predictions(m, TEXTS, "<Q>")
    fp = FrozenPrefix(m, ["<Q>"])
    got = predictions(m, TEXTS, "<Q>", batch_size=2, prefix=fp)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert fp.misses == len(TEXTS) and fp.hits == 0
    predictions(m, TEXTS, "<Q>", prefix=fp)
    assert fp.misses == len(TEXTS) and fp.hits == len(TEXTS)
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    m.head("<Q>").loss(m.head("<Q>")(fp.tag_features(ids, "<Q>")),
                       torch.zeros(len(TEXTS), 2)).backward()  # no inference tensors
    assert m.bank.parameter("<Q>").grad is not None


def test_the_disk_tier_holds_what_memory_does_not_and_goes_with_the_cache(tmp_path):
    """With no RAM budget the prefixes go to safetensors files within the disk budget and
    come back with the same gradients; beyond both budgets they are recomputed; the
    private folder is removed with the cache."""
    import gc

    m = _model("llama")
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    y = torch.randn(len(TEXTS), 2)
    head = m.head("<Q>")
    want = None
    from tagllm.fileio import temp_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    killed = tmp_path / (temp_name("tagllm-prefix").replace(str(os.getpid()), dead) + "-x1")
    killed.mkdir()  # what a SIGKILLed run left: the next cache's folder removes it
    (killed / "0.safetensors").write_bytes(b"prefix")
    fp = FrozenPrefix(m, ["<Q>"], budget_bytes=0, disk_bytes=1e9, disk_dir=tmp_path)
    for _ in range(2):  # computed and written, then read back
        head.loss(head(fp.tag_features(ids, "<Q>")), y).backward()
        got = _grads(m)
        m.zero_grad(set_to_none=True)
        want = want or got
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
    assert fp.used == 0 and fp.disk_used > 0 and fp.hits == fp.misses == len(TEXTS)
    files = list(tmp_path.glob(".tagllm-prefix.tmp-*/*.safetensors"))
    assert len(files) == len(TEXTS) and not killed.exists()
    small = FrozenPrefix(m, ["<Q>"], budget_bytes=0, disk_bytes=fp.disk_used / 2,
                         disk_dir=tmp_path)
    with torch.no_grad():
        small.tag_features(ids, "<Q>")
        small.tag_features(ids, "<Q>")
    assert 0 < len(small.on_disk) < len(TEXTS) and small.misses > len(TEXTS)
    del fp, small
    gc.collect()
    assert not list(tmp_path.iterdir())


# Every text holds every tag before its <Q> ends, so any non-empty set of trainable tags
# cuts each text before the <Q> state that the features read.
# (each starts with a plain token, so that every prefix is cached, none empty)
MIXED = ["C <S> CCO <U> CC <R> <Q>", "O <U> O <S> c1ccccc1 <R> N <Q> x",
         "N <R> C <S> CC <U> O <Q>", "CC <S> CCN <U> C <R> C <Q>"]
NAMES = ["<S>", "<U>", "<R>", "<Q>"]


def _mixed_model():
    m = tiny_tagged("llama")
    for i, name in enumerate(NAMES):
        head = HeadConfig("regression") if name in ("<R>", "<Q>") else None
        m.add_tag(TagConfig(name, kind="function" if head else "domain", num_tokens=2,
                            init="random", head=head), seed=i + 1)
    return m


def _check_calls(m, fp, calls) -> None:
    """Each call: retarget to its trainable tags, check the cached features (twice: computed,
    then from the store) against a full pass, then change the trainable tags' vectors as a
    training call would."""
    ids = [e.ids for e in m.tagtok.encode_batch(MIXED)]
    for trainable, seed in calls:
        fp.retarget(trainable)
        with torch.no_grad():
            want = m.tag_features(m.encode(MIXED), "<Q>")
            for _ in range(2):
                torch.testing.assert_close(fp.tag_features(ids, "<Q>"), want, atol=1e-5,
                                           rtol=1e-4)
            g = torch.Generator().manual_seed(seed)
            for t in trainable:
                p = m.bank.parameter(t)
                p.add_(torch.randn(p.shape, generator=g))


def test_a_tag_trained_jointly_in_between_never_leaves_old_prefixes():
    """<R> trained with <S> frozen, then <S> trained jointly with <U>, then <R> again (a
    sweep): the third call's prefixes, the same tokens as the first's, hold the new <S>."""
    m = _mixed_model()
    fp = FrozenPrefix(m, ["<R>"])
    _check_calls(m, fp, [(["<R>"], 1), (["<S>", "<U>"], 2), (["<R>"], 3)])
    assert fp.misses > 0 and fp.hits > 0


def test_a_prefix_twice_in_one_batch_is_computed_and_counted_once():
    m = _model("llama")
    fp = FrozenPrefix(m, ["<Q>"])
    ids = [e.ids for e in m.tagtok.encode_batch([TEXTS[0], TEXTS[0], TEXTS[1]])]
    with torch.no_grad():
        fp.tag_features(ids, "<Q>")
    one = FrozenPrefix(m, ["<Q>"])
    with torch.no_grad():
        one.tag_features(ids[:1], "<Q>")
    assert fp.misses == 2 and fp.hits == 1 and len(fp.store) == 2
    assert fp.used == one.used + sum(
        t.numel() * t.element_size() for pair in fp.store[tuple(fp.split(ids[2])[0])]
        for t in pair)


def test_any_sequence_of_training_calls_gives_the_features_of_a_full_pass():
    """Property: whatever tags each call trains (jointly, again, in any order), with the
    prefixes in memory, on disk or recomputed, the cached features equal a full pass."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    calls = st.lists(st.tuples(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3,
                                        unique=True),
                               st.integers(0, 2**16)), min_size=1, max_size=5)

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(calls, st.sampled_from([0.0, 5e3, 1e9]))  # on disk, both, in memory
    def run(seq, budget):
        m = _mixed_model()
        with tempfile.TemporaryDirectory() as d:
            fp = FrozenPrefix(m, seq[0][0], budget_bytes=budget, disk_bytes=1e9, disk_dir=d)
            _check_calls(m, fp, seq)
            del fp

    run()


def _readout_model(arch: str, layer: int, pool: str):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"), seed=1)
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, init="random",
                        head=HeadConfig("regression", readout_layer=layer, pool=pool)), seed=2)
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_()
    m.set_trainable(["<Q>"])
    return m


@pytest.mark.parametrize(("layer", "pool"), [(-1, "tag+mean"), (1, "tag"), (2, "tag+mean")])
def test_a_head_reads_its_layer_and_pool_alike_through_the_prefix_cache(layer, pool):
    """The features a head reads at decoder layer k, with the mean over the text tokens
    (tags, padding and BOS left out): computed by hand, by a full pass, and through the
    cache (whose prefix sums serve the mean), with the same gradients."""
    m = _readout_model("llama", layer, pool)
    assert m.head("<Q>").linear.in_features == (64 if pool == "tag+mean" else 32)
    full = m.encode(TEXTS)
    with torch.no_grad():
        out = m.base.base_model(inputs_embeds=m.embed(full.input_ids),
                                attention_mask=full.attention_mask,
                                position_ids=full.position_ids, output_hidden_states=True)
    h = out.hidden_states[layer if layer != -1 else m.num_layers]  # (B, T, H)
    want = []
    for i, text in enumerate(TEXTS):
        ids = full.input_ids[i].tolist()
        last_q = max(j for j, t in enumerate(ids) if t == m.bank.last_virtual_id("<Q>"))
        text_pos = [j for j, t in enumerate(ids) if full.attention_mask[i, j]
                    and t < m.bank.vocab_rows and t not in m.tokenizer.all_special_ids]
        assert len(text_pos) == len(text.replace(" ", "").replace("<S>", "")
                                    .replace("<Q>", ""))  # one char per token, no BOS
        row = [h[i, last_q]] + ([h[i, text_pos].mean(0)] if pool == "tag+mean" else [])
        want.append(torch.cat(row))
    want = torch.stack(want)
    torch.testing.assert_close(m.tag_features(full, "<Q>").detach(), want, atol=1e-5,
                               rtol=1e-4)
    y = torch.randn(len(TEXTS), 1)
    head = m.head("<Q>")
    head.loss(m.head_outputs(full, "<Q>"), y).backward()
    grads = _grads(m)
    m.zero_grad(set_to_none=True)
    fp = FrozenPrefix(m, ["<Q>"])
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    for _ in range(2):  # computed, then from the store
        feats = fp.tag_features(ids, "<Q>")
        torch.testing.assert_close(feats.detach(), want, atol=1e-5, rtol=1e-4)
        head.loss(head(feats), y).backward()
        for g, w in zip(_grads(m), grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
        m.zero_grad(set_to_none=True)
    assert (len(fp.sums) == len(TEXTS)) == (pool == "tag+mean")


def test_readout_settings_are_checked_and_saved_with_the_tag(tmp_path):
    m = _readout_model("llama", 2, "tag+mean")
    texts = [t.replace(" x", "") for t in TEXTS]
    loaded = tiny_tagged("llama")
    loaded.load_tag(m.save_tag("<S>", tmp_path / "S"))
    loaded.load_tag(m.save_tag("<Q>", tmp_path / "Q"))
    assert loaded.readout("<Q>") == (2, True)
    np.testing.assert_allclose(loaded.predict(texts), m.predict(texts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="readout_layer"):
        HeadConfig(readout_layer=0)
    with pytest.raises(ValueError, match="pool"):
        HeadConfig(pool="max")
    with pytest.raises(ValueError, match="readout_layer"):
        HeadConfig("lm", pool="tag+mean")
    with pytest.raises(ValueError, match="readout_layer 9"):
        tiny_tagged("llama").add_tag(TagConfig("<R>", kind="function",
                                               head=HeadConfig(readout_layer=9)))
    assert "pool" not in HeadConfig().to_dict()  # earlier tags' files unchanged


def test_pooled_prefix_sums_stay_within_the_memory_budget(tmp_path):
    """The per-layer sums go where their prefix goes: into RAM within its budget, into the
    prefix's file on the disk tier, or nowhere; the features are the same in every case."""
    m = _readout_model("llama", 1, "tag+mean")
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    want = m.tag_features(m.encode(TEXTS), "<Q>").detach()
    for budget, disk in ((4e9, 0.0), (0.0, 1e9), (0.0, 0.0)):
        fp = FrozenPrefix(m, ["<Q>"], budget_bytes=budget, disk_bytes=disk,
                          disk_dir=tmp_path)
        for _ in range(2):
            torch.testing.assert_close(fp.tag_features(ids, "<Q>").detach(), want,
                                       atol=1e-5, rtol=1e-4)
        assert fp.used <= budget and fp.disk_used <= disk
        assert len(fp.sums) == (len(TEXTS) if budget else 0)
        assert len(fp.disk_sums) == (len(TEXTS) if disk else 0)
        assert fp.hits == (len(TEXTS) if budget or disk else 0)
