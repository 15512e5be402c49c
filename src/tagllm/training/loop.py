"""One training loop for the tags of one job (and their heads), the base model frozen.

``fit_tags`` reads top to bottom as litgpt's fine-tuning scripts do: :func:`setup` checks and
encodes the data and fixes everything the run needs (a :class:`Job`); :func:`start` resumes
a checkpoint or warm-starts the heads in closed form; :func:`fit` runs
:func:`train_step` s in the step loop every trainer shares
(:func:`tagllm.training.steps.run_steps`: validation, early stopping, the best step kept),
with checkpoints and a clean stop on Ctrl-C / SIGTERM. Parts without
targets train by next-token prediction, parts with targets train a function tag's head;
several parts are mixed within each batch by their weights (joint training). A resumed run
ends with the same tags as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from tagllm.checkpoint import (
    CheckpointError,
    CheckpointState,
    StopRequest,
    load_checkpoint,
    put_tag_tensors,
    save_checkpoint,
    tag_tensors,
)
from tagllm.config import TrainConfig
from tagllm.costs import phase
from tagllm.distributed import World, world
from tagllm.errors import ConfigError, DataError, TrainingError
from tagllm.model import TaggedModel
from tagllm.paths import prefix_cache_dir
from tagllm.prefix import FrozenPrefix, supports_frozen_prefix
from tagllm.progress import bar
from tagllm.records import JSONObject
from tagllm.tracking import Tracker
from tagllm.training.batching import (
    Encoded,
    Part,
    carve_validation,
    collate,
    encode_parts,
    lm_target_count,
    mixed_batches,
)
from tagllm.training.readout import choose_readout
from tagllm.training.seen import SeenWindow
from tagllm.training.steps import (
    LoopConfig,
    LoopState,
    Trainee,
    apply_step,
    build_optimizer,
    keep_best,
    record_validation,
    run_steps,
)
from tagllm.training.steps import kept_step as _kept_step
from tagllm.training.warm_start import autocast as _autocast
from tagllm.training.warm_start import (
    warm_start,
    warm_start_features,
    warm_start_head,
    warm_start_rows,
)

Log = Callable[[str], None]


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
    #: validation losses: [{"step", "train_loss" (mean since the previous point),
    #: "validation_loss"}], step 0 = before the first gradient step
    curve: list[dict] = field(default_factory=list)
    best_step: int | None = None  # the step with the lowest validation loss
    validation_rows: list[int] = field(default_factory=list)  # per part
    #: refit_head: {"validation_loss_before", "validation_loss_after", "kept"}
    refit: dict | None = None
    #: the step whose tags were kept: best_step with select="best", else the last step
    kept_step: int | None = None
    #: patience: the run stopped before ``steps`` (``steps`` is then the last step taken)
    stopped_early: bool = False
    refits: int = 0  # closed-form re-fits of the heads during training (refit_every)

    @property
    def steps_run(self) -> int:
        """Optimizer steps taken by this call (0 when everything was done before)."""
        return self.steps - self.resumed_from

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return float(np.mean(tail)) if tail else math.nan


@dataclass
class Job:
    """Everything one training call fixes before its first step."""

    model: TaggedModel
    tags: list[str]
    cfg: TrainConfig
    data: Encoded
    val: Encoded | None  # validation rows carved from the training data
    val_rows: list[int]  # validation rows of each part
    prefix: FrozenPrefix | None  # frozen-prefix training of the heads, or full passes
    world: World
    ckpt: Path | None
    log: Log
    progress: bool
    tracker: Tracker | None = None  # TensorBoard scalars (tagllm.tracking)
    #: what a caller adds to each validation point (a diagnostic), given the step
    on_validation: Callable[[int], JSONObject] | None = None

    @cached_property
    def after_ids(self) -> set[int]:
        """Virtual ids of the trained tags: LM losses count only the tokens after one (the
        earlier ones, e.g. the source sentence before <Translate>, give them no gradient)."""
        return {v for t in self.tags for v in self.model.bank.virtual_ids(t)}

    @cached_property
    def after_tensor(self) -> torch.Tensor:
        """:attr:`after_ids` as the sorted id tensor that ``lm_loss`` takes."""
        return torch.tensor(sorted(self.after_ids))


@dataclass
class State(LoopState):
    """What changes from step to step (the loop's :class:`LoopState`: step, losses, curve,
    best step and its tags and heads), and what a checkpoint keeps of it."""

    warm: dict | None = None
    after: dict | None = None
    resumed_from: int = 0
    examples: int = 0  # seen by this process in this call
    saved: int = 0  # the step of the last checkpoint this call wrote or resumed (0: none)
    seen: dict[int, SeenWindow] = field(default_factory=dict)  # refit_rows: seen, by part


@contextlib.contextmanager
def activation_checkpointing(model: TaggedModel, enabled: bool):
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
        raise ConfigError(f"{type(base).__name__} does not support activation "
                          "checkpointing")
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


def _sum_gradients(w: World, params: list[torch.nn.Parameter], loss: torch.Tensor,
                   stop: bool) -> tuple[float, float]:
    """Sum the gradients of ``params``, the loss and the stop flag over all processes in
    one all-reduce; returns (global loss, number of processes asking to stop)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    extra = torch.tensor([float(loss.detach()), float(stop)], device=loss.device)
    if not w.distributed:
        return extra[0].item(), extra[1].item()
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra])
    w.sum_(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()
    return flat[offset].item(), flat[offset + 1].item()


def _quiet(msg: str) -> None:
    pass


def setup(model: TaggedModel, tags: Sequence[str], parts: Sequence[Part], cfg: TrainConfig,
          progress: bool, log: Log, checkpoint_dir: str | Path | None,
          prefix: FrozenPrefix | None = None, tracker: Tracker | None = None) -> Job:
    """Check the job, make exactly ``tags`` trainable, encode the data, and choose how the
    heads train (frozen-prefix or full-sequence passes; ``prefix``: a cache to reuse)."""
    if prefix is not None and prefix.model is not model:
        raise ConfigError("the frozen-prefix cache passed to training belongs to another model")
    tags = list(tags)
    if not parts:
        raise DataError(f"no training data for {tags}")
    w = world()
    if cfg.batch_size % w.size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {w.size} "
                          "processes (the global batch is split evenly)")
    if not w.is_main:  # one process reports
        progress, log = False, _quiet
    torch.manual_seed(cfg.seed)
    model.set_trainable(tags)
    encoded = encode_parts(model, tags, parts, cfg.max_length)
    data, val, val_rows = carve_validation(encoded, cfg.validation, cfg.seed)
    if val is not None:
        how = [("given rows" if encoded.val_rows[k] is not None else
                "whole groups" if encoded.groups[k] is not None else "random rows")
               + (f", {n - len(t) - v} rows sharing groups with both sides left out"
                  if n - len(t) - v else "")
               for k, (n, t, v) in enumerate(zip(map(len, encoded.ids), data.ids, val_rows,
                                                 strict=True))]
        log(f"validation: {sum(val_rows)} rows held out ({'; '.join(how)}; fraction "
            f"{cfg.validation:g}, seed {cfg.seed})")
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    return Job(model, tags, cfg, data, val, val_rows,
               _frozen_prefix(model, tags, data, cfg, log, prefix), w, ckpt, log, progress,
               tracker)


