"""One training loop for one or more tags (and their heads), the base model frozen.

``fit_tags`` trains the tags of one job on one or more data :class:`Part` s: parts without
targets train by next-token prediction, parts with targets train a function tag's
regression/classification head. Several parts are mixed within each batch by their weights
(joint training of several domains). Heads are first fitted in closed form on the frozen
features (ridge / logistic regression: "linear probe, then fine-tune"). With a checkpoint
folder the state is saved every ``checkpoint_every`` steps and on Ctrl-C, and a later call
resumes from it to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from tagllm.checkpoint import StopRequest, load_checkpoint, save_checkpoint
from tagllm.config import TrainConfig
from tagllm.distributed import World, world
from tagllm.heads import ClassificationHead, RegressionHead
from tagllm.model import Batch, TaggedModel
from tagllm.prefix import FrozenPrefix, supports_frozen_prefix
from tagllm.progress import bar, track
from tagllm.tags import pad_batch


@dataclass
class TrainResult:
    """What a training run did: steps, wall time, the loss curve and the warm start."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    warm_start: dict | None = None
    resumed_from: int = 0  # steps already done by an earlier, interrupted run
    after_warm_start: dict | None = None  # what the after_warm_start hook returned
    examples_per_process: list[int] = field(default_factory=list)  # by rank, this call

    @property
    def steps_run(self) -> int:
        """Optimizer steps taken by this call (0 when everything was done before)."""
        return self.steps - self.resumed_from

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
                 keys: Sequence | None = None) -> torch.Tensor:
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


@contextlib.contextmanager
def _activation_checkpointing(model: TaggedModel, enabled: bool):
    """Recompute layer activations in the backward pass of full-sequence steps.

    Hugging Face checkpoints a decoder layer only while it is in training mode; the layers
    alone are switched (their dropout submodules stay in eval mode, so a frozen model still
    computes deterministically), and everything is restored on exit.
    """
    if not enabled:
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.base
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support activation checkpointing")
    enable = getattr(base, "activation_checkpointing_enable", None) or \
        base.gradient_checkpointing_enable
    disable = getattr(base, "activation_checkpointing_disable", None) or \
        base.gradient_checkpointing_disable
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    enable()
    for layer in layers:
        layer.training = True  # not .train(): that would recurse into dropout modules
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
        disable()
        if hasattr(base, "disable_input_require_grads"):
            try:
                base.disable_input_require_grads()
            except AttributeError:  # no hook was registered
                pass


def _autocast(model: TaggedModel, cfg: TrainConfig):
    """``torch.autocast`` in the configured dtype, or nothing."""
    if cfg.autocast == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.autocast == "bf16" else torch.float16
    return torch.autocast(model.device.type, dtype=dtype)


def _quiet(msg: str) -> None:
    pass


def _seconds_since(t0: float) -> float:
    return time.perf_counter() - t0


@dataclass
class Part:
    """One data stream of a training job: texts, optional targets and a mixing weight.

    A part with ``targets`` trains the head of the one trained function tag in its texts; a
    part without trains every trained tag in its texts by next-token prediction.
    """

    texts: Sequence[str]
    targets: np.ndarray | None = None
    weight: float = 1.0
    name: str = ""


def mixed_batches(lengths: Sequence[Sequence[int]], weights: Sequence[float],
                  batch_size: int, seed: int) -> Iterator[list[tuple[int, list[int]]]]:
    """Endless batches that mix parts: each batch is a list of ``(part, indices)``.

    With one part this is :func:`length_bucketed_batches`. With several, each batch's
    ``batch_size`` slots are split between the parts by a multinomial draw with ``weights``
    and filled from each part's own length-bucketed stream, so consecutive indices of a
    part have similar lengths. Everything follows from ``seed``: replaying the generator
    reproduces the batches exactly (resume relies on it).
    """
    if len(lengths) == 1:
        for b in length_bucketed_batches(lengths[0], batch_size, seed):
            yield [(0, b)]
        return
    rng = np.random.default_rng([seed, len(lengths)])
    streams = [itertools.chain.from_iterable(length_bucketed_batches(ls, batch_size, seed + k))
               for k, ls in enumerate(lengths)]
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    while True:
        counts = rng.multinomial(batch_size, w)
        yield [(k, list(itertools.islice(streams[k], int(c))))
               for k, c in enumerate(counts) if c > 0]


