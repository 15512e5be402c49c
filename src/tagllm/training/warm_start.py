"""The closed-form warm start of a function tag's head ("linear probe, then fine-tune").

The head's target statistics are set from the training targets, then the head is fitted in
closed form (its own :meth:`~tagllm.heads.Head.warm_start`: ridge, logistic regression) on
the frozen features at the tag's last vector, computed on a seeded sample of the training
inputs. Under a multi-process launch each process computes a share of the features. The
features are computed under the stage's ``autocast`` setting, like every training pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tagllm.config import TrainConfig
from tagllm.costs import phase
from tagllm.distributed import world
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.progress import track
from tagllm.training.batching import collate


def autocast(model: TaggedModel, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the configured dtype, or nothing."""
    if cfg.autocast == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.autocast == "bf16" else torch.float16
    return torch.autocast(model.device.type, dtype=dtype)


@torch.no_grad()
def tag_features(model: TaggedModel, tag: str, ids: Sequence[Sequence[int]],
                 batch_size: int = 32, progress: bool = True,
                 prefix: FrozenPrefix | None = None, label: str | None = None
                 ) -> torch.Tensor:
    """(N, F) frozen features ``tag``'s head reads, for pre-encoded inputs.

    With ``prefix`` the features come through the frozen-prefix path, which also fills its
    cross-epoch cache.
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    feats = torch.zeros(len(ids), model.feature_size(tag))
    starts = range(0, len(ids), batch_size)
    for s in track(starts, label or f"features for the {tag} warm start", progress,
                   unit="batch"):
        idx = order[s:s + batch_size]
        if prefix is not None:
            f = prefix.tag_features([ids[i] for i in idx], tag)
        else:
            f = model.tag_features(collate(model, [ids[i] for i in idx]), tag)
        feats[idx] = f.cpu()
    return feats


def warm_start_head(model: TaggedModel, tag: str, feats: torch.Tensor, targets: np.ndarray,
                    alpha: float) -> dict:
    """Fit the head of ``tag`` in closed form on frozen features (the head's own method)."""
    return model.head(tag).warm_start(feats, targets, alpha)


def warm_start_rows(n: int, cfg: TrainConfig) -> list[int]:
    """The rows of ``n`` the closed-form fits use: a seeded draw of ``warm_start_examples``."""
    return np.random.default_rng(cfg.seed).permutation(n)[:cfg.warm_start_examples].tolist()


def warm_start_features(model: TaggedModel, tag: str, ids: list[list[int]],
                        cfg: TrainConfig, progress: bool, prefix: FrozenPrefix | None
                        ) -> tuple[torch.Tensor, list[int]]:
    """(N, F) features of the warm-start rows (a seeded draw of ``warm_start_examples`` of
    ``ids``, each process computing a share) with the current tags, and those rows."""
    sub = warm_start_rows(len(ids), cfg)
    with autocast(model, cfg):
        feats = world().on_shares(len(sub), lambda mine: tag_features(
            model, tag, [ids[sub[j]] for j in mine], cfg.batch_size, progress,
            prefix=prefix)).float()
    return feats, sub


def warm_start(model: TaggedModel, tag: str, ids: list[list[int]], y: torch.Tensor,
               cfg: TrainConfig, progress: bool, log: Callable[[str], None],
               prefix: FrozenPrefix | None,
               keep: Callable[[torch.Tensor, list[int]], None] | None = None) -> dict | None:
    """Set a head's target statistics and, if enabled, fit it in closed form (``keep``, if
    given, receives the features and the rows of ``ids`` they belong to)."""
    head = model.head(tag)
    head.prepare(y)
    if not cfg.warm_start_head:
        return None
    t0 = time.perf_counter()
    with phase("warm start"):
        feats, sub = warm_start_features(model, tag, ids, cfg, progress, prefix)
    warm = warm_start_head(model, tag, feats, y[sub].numpy(), cfg.ridge_alpha)
    if keep is not None:
        keep(feats, sub)
    warm["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"warm start of the {tag} head: closed form on {warm['examples']} frozen feature "
        f"vectors (alpha {warm['alpha']:.3g}) in {warm['seconds']} s")
    return warm
