"""Atomic writes and file checksums: the one implementation every writer uses. A leaf.

A file or folder is written under a temporary name beside its target and renamed into
place when complete, so a crash never leaves a half-written file and never destroys the
previous version.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def atomic_write_dir(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Create folder ``target`` by filling a temporary sibling folder and renaming it into
    place. An existing ``target`` is replaced only after the new folder is complete."""
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


def atomic_write_file(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Create file ``target`` by letting ``fill`` write a temporary sibling file, then
    renaming it into place; on any error the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        fill(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    return atomic_write_file(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_text(obj: object, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as strict JSON (RFC 8259), which every parser reads (JavaScript's, jq's):
    NaN and infinities (an undefined metric) become null, numpy numbers and arrays plain
    numbers and lists."""

    def clean(o: object) -> object:
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if hasattr(o, "tolist"):  # numpy scalars and arrays
            return clean(o.tolist())
        return o

    return json.dumps(clean(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
