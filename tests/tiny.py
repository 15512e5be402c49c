"""Tiny random-weight models (hidden 32-64) and a character tokenizer, built offline.

Run `python tests/tiny.py DIR` to save one as a local Hugging Face folder."""

from __future__ import annotations

import string
import sys

import torch

ARCHS = ("llama", "gpt2", "qwen2")


def char_tokenizer(bos: bool = True):
    """A character-level fast tokenizer; adds <bos> like Llama/Gemma tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for c in string.printable[:95]:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_base(arch: str = "llama", seed: int = 0, hidden: int = 32):
    """A random-weight causal LM from a config: 2 layers, hidden 32 (vocab 104)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    vocab = 104
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_positions=512, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


def tiny_tagged(arch: str = "llama", seed: int = 0, hidden: int = 32):
    from tagllm import TaggedModel

    return TaggedModel(tiny_base(arch, seed, hidden), char_tokenizer(), f"tiny-{arch}-{seed}")


def save_tiny(directory, arch: str = "llama") -> None:
    tiny_base(arch).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)


if __name__ == "__main__":
    save_tiny(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "llama")