def _head_tag(model: TaggedModel, tags: Sequence[str], text: str, where: str) -> str:
    """The one trained tag with a trainable head that occurs in ``text``."""
    present = {s for s, is_tag in model.tagtok.split(text) if is_tag}
    found = [t for t in tags if t in present and (h := model.head(t)) is not None
             and h.has_parameters]
    if not found:
        heads = [t for t in tags if (h := model.head(t)) is not None and h.has_parameters]
        raise ValueError(f"{where}: labelled inputs do not contain a trained function tag with "
                         f"a head ({heads or 'none is being trained'}); first input: "
                         f"{text[:80]!r}")
    if len(found) > 1:
        raise ValueError(f"{where}: labelled inputs contain several trained tags with heads "
                         f"({found}); give each its own data")
    return found[0]


def _sum_gradients(w: World, params: list[torch.nn.Parameter], loss: torch.Tensor,
                   stop: bool) -> list[float]:
    """Sum the gradients of ``params``, the loss and the stop flag over all processes in
    one all-reduce; returns [global loss, number of processes asking to stop]."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    extra = torch.tensor([float(loss.detach()), float(stop)], device=loss.device)
    if not w.distributed:
        return extra.tolist()
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra])
    w.sum_(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()
    return flat[offset:].tolist()


def _encode_parts(model: TaggedModel, tags: list[str], parts: Sequence[Part],
                  cfg: TrainConfig) -> tuple[list, list, list]:
    """Token ids, target tensors and the head-owning tag of each part, all checked."""
    ids: list[list[list[int]]] = []
    y: list[torch.Tensor | None] = []
    head_of: list[str | None] = []
    for k, part in enumerate(parts):
        where = part.name or f"part {k}"
        if not part.texts:
            raise ValueError(f"{where}: no training examples")
        ids.append([e.ids for e in model.tagtok.encode_batch(part.texts, cfg.max_length,
                                                             where=where)])
        if part.targets is None:
            head_of.append(None)
            y.append(None)
            continue
        tag = _head_tag(model, tags, part.texts[0], where)
        yk = torch.as_tensor(np.asarray(part.targets), dtype=torch.float32)
        if len(yk) != len(part.texts):
            raise ValueError(f"{where}: {len(part.texts)} texts but {len(yk)} targets")
        if not torch.isfinite(yk).all():
            raise ValueError(f"{where}: targets contain NaN or infinite values")
        head = model.head(tag)
        if isinstance(head, ClassificationHead):
            head.check_targets(yk, where)
        if isinstance(head, RegressionHead) and yk.numel() != len(yk) * head.num_outputs:
            raise ValueError(f"{where}: targets of shape {tuple(yk.shape)} for {len(yk)} texts "
                             f"and a head with {head.num_outputs} output(s)")
        model.head_positions(_batch(model, ids[k][:1]).input_ids, tag)  # the tag is present
        head_of.append(tag)
        y.append(yk)
    supervised = [t for t in head_of if t is not None]
    for t in tags:
        h = model.head(t)
        if h is not None and h.has_parameters and t not in head_of:
            raise ValueError(f"tag {t} has a {h.kind} head: training needs targets (a label "
                             "column)")
    if len(set(supervised)) != len(supervised):
        raise ValueError(f"two labelled parts train the same head: {supervised}")
    lm_tags = {t for k, p in enumerate(parts) if head_of[k] is None
               for t, is_tag in model.tagtok.split(p.texts[0]) if is_tag and t in tags}
    untouched = [t for t in tags if t not in lm_tags and t not in head_of]
    if untouched:
        raise ValueError(f"no training data contains {untouched}")
    return ids, y, head_of


def fit_tags(
    model: TaggedModel,
    tags: Sequence[str],
    parts: Sequence[Part],
    cfg: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    after_warm_start: Callable[[], dict | None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``tags`` (and their heads) jointly on ``parts``; every other parameter is frozen.

    ``after_warm_start`` runs once the heads have their closed-form fit, before the first
    gradient step (e.g. to evaluate "tags at initialisation + fitted head"); what it returns
    is kept in the checkpoint and in the result. With ``checkpoint_dir``, an existing
    checkpoint there is resumed (the caller must have set up the same tags and data).
    """
    cfg = cfg or TrainConfig()
    tags = list(tags)
    if not parts:
        raise ValueError(f"no training data for {tags}")
    w = world()
    if cfg.batch_size % w.size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {w.size} "
                         "processes (the global batch is split evenly)")
    if not w.is_main:  # one process reports
        progress, log = False, _quiet
    torch.manual_seed(cfg.seed)
    model.set_trainable(tags)
    ids, y, head_of = _encode_parts(model, tags, parts, cfg)
    supervised = [k for k, t in enumerate(head_of) if t is not None]

    prefix = None
    sharded = model.sharded
    if supervised and cfg.frozen_prefix and sharded:
        log(f"the base model is sharded (FSDP): training {', '.join(tags)} with "
            "full-sequence passes, which every process runs in step")
    elif supervised and cfg.frozen_prefix and not supports_frozen_prefix(model):
        log(f"{type(model.base).__name__} has sliding-window attention layers: training "
            f"{', '.join(tags)} with full-sequence passes (frozen-prefix training needs full "
            "attention)")
    elif supervised and cfg.frozen_prefix:
        prefix = FrozenPrefix(model, tags, budget_bytes=cfg.prefix_cache_gb * 1e9)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = load_checkpoint(ckpt, model, tags) if ckpt is not None else None
    warm: dict | None = None
    after: dict | None = None
    if state is None:
        warm = {}
        for k in supervised:
            warm[head_of[k]] = _warm_start(model, head_of[k], ids[k], y[k], cfg, progress, log,
                                           prefix, k)
        warm = warm or None
        if after_warm_start is not None:
            after = after_warm_start()
            model.set_trainable(tags)
    params = model.trainable_parameters()
    tag_params = [model.bank.parameter(t) for t in tags]
    head_params = [p for p in params if all(p is not q for q in tag_params)]
    groups = [{"params": tag_params, "lr": cfg.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": cfg.head_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    step0, losses = 0, []
    if state is not None:
        meta = state.restore(opt, sched)
        step0, losses = meta["step"], list(meta["losses"])
        warm, after = meta.get("warm_start"), meta.get("after_warm_start")
        log(f"resuming {', '.join(tags)} at step {step0}/{cfg.steps} from {ckpt}")
    batches = mixed_batches([[len(i) for i in part] for part in ids],
                            [p.weight for p in parts], cfg.batch_size, cfg.seed)
    for _ in range(step0):  # replay the data order up to where the checkpoint stopped
        next(batches)

    def checkpoint(step: int) -> None:
        if w.is_main:  # one writer; the others wait until the state is on disk
            save_checkpoint(ckpt, model, tags, opt, sched, {
                "step": step, "losses": losses, "warm_start": warm, "after_warm_start": after,
                "train": cfg.to_dict(), "processes": w.size})
        w.barrier()

    t0 = time.perf_counter()
    examples = 0  # seen by this process
    pbar = bar(cfg.steps, f"training {', '.join(tags)}", progress, unit="step")
    pbar.update(step0)
    vocab = model.bank.vocab_rows
    # LM losses count only the tokens after a trained tag: the earlier ones give it no
    # gradient (e.g. the source sentence before <Translate>)
    after_set = {v for t in tags for v in model.bank.virtual_ids(t)}
    after_ids = torch.tensor(sorted(after_set))
    # Ctrl-C / SIGTERM finish the current step, save a checkpoint, then stop (all processes
    # at the same step: the request travels with the gradients).
    with StopRequest() as stop:
        try:
            for step in range(step0 + 1, cfg.steps + 1):
                items = [(k, i) for k, idx in next(batches) for i in idx]  # the global batch
                n_part = [sum(1 for kk, _ in items if kk == k) for k in range(len(parts))]
                mine: dict[int, list[int]] = {}
                for k, i in w.shard(items):
                    mine.setdefault(k, []).append(i)
                examples += sum(len(v) for v in mine.values())
                idle = []  # parts with no example here but some elsewhere in this batch
                if sharded:  # every process runs one forward per part of the global batch
                    idle = [k for k in range(len(parts)) if n_part[k] and k not in mine]
                    for k in idle:  # a stand-in example whose loss counts zero
                        mine[k] = [next(i for kk, i in items if kk == k)]
                # next-token targets of each LM part over all processes: the loss is the
                # global token mean whatever the split
                targets = torch.zeros(len(parts), dtype=torch.float64)
                for k, idx in mine.items():
                    if head_of[k] is None and k not in idle:
                        targets[k] = sum(_lm_target_count(ids[k][i], after_set, vocab)
                                         for i in idx)
                w.sum_(targets)
                loss = torch.zeros((), device=model.device)
                with _autocast(model, cfg):
                    for k, idx in sorted(mine.items()):  # same part order everywhere
                        batch_ids = [ids[k][i] for i in idx]
                        tag = head_of[k]
                        if tag is None:
                            with _activation_checkpointing(model, cfg.activation_checkpointing):
                                part_loss = model.lm_loss(
                                    _batch(model, batch_ids), reduction="sum",
                                    after=after_ids) / max(targets[k].item(), 1.0)
                        else:
                            if prefix is not None:
                                feats = prefix.tag_features([(k, i) for i in idx], batch_ids,
                                                            tag)
                                head = model.head(tag)
                                mean = head.loss(head(feats), y[k][idx].to(model.device))
                            else:
                                with _activation_checkpointing(model,
                                                               cfg.activation_checkpointing):
                                    mean = model.head_loss(_batch(model, batch_ids), tag,
                                                           y[k][idx])
                            part_loss = mean * (len(idx) / n_part[k])  # this share of the mean
                        if k in idle:
                            part_loss = part_loss * 0.0
                        loss = loss + part_loss * (n_part[k] / cfg.batch_size)  # mix by share
                loss.backward()
                loss_value = _sum_gradients(w, params, loss, stop.requested is not None)
                if not math.isfinite(loss_value[0]):
                    raise FloatingPointError(f"training {tags}: loss is {loss_value[0]} at "
                                             f"step {step}")
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss_value[0])
                pbar.update(1)
                pbar.set_postfix(loss=f"{losses[-1]:.4f}")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log(f"{', '.join(tags)} step {step}/{cfg.steps} loss "
                        f"{np.mean(losses[-cfg.log_every:]):.4f} ({_seconds_since(t0):.0f} s)")
                if step == cfg.steps:
                    break
                # a stop request on any process (alone, a process needs no collective)
                stopping = loss_value[1] > 0 or (stop.requested is not None and not w.distributed)
                if ckpt is not None and (stopping or (
                        cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    checkpoint(step)
                if stopping:
                    why = stop.requested or "a stop request on another process"
                    where = f"; saved step {step} to {ckpt}, run again to resume" if ckpt else ""
                    log(f"stopped by {why} at step {step}/{cfg.steps}{where}")
                    raise KeyboardInterrupt
        finally:
            pbar.close()
    model.set_trainable([])
    if prefix is not None:
        log(f"frozen prefix: {prefix.hits} cached / {prefix.misses} computed prefixes, "
            f"{prefix.used / 1e9:.2f} GB kept")
    per_process = w.gather_object(examples)
    return TrainResult(cfg.steps, _seconds_since(t0), losses, warm, step0, after, per_process)


def _lm_target_count(seq: Sequence[int], after: set[int], vocab: int) -> int:
    """How many tokens of ``seq`` are LM targets: base tokens after one of ``after``."""
    seen, n = False, 0
    for j, t in enumerate(seq):
        if j and seen and t < vocab:
            n += 1
        seen = seen or t in after
    return n


def _warm_start(model: TaggedModel, tag: str, ids: list[list[int]], y: torch.Tensor,
                cfg: TrainConfig, progress: bool, log: Callable[[str], None],
                prefix: FrozenPrefix | None, part: int) -> dict | None:
    """Set a head's target statistics and, if enabled, fit it in closed form."""
    head = model.head(tag)
    if isinstance(head, RegressionHead):
        y2 = y.view(len(ids), -1)
        with torch.no_grad():
            head.target_mean.copy_(y2.mean(0))
            head.target_std.copy_(y2.std(0).clamp_min(1e-8) if len(y2) > 1
                                  else torch.ones_like(y2[0]))
    if not cfg.warm_start_head:
        return None
    rng = np.random.default_rng(cfg.seed)
    sub = rng.permutation(len(ids))[: cfg.warm_start_examples].tolist()
    t0 = time.perf_counter()
    w = world()  # each process computes a share of the features; one all-reduce joins them
    mine, real = w.share(len(sub))
    local = tag_features(model, tag, [ids[sub[j]] for j in mine], cfg.batch_size, progress,
                         prefix=prefix, keys=[(part, sub[j]) for j in mine])
    feats = w.gather_rows(local, mine, real, len(sub)).float()
    warm = warm_start_head(model, tag, feats, y[sub].numpy(), cfg.ridge_alpha)
    warm["seconds"] = round(_seconds_since(t0), 2)
    log(f"warm start of the {tag} head: closed form on {warm['examples']} frozen feature "
        f"vectors (alpha {warm['alpha']:.3g}) in {warm['seconds']} s")
    return warm


def fit_tag(
    model: TaggedModel,
    tag: str,
    texts: Sequence[str],
    targets: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    after_warm_start: Callable[[], dict | None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train one tag (and its head) on ``texts``: :func:`fit_tags` with a single part."""
    return fit_tags(model, [tag], [Part(list(texts), targets)], cfg, progress, log,
                    after_warm_start, checkpoint_dir)
