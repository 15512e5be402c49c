"""The content-addressed tag store.

A trained tag lives in ``STORE/<key>/`` (an ordinary tag folder: ``tag.safetensors`` +
``tag.json``). Its key is a hash of everything that determines it: the base model's
fingerprint, the tag's config, its stage's training settings, a fingerprint of the training
data as rendered, the keys of the tags it was trained on top of, and the seed. Equal inputs
give an equal key, so a tag is trained once and then reused; any change gives a new key,
and the old entry stays as it was. Checkpoints of unfinished stages live in
``STORE/.work/<stage key>/``; evaluations of stored tags under settings other than those of
the run that trained them in ``STORE/.evals/<eval key>.json``; ``STORE/.index/`` remembers
each recipe stage's last key material, so a plan can say *what* changed.
``STORE/.locks/<stage key>.lock`` is held while a stage trains: a second process that needs
the same stage waits, then reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from tagllm.errors import TagFileError, TagllmError
from tagllm.fileio import atomic_write_dir, atomic_write_text, json_text
from tagllm.paths import store_dir
from tagllm.records import EvalResult
from tagllm.serialization import META, TENSORS, read_tag

#: Part of every key. Bumped whenever the same recipe would train differently:
#: 2 = LM losses count only tokens after a trained tag; init='text' right-aligns its text.
#: 3 = a validation split is carved from the training rows and the best step is kept.
#: 4 = the warm start runs under the stage's autocast; validation rows follow the test split's
#: groups; the data of evaluations with an ablation is part of the key (their other settings,
#: baselines included, key the evaluation alone: see ``eval_key``).
STORE_FORMAT = 4


def digest(material: Any, length: int = 20) -> str:
    """Stable hex digest of JSON-able ``material`` (sorted keys, exact float repr)."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def flat_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (for "why does this retrain")."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += flat_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                for d in flat_diff(a, b, f"{path}[{i}]")]
    return [] if old == new else [path or "(all)"]


def tag_key(stage_key: str, tag: str) -> str:
    """The store key of one tag of a stage."""
    return digest({"stage": stage_key, "tag": tag})


@dataclass
class StoreEntry:
    """One stored tag as ``tagllm store`` lists it: its key and folder, what its tag.json
    says (name, kind, length, base model, headline metric, when and by which recipe stage
    it was trained), and for ``gc`` its size in bytes."""

    key: str
    path: str
    name: str | None = None
    kind: str | None = None
    num_tokens: int | None = None
    base_model: str | None = None
    metric: str | None = None
    created: str | None = None
    recipe: str | None = None
    stage: str | None = None
    stage_key: str | None = None
    error: str | None = None  # tag.json could not be read
    bytes: int | None = None


