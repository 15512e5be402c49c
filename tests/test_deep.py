"""Deep tags: learned offsets at the tag's positions at the input of every later layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.errors import TagFileError
from tagllm.prefix import FrozenPrefix, supports_frozen_prefix
from tagllm.training import fit_tag

from tiny import tiny_tagged

TEXTS = ["<S> CCO <Q>", "<S> c1ccccc1CCN(C)C <Q>", "<S> O <Q>", "<S> CC(=O)Oc1ccccc1 <Q> x"]


def _model(arch: str, depth: str = "deep", offsets: bool = True, seed: int = 0):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random", depth=depth), seed=1)
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, init="random", depth=depth,
                        head=HeadConfig("regression")), seed=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_(generator=g)
        for t in ("<S>", "<Q>"):
            if offsets and depth == "deep":
                m.bank.deep_offsets(t).normal_(generator=g)
    return m


def test_an_untrained_deep_tag_is_the_input_tag(arch):
    deep, plain = _model(arch, offsets=False), _model(arch, "input")
    assert deep.bank.deep_offsets("<Q>").shape == (deep.num_layers - 1, 2, 32)
    np.testing.assert_allclose(deep.predict(TEXTS), plain.predict(TEXTS), rtol=1e-6)
    prompts = ["<S> CC", "<S> c1cc"]
    assert deep.generate(prompts, max_new_tokens=4) == plain.generate(prompts, max_new_tokens=4)


def test_offsets_act_at_the_tags_positions_and_only_after_them():
    """Offsets change every position from the first tag on (causal attention) and none
    before it; the layer-0 output is untouched (offsets enter at layer 1's input)."""
    m, plain = _model("llama"), _model("llama", offsets=False)
    batch = m.encode(["CCO <Q> CC"])
    outs = []
    for model in (m, plain):
        with torch.no_grad():
            model.embed(batch.input_ids)  # the ids the hooks read
            out = model.base.base_model(inputs_embeds=model.embed(batch.input_ids),
                                        attention_mask=batch.attention_mask,
                                        position_ids=batch.position_ids,
                                        output_hidden_states=True)
        outs.append(out.hidden_states)
    first = batch.input_ids[0].tolist().index(m.bank.virtual_ids("<Q>")[0])
    torch.testing.assert_close(outs[0][1], outs[1][1])  # layer 0's output
    last = outs[0][-1][0] - outs[1][-1][0]  # (T, H)
    assert last[:first].abs().max() == 0 and (last[first:].abs().amax(-1) > 1e-6).all()


def test_full_pass_and_prefix_cache_agree_with_deep_tags(arch):
    """A frozen deep <S> in the cached prefix and a trainable deep <Q> in the suffix: the
    same features and gradients (offsets included) as a full pass; bf16-free, float32."""
    m = _model(arch)
    if not supports_frozen_prefix(m):
        return
    m.set_trainable(["<Q>"])
    y = torch.randn(len(TEXTS), 1)
    head = m.head("<Q>")
    full = m.encode(TEXTS)
    head.loss(m.head_outputs(full, "<Q>"), y).backward()
    want = [p.grad.clone() for p in m.trainable_parameters()]
    assert m.bank.deep_offsets("<Q>").grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)
    fp = FrozenPrefix(m, ["<Q>"])
    ids = [e.ids for e in m.tagtok.encode_batch(TEXTS)]
    for _ in range(2):
        head.loss(head(fp.tag_features(ids, "<Q>")), y).backward()
        got = [p.grad.clone() for p in m.trainable_parameters()]
        m.zero_grad(set_to_none=True)
        assert len(got) == len(want) == 4  # vectors, deep offsets, head weight and bias
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # a changed frozen deep offset drops the prefixes holding <S>
        m.bank.deep_offsets("<S>").add_(1.0)
    fp.retarget(["<Q>"])
    assert not fp.store


def test_deep_tags_train_save_load_and_generate_in_batches(tmp_path):
    m = _model("llama", offsets=False)
    texts = [t.replace(" x", "") for t in TEXTS] * 3
    y = np.array([len(t) for t in texts], dtype=float)
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.05, warmup_steps=0, validation=0,
                      select="last", activation_checkpointing=True)
    fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    assert m.bank.deep_offsets("<Q>").abs().sum() > 0  # trained
    folder = m.save_tag("<Q>", tmp_path / "Q")
    m.save_tag("<S>", tmp_path / "S")
    loaded = tiny_tagged("llama")
    for t in ("S", "Q"):
        loaded.load_tag(tmp_path / t)
    np.testing.assert_allclose(loaded.predict(texts), m.predict(texts), rtol=1e-5, atol=1e-6)
    prompts = ["<S> CC <Q>", "<S> c1ccccc1 <Q>", "<Q> O"]  # left padding in a batch
    batched = loaded.generate(prompts, max_new_tokens=3, batch_size=3)
    assert batched == [loaded.generate([p], max_new_tokens=3)[0] for p in prompts]
    other = tiny_tagged("llama")
    other.base.config.num_hidden_layers = 3  # as a model of another depth reports it
    with pytest.raises(TagFileError, match="offsets for 2 layers"):
        other.load_tag(folder)
    with pytest.raises(ValueError, match="depth"):
        TagConfig("<Q>", depth="all")


def test_threads_and_other_banks_on_the_same_base_never_see_each_others_offsets():
    """The ids the layer hooks read are per thread and per base: a predict lane and a
    generate lane in two threads (as tagllm serve runs them) get single-threaded results,
    and a bank without deep tags on the same base gets none of the last pass's offsets."""
    from concurrent.futures import ThreadPoolExecutor

    from tagllm import TaggedModel

    m = _model("llama")
    texts = [t.replace(" x", "") for t in TEXTS]
    prompts = ["<S> CCO <Q>", "<S> c1cc <Q>", "<S> OO <Q>", "<S> CC <Q>"]
    want_p, want_g = m.predict(texts), m.generate(prompts, max_new_tokens=3)
    with ThreadPoolExecutor(2) as pool:
        ps = [pool.submit(m.predict, texts) for _ in range(15)]
        gs = [pool.submit(m.generate, prompts, 3) for _ in range(15)]
        for f in ps:
            np.testing.assert_allclose(f.result(), want_p, rtol=1e-6)
        assert all(f.result() == want_g for f in gs)
    other = TaggedModel(m.base, m.tokenizer, "same base")
    other.add_tag(TagConfig("<E>", num_tokens=3, init="random"))
    batch = m.encode(["<S> CCO"])  # (1, 7): the same shape as the next pass
    m.lm_loss(batch)  # with gradients: its ids stay for a recomputation
    mine = other.encode(["<E> CCC"])
    assert mine.input_ids.shape == batch.input_ids.shape
    with torch.no_grad():
        quiet = other.lm_loss(mine)
    torch.testing.assert_close(other.lm_loss(mine).detach(), quiet)


def test_an_auto_readout_is_never_written_or_read_as_a_tag_file(tmp_path):
    import json

    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2,
                        head=HeadConfig(readout_layer="auto", pool="auto")))
    with pytest.raises(TagFileError, match="auto"):
        m.save_tag("<Q>", tmp_path / "Q")
    plain = tiny_tagged("llama")
    plain.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    folder = plain.save_tag("<Q>", tmp_path / "P")
    meta = json.loads((folder / "tag.json").read_text())
    meta["config"]["head"]["pool"] = "auto"  # a hand-edited file
    (folder / "tag.json").write_text(json.dumps(meta))
    with pytest.raises(TagFileError, match="auto"):
        tiny_tagged("llama").load_tag(folder)
