"""Training checkpoints: tags, heads, optimizer, scheduler and RNG state, saved atomically.

A checkpoint is a folder with ``state.safetensors`` (every tensor) and ``state.json`` (the
step, the loss curve, optimizer hyper-parameters, scheduler state, and the SHA-256 of the
tensor file). Nothing is pickled. The data position is the step: the batch order is a
pure function of the seed and is replayed on resume.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tagllm.errors import CheckpointError
from tagllm.fileio import atomic_write_dir, remove_stale, sha256_file
from tagllm.model import TaggedModel
from tagllm.records import JSONObject, JSONValue

__all__ = ["CheckpointError", "CheckpointState", "StopRequest", "load_checkpoint",
           "put_tag_tensors", "save_checkpoint", "tag_tensors"]

TENSORS = "state.safetensors"
META = "state.json"


def save_checkpoint(directory: Path, model: TaggedModel, tags: list[str],
                    opt: torch.optim.Optimizer, sched: Any, meta: JSONObject,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the full training state of ``tags`` (and any ``extra`` tensors, e.g. the best
    step's tags) to ``directory`` (atomically)."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state(), **(extra or {}),
                                        **tag_tensors(model, tags)}
    osd = opt.state_dict()
    scalars: dict[str, JSONObject] = {}
    for pid, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    record = {**meta, "tags": tags, "optimizer": {"param_groups": osd["param_groups"],
                                                   "scalars": scalars},
              "scheduler": sched.state_dict()}

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS))
        record["sha256"] = sha256_file(tmp / TENSORS)
        (tmp / META).write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")

    return atomic_write_dir(directory, fill)


def _jsonable(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.tolist()
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint")


@dataclass
class CheckpointState:
    """A verified checkpoint whose tag and head values are already in the model."""

    directory: Path
    meta: JSONObject
    tensors: dict[str, torch.Tensor]

    def restore(self, opt: torch.optim.Optimizer, sched: Any) -> JSONObject:
        """Load optimizer, scheduler and RNG state; returns the checkpoint's metadata."""
        saved = self.meta["optimizer"]
        state: dict[int, dict[str, torch.Tensor | JSONValue]] = {}
        for key, v in self.tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for pid, st in saved["scalars"].items():
            state.setdefault(int(pid), {}).update(st)
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g
                  for g in saved["param_groups"]]
        try:
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{self.directory}: optimizer state does not fit ({e})") from e
        sched.load_state_dict(self.meta["scheduler"])
        torch.set_rng_state(self.tensors["rng.torch"])
        return self.meta


def load_checkpoint(directory: Path, model: TaggedModel, tags: list[str],
                    prepare: Callable[[JSONObject], None] | None = None
                    ) -> CheckpointState | None:
    """Verify the checkpoint in ``directory`` (None if there is none) and copy its tag and
    head values into ``model``; ``prepare`` gets the verified metadata first (to set up what
    the tensors' shapes depend on)."""
    d = Path(directory)
    remove_stale(d.parent, d.name)  # a kill between the two renames of a save: put it back
    if not (d / META).is_file():
        return None
    try:
        meta = json.loads((d / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / META}: not valid JSON ({e}); delete {d} to start over") from e
    if not (d / TENSORS).is_file() or meta.get("sha256") != sha256_file(d / TENSORS):
        raise CheckpointError(f"{d / TENSORS}: missing or checksum mismatch; delete {d} to "
                              "start over")
    if meta.get("tags") != list(tags):
        raise CheckpointError(f"{d}: checkpoint of {meta.get('tags')}, not of {list(tags)}")
    if prepare is not None:
        prepare(meta)
    tensors = load_file(str(d / TENSORS))
    for t in tags:
        v = tensors.get(f"tag.{t}")
        if v is None or v.shape != model.bank.parameter(t).shape:
            raise CheckpointError(f"{d}: tag {t} missing or of another shape")
        mlp = model.bank.reparam(t)
        if mlp is not None and any(tensors.get(f"reparam.{t}.{k}") is None or
                                   tensors[f"reparam.{t}.{k}"].shape != v.shape
                                   for k, v in mlp.state_dict().items()):
            raise CheckpointError(f"{d}: the residual MLP of tag {t} is missing or of "
                                  "another shape")
        deep = model.bank.deep_offsets(t)
        if deep is not None and (tensors.get(f"deep.{t}") is None
                                 or tensors[f"deep.{t}"].shape != deep.shape):
            raise CheckpointError(f"{d}: the deep offsets of tag {t} are missing or of "
                                  "another shape")
    put_tag_tensors(model, tags, tensors)
    return CheckpointState(d, meta, tensors)


def tag_tensors(model: TaggedModel, tags: list[str]) -> dict[str, torch.Tensor]:
    """CPU copies of ``tags``' vectors and heads, keyed ``tag.NAME`` and ``head.NAME.KEY``
    (as checkpoints store them)."""
    out = {f"tag.{t}": model.bank.parameter(t).detach().cpu().clone() for t in tags}
    for t in tags:
        mlp, deep = model.bank.reparam(t), model.bank.deep_offsets(t)
        if mlp is not None:
            out.update({f"reparam.{t}.{k}": v.detach().cpu().clone()
                        for k, v in mlp.state_dict().items()})
        if deep is not None:
            out[f"deep.{t}"] = deep.detach().cpu().clone()
        head = model.head(t)
        if head is not None:
            out.update({f"head.{t}.{k}": v.detach().cpu().clone()
                        for k, v in head.state_dict().items()})
    return out


def put_tag_tensors(model: TaggedModel, tags: list[str], tensors: dict[str, torch.Tensor]
                    ) -> None:
    """Copy :func:`tag_tensors`' values back into ``model``."""
    with torch.no_grad():
        for t in tags:
            model.bank.parameter(t).copy_(tensors[f"tag.{t}"])
            if (deep := model.bank.deep_offsets(t)) is not None:
                deep.copy_(tensors[f"deep.{t}"])
            mlp = model.bank.reparam(t)
            if mlp is not None:
                pre = f"reparam.{t}."
                mlp.load_state_dict({k[len(pre):]: v for k, v in tensors.items()
                                     if k.startswith(pre)})
            head = model.head(t)
            if head is not None:
                pre = f"head.{t}."
                head.load_state_dict({k[len(pre):]: v for k, v in tensors.items()
                                      if k.startswith(pre)})


class StopRequest:
    """Turns SIGINT/SIGTERM into a request the training loop honours between steps.

    ``requested`` names the signal once one arrived. A second Ctrl-C stops at once. Outside
    the main thread (where handlers cannot be installed) it never requests anything.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
