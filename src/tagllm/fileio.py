"""Atomic writes and file checksums: the one implementation every writer uses. A leaf.

A file or folder is written under a temporary name beside its target and renamed into
place when complete, so a crash never leaves a half-written file and never destroys the
previous version. The temporary name records the host and process
(``.NAME.tmp-HOST-PID…``): an exception, Ctrl-C or SIGTERM removes it at once, and what a
SIGKILL or a crash leaves is removed by the next write of the same target, or by
:func:`remove_stale` (``tagllm gc``), once its process is gone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

#: ``.NAME.tmp-HOST-PID``, ``.NAME.tmp-HOST-PID-XXXX`` (folders), ``.NAME.old-HOST-PID``;
#: also the host-less ``.NAME.tmpPID`` of earlier versions.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[^/]*?)-(?P<pid>\d+)(?:-[^-]+)?$"
                   r"|^\.(?P<oldname>.+)\.tmp(?P<oldpid>\d+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_name(name: str, kind: str = "tmp") -> str:
    """The hidden name of this process's temporary copy of ``name`` (``kind`` tmp or
    old), which :func:`remove_stale` recognises."""
    return f".{name}.{kind}-{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: str | Path, name: str | None = None, recursive: bool = False,
                 dry_run: bool = False) -> list[Path]:
    """Remove the temporary files and folders that writers on this host left in ``folder``
    when they were killed (SIGKILL, a crash, a power cut): those whose process is gone.
    ``name``: only those of that target; ``recursive``: in sub-folders too. Returns what
    was (or with ``dry_run`` would be) removed. Another host's are left alone (a shared
    file system: its process cannot be checked from here)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        m = _TEMP.match(p.name)
        if m is None or (name is not None and name not in (m["name"], m["oldname"])):
            continue
        if m["pid"] is not None and m["host"] != _host():
            continue
        if not _alive(int(m["pid"] or m["oldpid"])):
            found.append(p)
    for p in found if not dry_run else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


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
    remove_stale(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name(target.name) + "-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(temp_name(target.name, "old"))
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
    remove_stale(target.parent, target.name)
    tmp = target.with_name(temp_name(target.name))
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