def _frozen_prefix(model: TaggedModel, tags: list[str], data: Encoded, cfg: TrainConfig,
                   log: Log, reuse: FrozenPrefix | None = None) -> FrozenPrefix | None:
    """The frozen-prefix path for labelled parts, where the model allows it (``reuse``: an
    earlier call's cache, retargeted to ``tags``)."""
    if not data.supervised:
        return None
    return frozen_prefix(model, tags, cfg, log, reuse)


def frozen_prefix(model: TaggedModel, tags: list[str], cfg: TrainConfig, log: Log = print,
                  reuse: FrozenPrefix | None = None, dtype: torch.dtype | None = None
                  ) -> FrozenPrefix | None:
    """A frozen-prefix cache for training ``tags`` with ``cfg`` (its budgets; its dtype
    unless ``dtype`` is given), or None where the settings or the model rule it out (then
    full-sequence passes)."""
    if not cfg.frozen_prefix:
        return None
    if model.sharded:
        log(f"the base model is sharded (FSDP): training {', '.join(tags)} with "
            "full-sequence passes, which every process runs in step")
        return None
    if not supports_frozen_prefix(model):
        log(f"{type(model.base).__name__} has sliding-window attention layers: training "
            f"{', '.join(tags)} with full-sequence passes (frozen-prefix training needs full "
            "attention)")
        return None
    if reuse is not None:
        reuse.retarget(tags)
        return reuse
    return FrozenPrefix(model, tags, budget_bytes=cfg.prefix_cache_gb * 1e9,
                        dtype=dtype or getattr(torch, cfg.prefix_cache_dtype),
                        disk_bytes=cfg.prefix_cache_disk_gb * 1e9, disk_dir=prefix_cache_dir())


