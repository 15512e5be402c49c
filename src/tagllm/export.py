"""Tagged prompts for another inference engine: vLLM's prompt embeddings.

vLLM generates from a prompt given as its input embeddings (``LLM(model,
enable_prompt_embeds=True)``, then ``llm.generate({"prompt_embeds": T})`` with T of shape
(seq_len, hidden)). A tagged prompt is exactly that: the base model's input embeddings with
each tag's vectors spliced in. :func:`export_prompt_embeds` writes them, one tensor per
prompt, to a safetensors file (no pickle), with the special tokens the tokenizer adds (the
BOS of Llama and Gemma) included, as :meth:`TaggedModel.generate` feeds them to the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tagllm.errors import ConfigError, DataError
from tagllm.fileio import atomic_write_file
from tagllm.model import TaggedModel

#: the format an exported file's metadata declares
PROMPT_EMBEDS_FORMAT = "tagllm.vllm-prompt-embeds/1"


@torch.inference_mode()
def prompt_embeds(model: TaggedModel, texts: Sequence[str], max_length: int | None = None
                  ) -> list[torch.Tensor]:
    """For each text, its input embeddings (T, H) in the base model's dtype, on the CPU:
    the tokens' embeddings with the tags' vectors spliced in. A deep tag (offsets added at
    every layer) cannot be written as input embeddings and is refused, naming it."""
    if not texts:
        raise DataError("no prompts to export")
    out = []
    for i, text in enumerate(texts):
        enc = model.tagtok.encode(text, max_length, where=f"prompt {i}")
        deep = sorted({t for t in enc.tags if model.bank.configs[t].depth == "deep"})
        if deep:
            raise ConfigError(f"prompt {i} uses the deep tag(s) {deep}, whose offsets enter "
                              "every layer: input embeddings cannot carry them")
        ids = torch.tensor([enc.ids], device=model.device)  # (1, T)
        out.append(model.embed(ids)[0].cpu().contiguous())  # (T, H)
    return out


def export_prompt_embeds(model: TaggedModel, texts: Sequence[str], output: str | Path,
                         max_length: int | None = None) -> Path:
    """Write ``texts``' input embeddings to the safetensors file ``output`` (atomically):
    tensors ``prompt_0``, ``prompt_1`` … in order, and metadata naming the format, the base
    model and its embeddings' fingerprint, and the prompts."""
    from safetensors.torch import save_file

    if Path(output).suffix != ".safetensors":
        raise ConfigError(f"--output {output}: write a .safetensors file")
    tensors = {f"prompt_{i}": t for i, t in enumerate(prompt_embeds(model, texts, max_length))}
    meta = {"format": PROMPT_EMBEDS_FORMAT, "model": model.model_name,
            "embedding_fingerprint": model.embedding_fingerprint,
            "prompts": json.dumps(list(texts), ensure_ascii=False)}
    return atomic_write_file(output, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