class TagStore:
    """Trained tags addressed by key, their checkpoints, and the per-recipe index."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else store_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.root / key / META).is_file()

    def work_dir(self, stage_key: str) -> Path:
        """Where the checkpoint of an unfinished stage is kept."""
        return self.root / ".work" / stage_key

    def clear_work(self, stage_key: str) -> None:
        shutil.rmtree(self.work_dir(stage_key), ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, stage_key: str, log: Callable[[str], None] = print) -> Iterator[None]:
        """Hold the stage's lock (an OS file lock, released if the process dies): another
        process that needs the same stage waits here, then finds its tags stored."""
        path = self.root / ".locks" / f"{stage_key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"another process is training stage {stage_key} in this store ({path}); "
                "waiting for it")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------- evaluations
    def _evals_file(self, eval_key: str) -> Path:
        return self.root / ".evals" / f"{eval_key}.json"

    def read_evals(self, eval_key: str) -> list[EvalResult] | None:
        """The evaluations stored under ``eval_key`` (None when there are none or the file
        cannot be read: they are measured again)."""
        try:
            rows = json.loads(self._evals_file(eval_key).read_text())
            return [EvalResult.from_json(r, f"{self._evals_file(eval_key)}") for r in rows]
        except (OSError, json.JSONDecodeError, TypeError, TagllmError):
            return None  # damaged (e.g. a disk error, an edit): measured again

    def write_evals(self, eval_key: str, rows: list[EvalResult]) -> None:
        atomic_write_text(self._evals_file(eval_key), json_text([r.to_json() for r in rows]))

    # ------------------------------------------------------------- index
    def _index_file(self, recipe: str, stage: str) -> Path:
        return self.root / ".index" / digest(recipe, 12) / f"{digest(stage, 12)}.json"

    def last_material(self, recipe: str, stage: str) -> dict | None:
        f = self._index_file(recipe, stage)
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def remember(self, recipe: str, stage: str, material: dict) -> None:
        atomic_write_text(self._index_file(recipe, stage),
                          json.dumps(material, indent=1, sort_keys=True, default=str) + "\n")

    def referenced(self) -> set[str]:
        """Every key a recipe index references: each remembered stage's tags and the stored
        tags they were trained on. An unreadable index file is an error (a store whose
        references are unknown must not be collected)."""
        keys: set[str] = set()
        for f in sorted((self.root / ".index").glob("*/*.json")):
            try:
                material = json.loads(f.read_text())
                stage = digest(material)
                keys |= {tag_key(stage, t["name"]) for t in material["tags"]}
                keys |= {k for k in material.get("deps", {}).values()
                         if not str(k).startswith("pretrained:")}
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise TagFileError(f"{f}: unreadable store index ({e}); not collecting") from e
        return keys

    def unreferenced(self) -> list[StoreEntry]:
        """The entries (with their size in bytes) that no recipe index references and no
        process is training right now: what ``gc`` removes."""
        keep = self.referenced()
        rows = []
        for r in self.entries():
            if r.key in keep or self._busy(r.stage_key):
                continue
            r.bytes = sum(f.stat().st_size for f in self.path(r.key).rglob("*") if f.is_file())
            rows.append(r)
        return rows

    def remove(self, key: str) -> None:
        """Delete one entry (renamed aside first, so no reader sees half a folder)."""
        d = self.path(key)
        aside = d.with_name(f".gc-{key}")
        d.rename(aside)
        shutil.rmtree(aside)

    def _busy(self, stage_key: str | None) -> bool:
        """Whether a process holds the stage's training lock."""
        path = self.root / ".locks" / f"{stage_key}.lock"
        if not stage_key or not path.exists():
            return False
        try:
            with FileLock(path, timeout=0):
                return False
        except Timeout:
            return True

    # ------------------------------------------------------------- listing
    def entries(self) -> list[StoreEntry]:
        """One row per stored tag (read from tag.json; ``verify`` checks files)."""
        rows: list[StoreEntry] = []
        if not self.root.is_dir():
            return rows
        for d in sorted(self.root.iterdir()):
            f = d / META
            if d.name.startswith(".") or not f.is_file():
                continue
            try:
                meta = json.loads(f.read_text())
                prov = meta.get("provenance", {})
                rows.append(StoreEntry(
                    d.name, str(d), meta.get("name"), meta.get("kind"), meta.get("num_tokens"),
                    meta.get("base_model", {}).get("name"), headline(prov),
                    meta.get("created"), prov.get("recipe"), prov.get("stage", {}).get("name"),
                    prov.get("stage_key")))
            except (OSError, json.JSONDecodeError, AttributeError):
                rows.append(StoreEntry(d.name, str(d), "?", error="unreadable tag.json"))
        return rows

    def export(self, key: str, target: str | Path) -> Path:
        """Copy the tag stored under ``key`` to the folder ``target`` (atomically; an
        identical copy already there is left as it is)."""
        src, target = self.path(key), Path(target)
        if all((target / f).is_file() and (target / f).read_bytes() == (src / f).read_bytes()
               for f in (TENSORS, META)):
            return target

        def fill(tmp: Path) -> None:
            for f in (TENSORS, META):
                shutil.copy2(src / f, tmp / f)

        return atomic_write_dir(target, fill)

    def problems(self, rows: list[StoreEntry]) -> dict[str, str | None]:
        """Each listed entry's verification error (None: its files are sound)."""
        out: dict[str, str | None] = {}
        for r in rows:
            try:
                self.verify(r.key)
                out[r.key] = None
            except TagFileError as e:
                out[r.key] = str(e)
        return out

    def verify(self, key: str) -> dict:
        """Full check of one entry (schema, checksum, shapes); returns its tag.json."""
        meta, _ = read_tag(self.path(key))
        return meta


HEADLINE = ("mse", "mae", "accuracy", "loss")  # preferred metrics for a one-line summary


def headline(provenance: dict) -> str:
    """A short metric for listings: the first evaluation's first metric, or the loss."""
    for ev in provenance.get("eval", []) or []:
        metrics = ev.get("metrics", {})
        for name in (*HEADLINE, *metrics):
            v = metrics.get(name)
            if isinstance(v, int | float):
                return f"{ev.get('name', 'eval')} {name} {v:.4g}"
    loss = provenance.get("final_loss")
    return f"train loss {loss:.4g}" if isinstance(loss, int | float) else ""