def stage_prefixes(model: TaggedModel, tags: list[str], cfg: TrainConfig, supervised: bool,
                   log: Log = print) -> tuple[FrozenPrefix | None, FrozenPrefix | None]:
    """The frozen-prefix caches of a stage that trains ``tags``: the training rows' (filled
    by the warm start, in ``cfg.prefix_cache_dtype``; None without a head to train, or where
    :func:`frozen_prefix` rules it out) and the test rows' (filled by the ablation, reused
    by the final evaluation). The test rows' is always float32 and used outside autocast,
    so a stage scores its test rows exactly as ``tagllm evaluate`` does: it is the training
    one when that one is exact already, else its own."""
    train = frozen_prefix(model, tags, cfg, log) if supervised else None
    exact = train is None or (train.dtype == torch.float32 and cfg.autocast == "no")
    return train, train if exact else frozen_prefix(model, tags, cfg, log, dtype=torch.float32)


def start(job: Job, after_warm_start: Callable[[], dict | None] | None
          ) -> tuple[State, CheckpointState | None]:
    """A checkpoint to resume (its tag values already in the model), or a fresh state whose
    heads are warm-started in closed form, after which ``after_warm_start`` runs once."""
    saved = load_checkpoint(job.ckpt, job.model, job.tags, lambda meta: _restore_readouts(
        job, meta)) if job.ckpt is not None else None
    if saved is not None:
        return State(), saved
    d = job.data
    readouts = {d.head_of[k]: _choose_readout(job, k) for k in d.supervised
                if job.model.bank.configs[d.head_of[k]].head.auto}
    seen: dict[int, SeenWindow] = {}
    keep = _seen_rows(job)
    warm = {d.head_of[k]: warm_start(
        job.model, d.head_of[k], d.ids[k], d.targets[k], job.cfg, job.progress, job.log,
        job.prefix, (lambda f, rows, k=k: seen.__setitem__(k, SeenWindow.start(f, rows)))
        if keep else None) for k in d.supervised}
    for tag, choice in readouts.items():
        warm[tag]["readout"] = choice
    state = State(warm=warm or None, seen=seen)
    if after_warm_start is not None:
        state.after = after_warm_start()
        job.model.set_trainable(job.tags)
    return state, None


def _restore_readouts(job: Job, meta: dict) -> None:
    """Before a checkpoint's head tensors load: the readouts they were chosen with."""
    for tag, w in (meta.get("warm_start") or {}).items():
        r = w.get("readout") if isinstance(w, dict) else None
        if not r or tag not in job.tags:
            continue
        layer, pool = r.get("layer"), r.get("pool")
        if not (layer == -1 or (isinstance(layer, int) and 1 <= layer <= job.model.num_layers)) \
                or pool not in ("tag", "tag+mean"):
            raise CheckpointError(f"{job.ckpt}: tag {tag}'s recorded readout {r!r:.80} is "
                                  "not a layer of this model and a pool")
        job.model.set_readout(tag, layer, pool == "tag+mean")


def _choose_readout(job: Job, k: int) -> dict:
    """``readout_layer`` / ``pool`` 'auto' of part ``k``'s head: chosen in closed form on
    the warm-start rows against the part's validation rows (:mod:`tagllm.training.readout`)."""
    d, v, tag = job.data, job.val, job.data.head_of[k]
    if v is None or not v.ids[k] or not job.cfg.warm_start_head:
        raise ConfigError(f"tag {tag}: readout 'auto' is chosen on validation rows with "
                          "closed-form fits: it needs validation > 0 and warm_start_head")
    sub = warm_start_rows(len(d.ids[k]), job.cfg)
    with phase("readout choice"), _autocast(job.model, job.cfg):
        return choose_readout(job.model, tag, [d.ids[k][i] for i in sub], d.targets[k][sub],
                              v.ids[k], v.targets[k], job.cfg.ridge_alpha,
                              job.cfg.batch_size, job.prefix, job.log)


