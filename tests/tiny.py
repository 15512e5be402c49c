"""Tiny random-weight models (hidden 32-64) and a character tokenizer, built offline.

Run `python tests/tiny.py DIR` to save one as a local Hugging Face folder."""

from __future__ import annotations

import string
import sys
import textwrap
from pathlib import Path

import torch

ARCHS = ("llama", "gpt2", "qwen2", "gemma3")


def char_tokenizer(bos: bool = True):
    """A character-level fast tokenizer; adds <bos> like Llama/Gemma tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for c in string.printable[:95] + "\n":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


#: Runs a recipe (argv: recipe, store) and SIGKILLs itself right after the first
#: checkpoint of the stage that trains <Q>: an interruption with no clean-up at all.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import tagllm.training.loop as loop
    from tagllm.protocol import load_recipe, run
    from tagllm.store import TagStore

    real = loop.save_checkpoint

    def save_then_die(directory, model, tags, *args, **kwargs):
        real(directory, model, tags, *args, **kwargs)
        if tags == [os.environ.get("KILL_AT_TAG", "<Q>")]:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind

    loop.save_checkpoint = save_then_die
    run(load_recipe(sys.argv[1]), TagStore(sys.argv[2]), log=print, progress=False)
""")


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
    elif arch == "gemma3":  # sliding-window + global layers, scaled embeddings, softcapping
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=hidden // 4, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention"],
                               final_logit_softcapping=30.0, max_position_embeddings=512,
                               **common)
        model = Gemma3ForCausalLM(cfg)
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


HUB_REV = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(cache: Path, repo: str, files: Path) -> Path:
    """``files`` as the snapshot HUB_REV of ``repo`` in the Hugging Face cache's documented
    layout (``models--ORG--NAME/refs/main``, ``snapshots/REV/...``)."""
    import shutil

    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(HUB_REV)
    shutil.rmtree(root / "snapshots" / HUB_REV, ignore_errors=True)
    shutil.copytree(files, root / "snapshots" / HUB_REV)
    return root / "snapshots" / HUB_REV


class RecordingHub:
    """Stands in for ``huggingface_hub.HfApi`` where no Hub can be reached: records the
    calls, and an upload lands as a snapshot in the Hub cache ``cache`` (so a later load by
    repo id, offline, finds what was pushed)."""

    calls: list[tuple] = []
    cache: Path = Path()

    def __init__(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        hub_snapshot(self.cache, repo_id, Path(folder_path))
        return f"https://huggingface.co/{repo_id}/commit/{HUB_REV}"


def saved_tiny_tags(d: Path, q_provenance: dict | None = None):
    """A tiny Llama saved under ``d/tiny`` and two tags for it saved as a recipe exports
    them, ``d/tags/{S,Q}``: ``<S>`` (3 random vectors) and ``<Q>`` (2 vectors, a regression
    head with random weights, trained with ``<S>``). Returns the model holding both."""
    from tagllm import HeadConfig, TagConfig, TaggedModel

    save_tiny(d / "tiny")
    m = TaggedModel.from_pretrained(str(d / "tiny"))
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    with torch.no_grad():
        m.heads["Q"].linear.weight.normal_()
    m.save_tag("<S>", d / "tags" / "S", provenance={"stage": {"name": "s"}})
    m.save_tag("<Q>", d / "tags" / "Q", trained_with=["<S>"], provenance=q_provenance or {})
    return m


def start_server(d: Path, args: list[str], env: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, tags: str | None = None,
                 model: str | None = None):
    """A `tagllm serve` process in ``d`` on ``model`` (default: the tiny model ``d/tiny``)
    with the tags ``tags`` (default ``d/tags``) and ``args``, logging to ``d/server.log``;
    returns (base URL, process, open log file) once /health answers."""
    import os
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagllm.cli", "serve", "--tags", tags or str(d / "tags"),
         "--model", model or str(d / "tiny"), "--port", str(port), *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=d)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (d / "server.log").read_text()
        try:
            if httpx.get(f"{url}/health", headers=headers, timeout=2).status_code == 200:
                return url, proc, log
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (d / "server.log").read_text()
        time.sleep(0.2)
