"""The tag splice: vectorised == one sequence at a time; parsing; errors."""

from __future__ import annotations

import pytest
import torch

from tagllm import TagConfig
from tagllm.model import Batch
from tagllm.tags import InputTooLongError, UnknownTagError

from tiny import tiny_tagged


def _with_tags(arch: str):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<A>", num_tokens=3, init="random"), seed=1)
    m.add_tag(TagConfig("<B>", num_tokens=5, init="random"), seed=2)
    m.add_tag(TagConfig("<C>", kind="function", num_tokens=1, init="random"), seed=3)
    return m


def _reference_logits(m, text: str) -> torch.Tensor:
    """Build one sequence's embeddings with an explicit loop over tokens (no padding)."""
    enc = m.tagtok.encode(text)
    embed = m.base.get_input_embeddings()
    rows = []
    for i in enc.ids:
        if i >= m.bank.vocab_rows:
            for name in m.bank.names:
                vids = m.bank.virtual_ids(name)
                if i in vids:
                    rows.append(m.bank.parameter(name)[vids.index(i)])
        else:
            rows.append(embed(torch.tensor(i)))  # the module: Gemma scales its embeddings
    x = torch.stack(rows)[None]  # (1, T, H)
    out = m.base(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None])
    return out.logits[0]


@torch.no_grad()
def test_vectorised_splice_matches_per_sequence_reference(arch):
    m = _with_tags(arch)
    texts = [
        "<A> CCO",  # tag at the start
        "N#N <B> c1ccccc1 <C>",  # middle and end
        "<A>C<B>O<C>",  # three tags of different p, no spaces
        "plain text without tags",
        "<B> a long sequence of text to pad the others <A> x <C>",
    ]
    batch = m.encode(texts)
    assert batch.attention_mask.sum(1).min() < batch.input_ids.shape[1]  # padding present
    hidden = m.hidden_states(batch)
    logits = m.logits(hidden)
    for i, t in enumerate(texts):
        n = int(batch.attention_mask[i].sum())
        ref = _reference_logits(m, t)
        assert ref.shape[0] == n
        torch.testing.assert_close(logits[i, :n], ref, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_left_padding_gives_same_last_state(arch):
    m = _with_tags(arch)
    texts = ["<A> CCO <C>", "<B> c1ccccc1CCN <A> <C>"]
    right = m.hidden_states(m.encode(texts, side="right"))
    left = m.hidden_states(m.encode(texts, side="left"))
    for i in range(2):
        n = int(m.encode([texts[i]]).attention_mask.sum())
        torch.testing.assert_close(right[i, n - 1], left[i, -1], atol=1e-5, rtol=1e-4)


def test_virtual_ids_and_whitespace():
    m = _with_tags("llama")
    a = m.tagtok.encode("<A> CCO")
    b = m.tagtok.encode("<A>CCO")
    assert a.ids == b.ids and a.tags == ["<A>"]
    assert a.ids[0] == m.tokenizer.bos_token_id  # the tokenizer's BOS is kept
    assert a.ids[1:4] == m.bank.virtual_ids("<A>")
    assert all(i >= m.bank.vocab_rows for i in m.bank.virtual_ids("<B>"))
    assert len(set(m.bank.virtual_ids("<A>")) & set(m.bank.virtual_ids("<B>"))) == 0


def test_unknown_tag_lists_known_tags():
    m = _with_tags("llama")
    with pytest.raises(UnknownTagError, match=r"unknown tag <QED>; known tags: <A>, <B>, <C>"):
        m.encode(["<A> CCO <QED>"])


def test_too_long_input_is_an_error_not_truncated():
    m = _with_tags("llama")
    with pytest.raises(InputTooLongError, match=r"input 1: \d+ tokens > max_length 8"):
        m.encode(["CC", "C" * 20], max_length=8)


def test_empty_input_is_an_error():
    m = _with_tags("llama")
    with pytest.raises(ValueError, match="input 0: empty input text"):
        m.encode(["   "])


def test_text_init_reads_as_its_text_after_line_breaks(arch):
    """An untrained tag with init='text' is, to the model, its text right-aligned after
    line breaks: "<L> CCO" gives the hidden states of "\\n\\n\\n\\nFr:CCO"."""
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<L>", num_tokens=7, init="text", init_text="Fr:"))
    tok = m.tokenizer
    plain = tok("\n" * 4 + "Fr:" + "CCO")["input_ids"]
    tagged = m.encode(["<L> CCO"])
    assert tagged.input_ids.shape[1] == len(plain)
    ids = torch.tensor([plain])
    ref = m.hidden_states(Batch(ids, torch.ones_like(ids), torch.arange(len(plain))[None]))
    torch.testing.assert_close(m.hidden_states(tagged), ref)


def test_text_init_longer_than_the_tag_is_refused():
    m = tiny_tagged("llama")
    with pytest.raises(ValueError, match=r"tag <L>: init_text 'French:' is 7 tokens for this "
                                         r"tokenizer, more than num_tokens=3"):
        m.add_tag(TagConfig("<L>", num_tokens=3, init="text", init_text="French:"))
