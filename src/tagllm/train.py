"""One training loop for one tag (and its head), the base model frozen throughout.

``fit_tag`` trains a domain tag by next-token prediction (no head, or the ``lm`` head) or a
function tag with a regression/classification head. Regression heads are first fitted in
closed form on the frozen features (ridge, "linear probe, then fine-tune"), which gives a
good head before the first gradient step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from tagllm.config import TrainConfig
from tagllm.heads import ClassificationHead, RegressionHead
from tagllm.model import Batch, TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.progress import bar, track
from tagllm.tags import pad_batch


@dataclass
class TrainResult:
    """What a training run did: steps, wall time, the loss curve and the warm start."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    warm_start: dict | None = None

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return float(np.mean(tail)) if tail else math.nan


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int,
                            bucket: int = 32):
    """Endless batches of indices: shuffled each epoch, then sorted by length within chunks
    of ``bucket`` batches so each batch pads little; batch order shuffled again."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    while True:
        perm = rng.permutation(n)
        batches = []
        chunk = batch_size * bucket
        for s in range(0, n, chunk):
            part = sorted(perm[s:s + chunk].tolist(), key=lambda i: lengths[i])
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        if n >= batch_size:  # drop a ragged final batch when full ones exist
            batches = [b for b in batches if len(b) == batch_size] or batches
        for k in rng.permutation(len(batches)):
            yield batches[k]


def _batch(model: TaggedModel, ids: Sequence[Sequence[int]]) -> Batch:
    return Batch(*pad_batch(ids, model.pad_id)).to(model.device)


@torch.no_grad()
def tag_features(model: TaggedModel, tag: str, ids: Sequence[Sequence[int]],
                 batch_size: int = 32, progress: bool = True,
                 prefix: FrozenPrefix | None = None,
                 keys: Sequence[int] | None = None) -> torch.Tensor:
    """(N, H) frozen features at ``tag``'s last vector for pre-encoded inputs.

    With ``prefix`` the features come through the frozen-prefix path, which also fills its
    cross-epoch cache (``keys`` name the examples there).
    """
    keys = list(range(len(ids))) if keys is None else list(keys)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    feats = torch.zeros(len(ids), model.hidden_size)
    starts = range(0, len(ids), batch_size)
    for s in track(starts, f"features for the {tag} warm start", progress, unit="batch"):
        idx = order[s:s + batch_size]
        if prefix is not None:
            f = prefix.tag_features([keys[i] for i in idx], [ids[i] for i in idx], tag)
        else:
            f = model.tag_features(_batch(model, [ids[i] for i in idx]), tag)
        feats[idx] = f.cpu()
    return feats


def warm_start_head(model: TaggedModel, tag: str, feats: torch.Tensor, targets: np.ndarray,
                    alpha: float) -> dict:
    """Fit the head of ``tag`` in closed form on frozen features (ridge / logistic)."""
    head = model.head(tag)
    X = feats.double().numpy()
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd  # standardised features: one penalty suits every dimension
    if isinstance(head, RegressionHead):
        from sklearn.linear_model import RidgeCV

        y = head.standardise(torch.as_tensor(targets, dtype=torch.float32)
                             .view(len(X), -1)).double().numpy()
        alphas = np.logspace(-2, 4, 13) * max(alpha, 1e-6)
        reg = RidgeCV(alphas=alphas).fit(Z, y)
        W = np.atleast_2d(reg.coef_)  # (n, H)
        b = np.atleast_1d(reg.intercept_)
        chosen = float(reg.alpha_)
    elif isinstance(head, ClassificationHead):
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0 / max(alpha, 1e-6), max_iter=2000).fit(Z, targets)
        W, b = clf.coef_, clf.intercept_
        if W.shape[0] == 1:  # binary: sklearn gives one row, the head has two logits
            W = np.concatenate([-W / 2, W / 2])
            b = np.concatenate([-b / 2, b / 2])
        chosen = alpha
    else:
        raise ValueError(f"tag {tag} has no head to warm-start")
    W_raw = W / sd  # undo the feature standardisation: head acts on raw features
    b_raw = b - W_raw @ mu
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(W_raw, dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(b_raw, dtype=torch.float32))
    return {"examples": len(X), "alpha": chosen}


def fit_tag(
    model: TaggedModel,
    tag: str,
    texts: Sequence[str],
    targets: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    after_warm_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train tag ``tag`` (and its head) on ``texts``; every other parameter stays frozen.

    ``after_warm_start`` is called once the head has its closed-form fit and before the
    first gradient step (e.g. to evaluate "tags at initialisation + fitted head").
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    model.set_trainable([tag])
    head = model.head(tag)
    supervised = head is not None and head.has_parameters
    if supervised and targets is None:
        raise ValueError(f"tag {tag} has a {head.kind} head: training needs targets")
    ids = [e.ids for e in model.tagtok.encode_batch(texts, cfg.max_length, where="example")]
    if supervised:
        y_all = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        if len(y_all) != len(ids):
            raise ValueError(f"{len(ids)} texts but {len(y_all)} targets")
        if not torch.isfinite(y_all).all():
            raise ValueError("targets contain NaN or infinite values")
        if isinstance(head, RegressionHead) and y_all.numel() != len(ids) * head.num_outputs:
            raise ValueError(f"targets of shape {tuple(y_all.shape)} for {len(ids)} texts and a "
                             f"head with {head.num_outputs} output(s)")
        model.head_positions(_batch(model, ids[:1]).input_ids, tag)  # the tag is present
    warm = None
    prefix = None
    if supervised and cfg.frozen_prefix:
        prefix = FrozenPrefix(model, [tag], budget_bytes=cfg.prefix_cache_gb * 1e9)
    if supervised and isinstance(head, RegressionHead):
        y2 = y_all.view(len(ids), -1)
        with torch.no_grad():
            head.target_mean.copy_(y2.mean(0))
            head.target_std.copy_(y2.std(0).clamp_min(1e-8))
    if supervised and cfg.warm_start_head:
        rng = np.random.default_rng(cfg.seed)
        sub = rng.permutation(len(ids))[: cfg.warm_start_examples].tolist()
        t0 = time.perf_counter()
        feats = tag_features(model, tag, [ids[i] for i in sub], cfg.batch_size, progress,
                             prefix=prefix, keys=sub)
        warm = warm_start_head(model, tag, feats, y_all[sub].numpy(), cfg.ridge_alpha)
        warm["seconds"] = round(time.perf_counter() - t0, 2)
        log(f"warm start of the {tag} head: ridge on {warm['examples']} frozen feature "
            f"vectors (alpha {warm['alpha']:.3g}) in {warm['seconds']} s")

    if after_warm_start is not None:
        after_warm_start()
        model.set_trainable([tag])
    params = model.trainable_parameters()
    tag_params = [model.bank.parameter(tag)]
    head_params = [p for p in params if all(p is not q for q in tag_params)]
    groups = [{"params": tag_params, "lr": cfg.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": cfg.head_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    batches = length_bucketed_batches([len(i) for i in ids], cfg.batch_size, cfg.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    pbar = bar(cfg.steps, f"training {tag}", progress, unit="step")
    for step in range(1, cfg.steps + 1):
        idx = next(batches)
        if prefix is not None:
            feats = prefix.tag_features(idx, [ids[i] for i in idx], tag)
            loss = head.loss(head(feats), y_all[idx].to(model.device))
        elif supervised:
            loss = model.head_loss(_batch(model, [ids[i] for i in idx]), tag, y_all[idx])
        else:
            loss = model.lm_loss(_batch(model, [ids[i] for i in idx]))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training {tag}: loss is {loss.item()} at step {step}")
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        pbar.update(1)
        pbar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"{tag} step {step}/{cfg.steps} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    pbar.close()
    model.set_trainable([])
    if prefix is not None:
        log(f"frozen prefix: {prefix.hits} cached / {prefix.misses} computed prefixes, "
            f"{prefix.used / 1e9:.2f} GB kept")
    return TrainResult(cfg.steps, time.perf_counter() - t0, losses, warm)
