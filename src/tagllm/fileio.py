"""Atomic writes and file checksums: the one implementation every writer uses. A leaf.

A file or folder is written under a temporary name beside its target and renamed into
place when complete, so a crash never leaves a half-written file and never destroys the
previous version. The temporary name records the host and process
(``.NAME.tmp-HOST-PID…``) and the writer holds a lock on it: an exception, Ctrl-C or SIGTERM
removes it at once, and what a SIGKILL or a crash leaves is removed by the next write of the
same target, or by :func:`remove_stale` (``tagllm gc``), once no process holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

#: ``.NAME.KIND-HOST-PID-XXXX``: ``tmp`` a new version being written, ``old`` a replaced
#: (complete) version kept until the new one is in place, ``del`` a replaced version being
#: deleted (never put back); older writers left no ``-XXXX``
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<host>[A-Za-z0-9_.]*)-"
                   r"(?P<pid>\d+)(?:-[A-Za-z0-9_]+)?$")
#: A temporary file or folder this young, unlocked, with a live process of its pid, may be
#: one that its writer has created but not locked yet.
_YOUNG_S = 10.0
#: errors of the file system rather than of the caller: full, over a size or quota limit,
#: read-only, not permitted
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                          errno.EPERM})


class WriteFailed(OSError):
    """A target that could not be written (disk full, a size limit, permissions). Nothing of
    the new version is left, and the previous version, if any, is unchanged."""


def _write_failed(target: Path, tmp: Path, e: OSError) -> OSError:
    """``e`` as a :class:`WriteFailed` naming ``target`` when it is the file system refusing
    the write (not, say, ``fill`` failing to read its input)."""
    named = Path(str(e.filename)).name if e.filename is not None else None
    m = _TEMP.match(named or "")
    ours = named is None or named in (tmp.name, target.name) or (
        m is not None and m["name"] == target.name)  # any temporary copy of the target
    if isinstance(e, WriteFailed) or not (e.errno in WRITE_ERRNOS and ours):
        return e
    return WriteFailed(e.errno, f"cannot write {target}: {e.strerror or e}; nothing was "
                       "written and the previous version, if any, is unchanged")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_name(name: str, kind: str = "tmp") -> str:
    """The hidden name of this process's temporary copy of ``name`` (``kind`` tmp or
    old), which :func:`remove_stale` recognises. Writers add a unique suffix
    (:func:`unique_temp`), so two threads of one process never share a name."""
    return f".{name}.{kind}-{_host()}-{os.getpid()}"


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would change it for
    every thread for a moment): from /proc on Linux, else as it was at import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


_IMPORT_UMASK = os.umask(0o022)
os.umask(_IMPORT_UMASK)


def unique_temp(target: Path, kind: str = "tmp") -> Path:
    """A new, empty, private file beside ``target`` named ``temp_name(target.name, kind)``
    plus a unique suffix, with the permissions an ordinary new file gets (the umask's)."""
    fd, name = tempfile.mkstemp(prefix=temp_name(target.name, kind) + "-", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def discard(path: Path) -> None:
    """Delete a replaced folder: renamed to a ``del`` name first, so that a kill during the
    deletion never leaves a partial copy that looks like a version to put back."""
    m = _TEMP.match(path.name)
    gone = path.with_name(f".{m['name']}.del-{path.name[m.start('host'):]}") if m else path
    with contextlib.suppress(OSError):
        os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process; a huge number
        return True
    return True


def hold(path: Path) -> int | None:
    """An open descriptor of ``path`` (a file or a folder) holding an exclusive lock on it:
    while it is open, :func:`remove_stale` leaves ``path`` alone. Close it when done. None
    where the file system refuses the lock (NFS locks only files open for writing): the
    write goes on unlocked, and :func:`remove_stale`, which cannot take the lock there
    either, leaves such leftovers alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlocked(path: Path) -> bool:
    """Whether no process holds ``path``'s lock (so no live writer owns it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Stale(NamedTuple):
    """A leftover of a killed writer: ``path``, and whether it is put back as ``target``
    (an ``.old`` copy whose target is missing) rather than removed."""

    path: Path
    target: Path
    put_back: bool


def find_stale(folder: str | Path, name: str | None = None, recursive: bool = False
               ) -> list[Stale]:
    """The temporary files and folders that writers on this host left in ``folder`` when
    they were killed (SIGKILL, a crash, a power cut). A temporary copy is stale when no
    process holds its lock (:func:`hold`) and its process is gone (or it is older than a
    few seconds: a process id of another container may look gone); a replaced version
    (``.old``) when its process is gone, and the newest one is put back if its target is
    missing (a kill between the two renames). ``name``: only those of that target;
    ``recursive``: in sub-folders too, except inside a stale folder (it goes whole).
    Another host's are left alone (a shared file system: its process cannot be checked
    from here)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        m = _TEMP.match(p.name)
        if m is None or m["host"] != _host() or (name is not None and m["name"] != name):
            continue
        alive = _alive(int(m["pid"]))
        if m["kind"] in ("old", "del"):
            if not alive:
                found.append(p)
            continue
        try:
            young = time.time() - p.lstat().st_mtime < _YOUNG_S
        except OSError:
            continue
        if (not alive or not young) and not p.is_symlink() and _unlocked(p):
            found.append(p)
    # the newest complete copy of a target is put back (an .old is always complete: one
    # being deleted is renamed del first)
    matched = sorted(((p, _TEMP.match(p.name)) for p in found),
                     key=lambda pm: (str(pm[0].parent), pm[1]["name"], -_mtime(pm[0])))
    out: list[Stale] = []
    back: set[Path] = set()
    for p, m in matched:
        target = p.with_name(m["name"])
        put = m["kind"] == "old" and not target.exists() and target not in back
        back |= {target} if put else set()
        out.append(Stale(p, target, put))
    gone = {x.path for x in out if not x.put_back and x.path.is_dir() and not x.path.is_symlink()}
    out = [x for x in out if not any(d in x.path.parents for d in gone)]  # removed with d
    # deepest first: what lies inside a folder that is put back is cleaned before it moves
    return sorted(out, key=lambda x: -len(x.path.parts))


def clean_stale(found: list[Stale]) -> list[Stale]:
    """Put back or remove what :func:`find_stale` found; returns what was done (a copy
    whose target has appeared meanwhile, or that another process moved, is removed or
    skipped rather than put back)."""
    done = []
    for p, target, put_back in found:
        if not os.path.lexists(p):  # another cleaner was quicker
            continue
        if put_back and not target.exists():
            try:
                os.replace(p, target)
            except OSError as e:  # another cleaner put it (or another copy) back first
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if p.exists():
                    discard(p)
                    done.append(Stale(p, target, False))
                continue
            done.append(Stale(p, target, True))
            continue
        if p.is_dir() and not p.is_symlink():
            discard(p)
        else:
            p.unlink(missing_ok=True)
        done.append(Stale(p, target, False))
    return done


def remove_stale(folder: str | Path, name: str | None = None, recursive: bool = False,
                 dry_run: bool = False) -> list[Path]:
    """:func:`find_stale` then (unless ``dry_run``) :func:`clean_stale`: returns the paths
    removed or put back (or that would be)."""
    found = find_stale(folder, name, recursive)
    return [x.path for x in (found if dry_run else clean_stale(found))]


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def sha256_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class TempDir:
    """A private temporary folder in ``parent`` (named and locked so that
    :func:`remove_stale` can tell when its process was killed), removed by :meth:`close`.
    What earlier, killed processes left for the same ``name`` is removed first."""

    def __init__(self, parent: str | Path, name: str) -> None:
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, name)
        self.path = Path(tempfile.mkdtemp(prefix=temp_name(name) + "-", dir=parent))
        self._fd: int | None = hold(self.path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def atomic_write_dir(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Create folder ``target`` by filling a temporary sibling folder and renaming it into
    place. An existing ``target`` is replaced only after the new folder is complete."""
    target = Path(target)
    try:
        tmp = TempDir(target.parent, target.name)
    except OSError as e:
        raise _write_failed(target, target, e) from e
    try:
        fill(tmp.path)
        # an ordinary folder's mode, not mkdtemp's 0700 (a setgid bit it inherited stays)
        os.chmod(tmp.path, (0o777 & ~_umask()) | (os.stat(tmp.path).st_mode & stat.S_ISGID))
        _swap_in(tmp.path, target)
    except OSError as e:
        raise _write_failed(target, tmp.path, e) from e
    finally:
        tmp.close()
    return target


_TAKEN = frozenset({errno.ENOTEMPTY, errno.EEXIST})


def _swap_in(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``. An existing ``target`` is first moved to an
    ``.old`` name of its own (put back if ``new`` cannot follow) and removed after. Writers
    racing for one target (threads, processes) each get their turn: the last one wins and
    none fails. A ``target`` that is a symbolic link or a file is refused, not replaced."""
    try:
        mode = os.lstat(target).st_mode  # one look: another writer may move it meanwhile
    except FileNotFoundError:
        mode = stat.S_IFDIR
    if not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "a file"
        raise WriteFailed(errno.ENOTDIR, f"cannot write {target}: it is {what}, not a folder; "
                          "remove it or choose another path (nothing was written)")
    for _ in range(100):
        try:
            os.replace(new, target)  # no target (or an empty one): done
            return
        except OSError as e:
            if e.errno not in _TAKEN:
                raise
        old = Path(tempfile.mkdtemp(prefix=temp_name(target.name, "old") + "-",
                                    dir=target.parent))
        try:
            os.replace(target, old)  # over the empty folder: a name no one else has
        except FileNotFoundError:  # another writer moved it first
            old.rmdir()
            continue
        try:
            os.replace(new, target)
        except OSError as e:
            if e.errno in _TAKEN:  # another writer's version came in between: it is newer
                discard(old)
                continue
            with contextlib.suppress(OSError):
                os.replace(old, target)
            raise
        discard(old)
        return
    raise OSError(errno.EBUSY, f"{target}: other writers kept replacing it; gave up")


def atomic_write_file(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Create file ``target`` by letting ``fill`` write a temporary sibling file, then
    renaming it into place; on any error the temporary file is removed."""
    target = Path(target)
    tmp: Path | None = None
    fd = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent, target.name)
        tmp = unique_temp(target)
        fd = hold(tmp)
        fill(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise _write_failed(target, tmp or target, e) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)
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
