"""Tag folders: ``tag.safetensors`` + ``tag.json``, written atomically, verified on load.

``tag.safetensors`` holds ``embedding`` (p, hidden), a deep tag's ``deep`` offsets
(layers - 1, p, hidden) and the head's tensors under ``head.``.
``tag.json`` holds the tag's config, the base model it belongs to (name and a fingerprint of
its input-embedding matrix), the tags it was trained with, the SHA-256 of the tensor file
and free-form provenance. No pickle is ever read or written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tagllm._version import __version__
from tagllm.config import TagConfig
from tagllm.errors import ConfigError, TagFileError
from tagllm.fileio import atomic_write_dir, json_text, sha256_file
from tagllm.records import JSONObject

__all__ = ["META", "TENSORS", "TagFileError", "check_base_model", "read_tag", "tensor_digest",
           "write_tag"]

#: 2 = ``base_model.fingerprint`` hashes every weight (``fingerprint_of: weights``); 1: the
#: input embeddings only (still read, with a warning). An older tagllm refuses 2 and says to
#: upgrade, instead of refusing the tag as made for another model.
FORMAT_VERSION = 2
TENSORS = "tag.safetensors"
META = "tag.json"
REQUIRED = {"format_version": int, "name": str, "config": dict, "base_model": dict,
            "hidden_size": int, "num_tokens": int, "files": dict}


def _versions() -> dict[str, str]:
    import transformers

    return {"tagllm": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def tensor_digest(t: torch.Tensor) -> str:
    """A short digest of a tensor's values (recorded for the tags a tag was trained with)."""
    return "sha256:" + hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


def values_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The digest of a tag file's vectors (``embedding``, and ``deep`` for a deep tag): what
    the tag files of the tags trained beside it record under ``trained_with``."""
    deep = tensors.get("deep")
    return tensor_digest(tensors["embedding"] if deep is None else torch.cat(
        [tensors["embedding"].flatten(), deep.flatten()]))


def write_tag(directory: str | Path, config: TagConfig, tensors: dict[str, torch.Tensor],
              base_model: JSONObject, hidden_size: int, provenance: JSONObject,
              trained_with: dict[str, str] | None = None) -> Path:
    """Write a tag folder atomically: ``tensors`` (``embedding`` and ``head.*``) and the
    metadata. ``base_model`` names the model it belongs to (name, architecture, fingerprint,
    vocab_rows); ``trained_with`` maps the tags it was trained beside to their digests."""
    if config.head is not None and config.head.auto:
        raise TagFileError(f"refusing to save {config.name}: its head's readout is still "
                           "'auto' (it is chosen when the tag trains)")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise TagFileError(f"refusing to save {config.name}: tensor {k} has NaN/inf values")
    meta = {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "kind": config.kind,
        "num_tokens": config.num_tokens,
        "hidden_size": hidden_size,
        "config": config.to_dict(),
        "base_model": base_model,
        "trained_with": dict(trained_with or {}),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "provenance": provenance,
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt", "tag": config.name})
        meta["files"] = {TENSORS: sha256_file(tmp / TENSORS)}
        (tmp / META).write_text(json_text(meta, sort_keys=True))

    return atomic_write_dir(Path(directory), fill)


def read_tag(directory: str | Path) -> tuple[JSONObject, dict[str, torch.Tensor]]:
    """Read and verify a tag folder on its own (schema, checksum, shapes, finite values).

    Does not check the base model: :func:`check_base_model` does that.
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
    trained_with = meta.get("trained_with", {})
    if not (isinstance(trained_with, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in trained_with.items())):
        raise TagFileError(f"{d / META}: field 'trained_with' must map tag names to digests "
                           f"(strings), got {trained_with!r:.200}")
    if meta["format_version"] > FORMAT_VERSION:
        raise TagFileError(f"{d / META}: format_version {meta['format_version']} is newer than "
                           f"this tagllm reads ({FORMAT_VERSION}); upgrade tagllm")
    want = meta["files"].get(TENSORS)
    got = sha256_file(d / TENSORS)
    if want != got:
        raise TagFileError(f"{d / TENSORS}: checksum {got} does not match {META} ({want}); "
                           "the file is corrupt or was changed")
    try:
        tensors = load_file(str(d / TENSORS))
    except (SafetensorError, OSError, ValueError) as e:
        raise TagFileError(f"{d / TENSORS}: unreadable safetensors file ({e})") from e
    try:
        cfg = TagConfig.from_json(meta["config"])
    except (ConfigError, TypeError) as e:
        raise TagFileError(f"{d / META}: bad tag config: {e}") from e
    if cfg.head is not None and cfg.head.auto:
        raise TagFileError(f"{d / META}: the head's readout is 'auto'; a tag file holds the "
                           "layer and pool chosen in training")
    if cfg.name != meta["name"]:
        raise TagFileError(f"{d / META}: name {meta['name']!r} != config name {cfg.name!r}")
    emb = tensors.get("embedding")
    shape = (meta["num_tokens"], meta["hidden_size"])
    if emb is None or tuple(emb.shape) != shape or not emb.is_floating_point():
        got_shape = None if emb is None else tuple(emb.shape)
        raise TagFileError(f"{d / TENSORS}: tensor 'embedding' has shape {got_shape}, "
                           f"expected {shape} (float)")
    deep = tensors.get("deep")
    if (cfg.depth == "deep") != (deep is not None) or (deep is not None and (
            deep.dim() != 3 or tuple(deep.shape[1:]) != shape)):
        raise TagFileError(f"{d / TENSORS}: tensor 'deep' has shape "
                           f"{None if deep is None else tuple(deep.shape)}; a tag of depth "
                           f"{cfg.depth!r} needs " + ("(layers - 1, " + ", ".join(
                               map(str, shape)) + ")" if cfg.depth == "deep" else "none"))
    for k, v in tensors.items():
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise TagFileError(f"{d / TENSORS}: tensor {k!r} is not finite floating point")
    return meta, tensors


def check_base_model(directory: str | Path, meta: JSONObject, base: JSONObject) -> None:
    """Refuse a tag (``meta`` from :func:`read_tag`) made for another base model than
    ``base`` (name, architecture, fingerprint, hidden_size), naming both models."""
    made = meta["base_model"]
    if made.get("fingerprint") != base["fingerprint"] or \
            meta["hidden_size"] != base["hidden_size"]:
        raise TagFileError(
            f"{directory}: tag {meta['name']} was trained for base model {made.get('name')!r} "
            f"({made.get('architecture')}, hidden {meta['hidden_size']}, fingerprint "
            f"{made.get('fingerprint')}), but the loaded base model is {base['name']!r} "
            f"({base['architecture']}, hidden {base['hidden_size']}, fingerprint "
            f"{base['fingerprint']}); retrain the tag for this model")