def make_optimizer(job: Job) -> tuple[torch.optim.Optimizer, object, list]:
    """AdamW or Adafactor with one learning rate for the tags and one for the heads, and a
    linear warm-up followed by a cosine or linear decay, or a constant rate."""
    cfg = job.cfg
    params = job.model.trainable_parameters()
    tag_params = [p for t in job.tags for p in job.model.bank.tag_parameters(t)]
    head_params = [p for p in params if all(p is not q for q in tag_params)]
    opt, sched = build_optimizer([(tag_params, cfg.lr), (head_params, cfg.head_lr)],
                                 cfg.steps, cfg.optimizer, cfg.schedule, cfg.warmup_steps,
                                 cfg.weight_decay)
    return opt, sched, params


def resume(job: Job, saved: CheckpointState, opt: torch.optim.Optimizer, sched) -> State:
    """The state of an interrupted run, with its optimizer, scheduler and RNG restored."""
    meta = saved.restore(opt, sched)
    job.log(f"resuming {', '.join(job.tags)} at step {meta['step']}/{job.cfg.steps} from "
            f"{job.ckpt}")
    best = {k[len("best."):]: v for k, v in saved.tensors.items() if k.startswith("best.")}
    return State(step=meta["step"], losses=list(meta["losses"]), warm=meta.get("warm_start"),
                 after=meta.get("after_warm_start"), resumed_from=meta["step"],
                 curve=list(meta.get("curve", [])), best=meta.get("best"), best_tensors=best,
                 saved=meta["step"], seen=_resumed_windows(job, saved.tensors))


def _seen_rows(job: Job) -> bool:
    return bool(job.cfg.refit_every) and job.cfg.refit_rows == "seen"


def _resumed_windows(job: Job, tensors: dict[str, torch.Tensor]) -> dict[int, SeenWindow]:
    """``refit_rows: seen``: each head's window from the checkpoint, checked against this
    run's rows and features; rebuilt from a pass over the warm-start rows with the current
    tags where the checkpoint has none (it was written with another ``refit_rows``)."""
    if not _seen_rows(job):
        return {}
    d, out = job.data, {}
    for k in d.supervised:
        tag = d.head_of[k]
        try:
            w = SeenWindow.from_tensors(tensors, f"seen.{tag}")
        except ValueError as e:
            raise CheckpointError(f"{job.ckpt}: {e}") from None
        n = min(job.cfg.warm_start_examples, len(d.ids[k]))
        if w is not None and (len(w.rows) != n or int(w.rows.max()) >= len(d.ids[k])
                              or w.features.shape[1] != job.model.feature_size(tag)):
            raise CheckpointError(
                f"{job.ckpt}: the seen features of {tag} ({tuple(w.features.shape)}, rows up "
                f"to {int(w.rows.max())}) do not fit this run's {len(d.ids[k])} rows, "
                f"{n} warm-start rows and {job.model.feature_size(tag)} features")
        if w is None:
            job.log(f"{job.ckpt}: no seen features of {tag} in the checkpoint; starting them "
                    f"from a pass over the {n} warm-start rows with the current tags")
            with phase("refit"):
                w = SeenWindow.start(*warm_start_features(job.model, tag, d.ids[k], job.cfg,
                                                          False, job.prefix))
        out[k] = w
    return out


