"""Tag folders: ``tag.safetensors`` + ``tag.json``, written atomically, verified on load.

``tag.safetensors`` holds ``embedding`` (p, hidden) and the head's tensors under ``head.``.
``tag.json`` holds the tag's config, the base model it belongs to (name and a fingerprint of
its input-embedding matrix), the tags it was trained with, the SHA-256 of the tensor file
and free-form provenance. No pickle is ever read or written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tagllm.config import TagConfig

if TYPE_CHECKING:
    from tagllm.model import TaggedModel

FORMAT_VERSION = 1
TENSORS = "tag.safetensors"
META = "tag.json"
REQUIRED = {"format_version": int, "name": str, "config": dict, "base_model": dict,
            "hidden_size": int, "num_tokens": int, "files": dict}


class TagFileError(ValueError):
    """A tag folder that is missing, corrupt, or made for another base model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def atomic_write_dir(target: Path, fill) -> Path:
    """Create ``target`` by filling a temporary sibling folder and renaming it into place.

    An existing ``target`` is replaced only after the new folder is complete, so a crash
    never leaves a half-written folder (the old one, if any, stays intact until then).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _versions() -> dict[str, str]:
    import transformers

    from tagllm import __version__

    return {"tagllm": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def save_tag(model: TaggedModel, name: str, directory: str | Path, provenance: dict[str, Any],
             trained_with: list[str] | tuple[str, ...] = ()) -> Path:
    """Write tag ``name`` of ``model`` (embedding and head) to ``directory`` atomically."""
    cfg: TagConfig = model.bank.configs[model.bank.require(name)]
    tensors = {"embedding": model.bank.parameter(name).detach().float().cpu().contiguous()}
    head = model.head(name)
    if head is not None:
        for k, v in head.state_dict().items():
            tensors[f"head.{k}"] = v.detach().float().cpu().contiguous()
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise TagFileError(f"refusing to save {name}: tensor {k} has NaN/inf values")
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": cfg.kind,
        "num_tokens": cfg.num_tokens,
        "hidden_size": model.hidden_size,
        "config": cfg.to_dict(),
        "base_model": {
            "name": model.model_name,
            "architecture": type(model.base).__name__,
            "fingerprint": model.fingerprint,
            "vocab_rows": model.bank.vocab_rows,
        },
        "trained_with": {t: _tensor_digest(model.bank.parameter(t)) for t in trained_with
                         if t != name},
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "provenance": provenance,
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt", "tag": name})
        meta["files"] = {TENSORS: _sha256(tmp / TENSORS)}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_write_dir(Path(directory), fill)


def _tensor_digest(t: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


def read_tag(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a tag folder on its own (schema, checksum, shapes, finite values).

    Does not check the base model: :func:`load_tag` does that against a loaded model.
    """
    d = Path(directory)
    if not d.is_dir():
        raise TagFileError(f"{d}: not a tag folder (expected a folder with {META} and {TENSORS})")
    for f in (META, TENSORS):
        if not (d / f).is_file():
            raise TagFileError(f"{d}: missing {f}")
    try:
        meta = json.loads((d / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TagFileError(f"{d / META}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise TagFileError(f"{d / META}: expected a JSON object")
    for key, typ in REQUIRED.items():
        if not isinstance(meta.get(key), typ):
            raise TagFileError(f"{d / META}: field {key!r} missing or not a {typ.__name__}")
    if meta["format_version"] > FORMAT_VERSION:
        raise TagFileError(f"{d / META}: format_version {meta['format_version']} is newer than "
                           f"this tagllm reads ({FORMAT_VERSION}); upgrade tagllm")
    want = meta["files"].get(TENSORS)
    got = _sha256(d / TENSORS)
    if want != got:
        raise TagFileError(f"{d / TENSORS}: checksum {got} does not match {META} ({want}); "
                           "the file is corrupt or was changed")
    try:
        tensors = load_file(str(d / TENSORS))
    except (SafetensorError, OSError, ValueError) as e:
        raise TagFileError(f"{d / TENSORS}: unreadable safetensors file ({e})") from e
    try:
        cfg = TagConfig.from_json(meta["config"])
    except (ValueError, TypeError) as e:
        raise TagFileError(f"{d / META}: bad tag config: {e}") from e
    if cfg.name != meta["name"]:
        raise TagFileError(f"{d / META}: name {meta['name']!r} != config name {cfg.name!r}")
    emb = tensors.get("embedding")
    shape = (meta["num_tokens"], meta["hidden_size"])
    if emb is None or tuple(emb.shape) != shape or not emb.is_floating_point():
        got_shape = None if emb is None else tuple(emb.shape)
        raise TagFileError(f"{d / TENSORS}: tensor 'embedding' has shape {got_shape}, "
                           f"expected {shape} (float)")
    for k, v in tensors.items():
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise TagFileError(f"{d / TENSORS}: tensor {k!r} is not finite floating point")
    return meta, tensors


def load_tag(model: TaggedModel, directory: str | Path, trainable: bool = False) -> str:
    """Verify a tag folder against ``model`` and add the tag (frozen unless ``trainable``)."""
    d = Path(directory)
    meta, tensors = read_tag(d)
    name = meta["name"]
    base = meta["base_model"]
    if base.get("fingerprint") != model.fingerprint or meta["hidden_size"] != model.hidden_size:
        raise TagFileError(
            f"{d}: tag {name} was trained for base model {base.get('name')!r} "
            f"({base.get('architecture')}, hidden {meta['hidden_size']}, embedding fingerprint "
            f"{base.get('fingerprint')}), but the loaded base model is {model.model_name!r} "
            f"({type(model.base).__name__}, hidden {model.hidden_size}, embedding fingerprint "
            f"{model.fingerprint}); retrain the tag for this model"
        )
    if name in model.bank:
        raise TagFileError(f"{d}: tag {name} is already loaded in this model")
    cfg = TagConfig.from_json(meta["config"])
    model.add_tag(cfg, init=tensors["embedding"])
    with torch.no_grad():
        head = model.head(name)
        if head is not None:
            state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
            try:
                head.load_state_dict(state)
            except RuntimeError as e:
                raise TagFileError(f"{d / TENSORS}: head tensors do not match the head config "
                                   f"({e})") from e
    model.bank.parameter(name).requires_grad_(trainable)
    if head is not None:
        head.requires_grad_(trainable)
    return name