def fit_tags(
    model: TaggedModel,
    tags: Sequence[str],
    parts: Sequence[Part],
    cfg: TrainConfig | None = None,
    progress: bool = True,
    log: Log = print,
    after_warm_start: Callable[[], dict | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    prefix: FrozenPrefix | None = None,
    tracker: Tracker | None = None,
    on_validation: Callable[[int], JSONObject] | None = None,
) -> TrainResult:
    """Train ``tags`` (and their heads) jointly on ``parts``; every other parameter is frozen.

    ``after_warm_start`` runs once the heads have their closed-form fit, before the first
    gradient step (e.g. to evaluate "tags at initialisation + fitted head"); what it returns
    is kept in the checkpoint and in the result. With ``checkpoint_dir``, an existing
    checkpoint there is resumed (the caller must have set up the same tags and data).
    ``prefix``: a frozen-prefix cache from an earlier call on the same model, reused (a sweep
    over tags, seeds or learning rates on the same inputs computes each prefix once).
    ``tracker``: where the step losses, learning rates and validation losses also go.
    ``on_validation(step)``: entries added to each validation point of the curve (what a
    research script measures beside the loss, e.g. how far the tag moved).
    """
    job = setup(model, tags, parts, cfg or TrainConfig(), progress, log, checkpoint_dir,
                prefix, tracker)
    job.on_validation = on_validation
    state, saved = start(job, after_warm_start)
    opt, sched, params = make_optimizer(job)
    if saved is not None:
        state = resume(job, saved, opt, sched)
    t0 = time.perf_counter()
    with phase("training"):
        fit(job, state, opt, sched, params)
        if keep_best(loop_config(job.cfg), state,
                     lambda values: put_tag_tensors(model, job.tags, values)):
            job.log(f"kept {', '.join(job.tags)} of step {state.best['step']}/{job.cfg.steps}, "
                    f"the lowest validation loss ({state.best['loss']:.4f}"
                    + ("; step 0 is before any gradient step)" if state.best["step"] == 0
                       else ")"))
        refit = refit_heads(job)
    model.set_trainable([])
    if job.prefix is not None:
        p = job.prefix
        job.log(f"frozen prefix: {p.hits} cached / {p.misses} computed prefixes, "
            f"{p.used / 1e9:.2f} GB kept in memory"
            + (f", {p.disk_used / 1e9:.2f} GB on disk" if p.disk_used else ""))
    return TrainResult(state.step, time.perf_counter() - t0, state.losses, state.warm,
                       state.resumed_from, state.after, job.world.gather_object(state.examples),
                       state.curve, state.best["step"] if state.best else None, job.val_rows,
                       refit, _kept_step(loop_config(job.cfg), state, job.val is not None),
                       state.stopped_early,
                       state.step // job.cfg.refit_every if job.cfg.refit_every else 0)


def loop_config(cfg: TrainConfig) -> LoopConfig:
    return LoopConfig(cfg.steps, cfg.eval_every, cfg.patience, cfg.select)


def fit(job: Job, state: State, opt: torch.optim.Optimizer, sched, params: list) -> None:
    """The loop: a step per global batch from ``state.step`` on, a log line every
    ``log_every`` steps, a checkpoint every ``checkpoint_every`` steps and on a stop request
    (Ctrl-C / SIGTERM on any process, honoured by all at the same step)."""
    cfg, d = job.cfg, job.data
    batches = mixed_batches([[len(i) for i in part] for part in d.ids], d.weights,
                            cfg.batch_size, cfg.seed)
    for _ in range(state.step):  # replay the data order up to where the checkpoint stopped
        next(batches)
    t0 = time.perf_counter()
    pbar = bar(cfg.steps, f"training {', '.join(job.tags)}", job.progress, unit="step")
    pbar.update(state.step)
    tags = ", ".join(job.tags)
    stop = StopRequest()
    stops = 0

    def step(n: int) -> float:
        nonlocal stops
        loss, stops = train_step(job, state, next(batches), params, opt, sched,
                                 stop.requested is not None)
        return loss

    def after_step(n: int, loss: float) -> None:
        if job.tracker is not None:  # lr after this step's scheduler update
            lrs = [g["lr"] for g in opt.param_groups]
            job.tracker.log({"train/loss": loss, "train/lr": lrs[0],
                             **({"train/head_lr": lrs[1]} if len(lrs) > 1 else {})}, n)
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss:.4f}")
        if cfg.refit_every and n % cfg.refit_every == 0:
            refit_during_training(job, state)

    def on_validation(point: dict) -> None:
        if job.on_validation is not None:
            point.update(job.on_validation(point["step"]))
        if job.tracker is not None:
            job.tracker.log({"validation/loss": point["validation_loss"]}, point["step"])
        best = f"best {state.best['loss']:.4f} at step {state.best['step']}" \
            if state.best else "none finite yet"
        job.log(f"{tags} step {point['step']}/{cfg.steps} validation loss "
                f"{point['validation_loss']:.4f} ({best})")

    def end_of_step(n: int) -> None:
        if n % cfg.log_every == 0 or n == cfg.steps:
            job.log(f"{tags} step {n}/{cfg.steps} loss "
                    f"{np.mean(state.losses[-cfg.log_every:]):.4f} "
                    f"({time.perf_counter() - t0:.0f} s)")
        if n < cfg.steps:
            # alone, a process needs no collective to see its own stop request
            stopping = stops > 0 or (stop.requested is not None
                                     and not job.world.distributed)
            checkpoint_or_stop(job, state, opt, sched, stopping, stop.requested)

    def stopped(state: LoopState) -> None:  # the curve is in the checkpoint, so a
        since = sum(1 for c in state.curve  # resumed run stops where an unbroken one does
                    if c["step"] > state.best["step"])
        job.log(f"{tags}: no lower validation loss in {since} validation points since "
                f"step {state.best['step']}; stopped early at step {state.step}/"
                f"{cfg.steps} (patience {cfg.patience})")

    def validate() -> float:
        with phase("validation"):
            return validation_loss(job)

    t = Trainee(step, validate if job.val is not None else None,
                snapshot=lambda: tag_tensors(job.model, job.tags),
                restore=lambda values: put_tag_tensors(job.model, job.tags, values),
                after_step=after_step, on_validation=on_validation,
                end_of_step=end_of_step)
    try:
        if state.step == 0:  # step 0 (the untrained start) before Ctrl-C is a request
            record_validation(loop_config(cfg), t, state)
        with stop:
            run_steps(loop_config(cfg), t, state, stopped)
    finally:
        pbar.close()


def refit_during_training(job: Job, state: State) -> None:
    """``refit_every``: fit every head again in closed form, so the head follows the
    features the tag moves: on the current tags' features of the warm-start rows, or
    (``refit_rows: seen``) on the last rows' features as their steps computed them."""
    d = job.data
    with phase("refit"):
        if job.cfg.refit_rows != "seen":
            fit_heads(job, False, _quiet)
            return
        for k in d.supervised:
            w = state.seen[k]
            warm_start_head(job.model, d.head_of[k], w.features, d.targets[k][w.rows].numpy(),
                            job.cfg.ridge_alpha)


def fit_heads(job: Job, progress: bool, log: Log) -> None:
    """Fit every trained head in closed form on the current tags' features of its part's
    warm-start rows (the warm start's own fit)."""
    d = job.data
    for k in d.supervised:
        warm_start(job.model, d.head_of[k], d.ids[k], d.targets[k], job.cfg, progress, log,
                   job.prefix)


def checkpoint_or_stop(job: Job, state: State, opt: torch.optim.Optimizer, sched,
                       stopping: bool, why: str | None) -> None:
    """Save a checkpoint when one is due or a stop is requested; then stop if requested."""
    every = job.cfg.checkpoint_every
    if job.ckpt is not None and (stopping or (every and state.step % every == 0)):
        if job.world.is_main:  # one writer; the others wait until the state is on disk
            save_checkpoint(job.ckpt, job.model, job.tags, opt, sched, {
                "step": state.step, "losses": state.losses, "warm_start": state.warm,
                "after_warm_start": state.after, "train": job.cfg.to_dict(),
                "processes": job.world.size, "curve": state.curve, "best": state.best},
                extra={**{f"best.{k}": v for k, v in state.best_tensors.items()},
                       **{n: t for k, w in state.seen.items()
                          for n, t in w.tensors(f"seen.{job.data.head_of[k]}").items()}})
        state.saved = state.step
        job.world.barrier()
    if stopping:
        where = f"; saved step {state.step} to {job.ckpt}, run again to resume" \
            if job.ckpt else ""
        job.log(f"stopped by {why or 'a stop request on another process'} at step "
                f"{state.step}/{job.cfg.steps}{where}")
        raise KeyboardInterrupt


def refit_heads(job: Job) -> dict | None:
    """With ``refit_head``: re-fit every head in closed form on the kept tags' features of
    the warm-start rows (the head can lag its moving features: docs/findings.md), and keep
    the re-fit only if the validation loss drops."""
    d = job.data
    if not job.cfg.refit_head or job.val is None or not d.supervised:
        return None
    before = validation_loss(job)
    saved = tag_tensors(job.model, job.tags)
    fit_heads(job, job.progress, job.log)
    after = validation_loss(job)
    kept = math.isfinite(after) and after < before
    if not kept:
        put_tag_tensors(job.model, job.tags, saved)
    job.log(f"re-fitted head(s) of {', '.join(job.tags)}: validation loss {before:.4f} -> "
            f"{after:.4f}, {'kept' if kept else 'not kept'}")
    return {"validation_loss_before": before, "validation_loss_after": after, "kept": kept}


@torch.no_grad()
def validation_loss(job: Job, batch_size: int | None = None) -> float:
    """The training objective on the validation rows, with the parts mixed by their
    weights: each LM part's mean over its predicted tokens, each head's mean loss. Every
    process computes it on all rows (the same number everywhere, also when sharded)."""
    m, d = job.model, job.val
    bs = batch_size or job.cfg.batch_size
    w = np.asarray(d.weights, dtype=float) / sum(d.weights)
    total = 0.0
    with _autocast(m, job.cfg):
        for k, ids in enumerate(d.ids):
            if not ids:
                continue
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            tag, num, den = d.head_of[k], 0.0, 0.0
            for s in range(0, len(ids), bs):
                idx = order[s:s + bs]
                rows = [ids[i] for i in idx]
                if tag is None:
                    num += m.lm_loss(collate(m, rows), reduction="sum",
                                     after=job.after_tensor).item()
                    den += sum(lm_target_count(r, job.after_ids, m.bank.vocab_rows)
                               for r in rows)
                    continue
                head = m.head(tag)
                feats = job.prefix.tag_features(rows, tag) \
                    if job.prefix is not None else m.tag_features(collate(m, rows), tag)
                num += head.loss(head(feats), d.targets[k][idx].to(m.device)).item() * len(idx)
                den += len(idx)
            total += w[k] * num / max(den, 1.0)
    return float(total)


def train_step(job: Job, state: State, batch: list[tuple[int, list[int]]], params: list,
               opt: torch.optim.Optimizer, sched, stop: bool) -> tuple[float, float]:
    """One optimizer step on this process's share of a global batch; returns the global
    loss and how many processes asked to stop."""
    items = [(k, i) for k, idx in batch for i in idx]  # the global batch
    mine, idle, n_part = _local_share(job, items, state)
    counts = _lm_token_counts(job, mine, idle)
    loss = torch.zeros((), device=job.model.device)
    parts: dict[int, torch.Tensor] = {}
    feats: dict[int, torch.Tensor] = {}
    with _autocast(job.model, job.cfg):
        for k, idx in sorted(mine.items()):  # the same part order on every process
            part_loss, feats[k] = _part_loss(job, k, idx, counts[k].item(), n_part[k])
            if k in idle:
                part_loss = part_loss * 0.0
                del feats[k]
            parts[k] = part_loss.detach()
            loss = loss + part_loss * (n_part[k] / job.cfg.batch_size)  # mix by share
    if state.seen:
        _record_seen(job, state, items, feats)
    loss.backward()
    value, stops = _sum_gradients(job.world, params, loss, stop)
    if not math.isfinite(value):
        raise TrainingError(_non_finite(job, state, value, mine, parts))
    apply_step(params, opt, sched, job.cfg.max_grad_norm)
    return value, stops


def _non_finite(job: Job, state: State, value: float, mine: dict[int, list[int]],
                parts: dict[int, torch.Tensor]) -> str:
    """What a non-finite loss stops: the step, the data entries (and rows) of the batch
    whose loss is not finite, and what is kept (no update was applied)."""
    d = job.data
    bad = [k for k, v in parts.items() if not torch.isfinite(v)] or list(parts)
    where = "; ".join(
        f"{d.names[k]} rows {', '.join(str(d.rows[k][i]) for i in sorted(mine[k])[:8])}"
        + (" …" if len(mine[k]) > 8 else "") for k in bad) or "another process's rows"
    kept = (f"the last good checkpoint (step {state.saved}) is kept in {job.ckpt}"
            if job.ckpt is not None and state.saved else "no checkpoint had been saved yet")
    return (f"training {', '.join(job.tags)}: the loss is {value} at step {state.step + 1}/"
            f"{job.cfg.steps} on {where} (rows counted from 0 among the entry's rendered "
            f"rows). Training stopped before applying the step; {kept}. Lower lr "
            f"({job.cfg.lr:g}) or head_lr ({job.cfg.head_lr:g}), or check those rows.")


def _local_share(job: Job, items: list[tuple[int, int]], state: State
                 ) -> tuple[dict[int, list[int]], list[int], list[int]]:
    """This process's examples by part, the parts it only stands in for (a sharded model
    needs every process to run one forward per part of the global batch; a stand-in's loss
    counts zero), and the global number of examples of each part."""
    n_parts = len(job.data.ids)
    n_part = [sum(1 for kk, _ in items if kk == k) for k in range(n_parts)]
    mine: dict[int, list[int]] = {}
    for k, i in job.world.shard(items):
        mine.setdefault(k, []).append(i)
    state.examples += sum(len(v) for v in mine.values())
    idle = []
    if job.model.sharded:
        idle = [k for k in range(n_parts) if n_part[k] and k not in mine]
        for k in idle:
            mine[k] = [next(i for kk, i in items if kk == k)]
    return mine, idle, n_part


def _lm_token_counts(job: Job, mine: dict[int, list[int]], idle: list[int]) -> torch.Tensor:
    """Next-token targets of each LM part over all processes: the loss is the global token
    mean whatever the split."""
    counts = torch.zeros(len(job.data.ids), dtype=torch.float64)
    after, vocab = job.after_ids, job.model.bank.vocab_rows
    for k, idx in mine.items():
        if job.data.head_of[k] is None and k not in idle:
            counts[k] = sum(lm_target_count(job.data.ids[k][i], after, vocab) for i in idx)
    return job.world.sum_(counts)


def _part_loss(job: Job, k: int, idx: list[int], lm_targets: float, n_global: int
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Part ``k``'s loss on this process's examples ``idx`` (the LM sum over the global
    token count, or this share of the head's mean loss), and the head's features (B, F) of
    those examples (None for an LM part)."""
    m, d = job.model, job.data
    ids = [d.ids[k][i] for i in idx]
    tag = d.head_of[k]
    if tag is None:
        with activation_checkpointing(m, job.cfg.activation_checkpointing):
            return m.lm_loss(collate(m, ids), reduction="sum",
                             after=job.after_tensor) / max(lm_targets, 1.0), None
    head = m.head(tag)
    if job.prefix is not None:
        feats = job.prefix.tag_features(ids, tag)
    else:
        with activation_checkpointing(m, job.cfg.activation_checkpointing):
            feats = m.tag_features(collate(m, ids), tag)
    mean = head.loss(head(feats), d.targets[k][idx].to(m.device))
    return mean * (len(idx) / n_global), feats


def _record_seen(job: Job, state: State, items: list[tuple[int, int]],
                 feats: dict[int, torch.Tensor]) -> None:
    """``refit_rows: seen``: put this global batch's head features into each part's window,
    in the global batch's order (summed over processes, so every window is the same)."""
    for k, window in state.seen.items():
        where = [g for g, (kk, _) in enumerate(items) if kk == k]
        if not where:
            continue
        full = torch.zeros(len(items), window.features.shape[1], device=job.model.device)
        mine = [g for g, (kk, _) in job.world.shard(list(enumerate(items))) if kk == k]
        if k in feats:  # this process's rows of part k, at their global positions
            full[mine] = feats[k].detach().float()
        job.world.sum_(full)
        window.add(full[where], [items[g][1] for g in where])


def fit_tag(
    model: TaggedModel,
    tag: str,
    texts: Sequence[str],
    targets: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    log: Log = print,
    after_warm_start: Callable[[], dict | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    prefix: FrozenPrefix | None = None,
) -> TrainResult:
    """Train one tag (and its head) on ``texts``: :func:`fit_tags` with a single part."""
    return fit_tags(model, [tag], [Part(list(texts), targets)], cfg, progress, log,
                    after_warm_start, checkpoint_dir, prefix)
