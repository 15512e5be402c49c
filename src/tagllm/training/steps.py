"""The step loop every trainer in tagllm runs: the tags of ``fit_tags``, the PEFT baselines
(through :class:`~tagllm.evaluation.baselines.FineTune`), the research benchmarks.

A trainer says what one step does, how to score the validation rows, and how to copy and
put back what it trains (:class:`Trainee`); :func:`run_steps` does the rest, the same way for
all of them: the validation curve (step 0 first: the untrained start), the lowest validation
loss and the values that had it, early stopping after ``patience`` points without a new
lowest; :func:`keep_best` then puts back the values of the best step (``select="best"``). A fix here
reaches every trainer. :func:`build_optimizer` and :func:`apply_step` are the optimiser side
they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from tagllm.records import JSONObject

SCHEDULES = {"cosine": get_cosine_schedule_with_warmup,
             "linear": get_linear_schedule_with_warmup}


def build_optimizer(groups: Sequence[tuple[list[torch.nn.Parameter], float]], steps: int,
                    optimizer: Literal["adamw", "adafactor"] = "adamw",
                    schedule: Literal["cosine", "linear", "constant"] = "cosine",
                    warmup_steps: int = 0, weight_decay: float = 0.0):
    """AdamW or Adafactor over ``groups`` (parameters, learning rate; empty groups left
    out), and a linear warm-up followed by a cosine or linear decay to 0 at ``steps``, or a
    constant rate. Returns (optimizer, scheduler)."""
    params = [{"params": p, "lr": lr} for p, lr in groups if p]
    if optimizer == "adafactor":
        opt = torch.optim.Adafactor(params, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, weight_decay=weight_decay)
    if schedule == "constant":
        return opt, get_constant_schedule_with_warmup(opt, warmup_steps)
    return opt, SCHEDULES[schedule](opt, warmup_steps, steps)


def apply_step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, sched,
               max_grad_norm: float = 1.0) -> None:
    """The update after ``backward``: clip the gradients' joint norm (0: no clipping), step
    the optimizer and the schedule, drop the gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


@dataclass
class LoopState:
    """What changes from step to step (a checkpoint keeps all of it)."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    #: validation points: {"step", "train_loss" (mean since the previous point),
    #: "validation_loss", and what the trainer's ``on_validation`` added}
    curve: list[JSONObject] = field(default_factory=list)
    best: JSONObject | None = None  # {"step", "loss"} of the lowest validation loss so far
    best_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # its values
    stopped_early: bool = False


@dataclass
class Trainee:
    """What a trainer gives the loop. ``step(n)``: one optimizer step (the n-th), its loss.
    ``validate()``: the loss on the validation rows now (``validate`` None: no validation
    points; returning None: points with the training loss only, nothing chosen).
    ``snapshot()`` / ``restore(values)``: copy and put back what is trained.
    Hooks: ``after_step(n, loss)`` before the step's validation (a head re-fit, a tracker);
    ``on_validation(point)`` may add entries to a new validation point (and log it);
    ``end_of_step(n)`` after it, unless the loop stopped early (a log line, a checkpoint, a
    stop request)."""

    step: Callable[[int], float]
    validate: Callable[[], float | None] | None
    snapshot: Callable[[], dict[str, torch.Tensor]]
    restore: Callable[[dict[str, torch.Tensor]], None]
    after_step: Callable[[int, float], None] | None = None
    on_validation: Callable[[JSONObject], None] | None = None
    end_of_step: Callable[[int], None] | None = None


@dataclass
class LoopConfig:
    """How long and how the loop chooses: ``steps``, a validation point every
    ``eval_every`` steps (and at the last), stop after ``patience`` points without a new
    lowest loss (0: never), keep the ``best`` step's values or the ``last``."""

    steps: int
    eval_every: int
    patience: int = 0
    select: Literal["best", "last"] = "best"


def run_steps(cfg: LoopConfig, t: Trainee, state: LoopState | None = None,
              on_stop: Callable[[LoopState], None] | None = None) -> LoopState:
    """Steps ``state.step + 1`` … ``cfg.steps`` (a fresh state: validation at step 0 first,
    unless the caller recorded it),
    a validation point every ``eval_every`` steps and at the last; stops early when
    ``patience`` points passed without a new lowest loss (``on_stop`` hears of it). Puts
    nothing back: :func:`keep_best` does, once the caller is done."""
    state = state or LoopState()
    if state.step == 0 and not state.curve:
        record_validation(cfg, t, state)
    for n in range(state.step + 1, cfg.steps + 1):
        loss = t.step(n)
        state.step = n
        state.losses.append(loss)
        if t.after_step is not None:
            t.after_step(n, loss)
        if n % cfg.eval_every == 0 or n == cfg.steps:
            record_validation(cfg, t, state)
            if out_of_patience(cfg, state):
                state.stopped_early = True
                if on_stop is not None:
                    on_stop(state)
                break
        if t.end_of_step is not None:
            t.end_of_step(n)
    return state


def record_validation(cfg: LoopConfig, t: Trainee, state: LoopState) -> None:
    """Append the validation loss at ``state.step`` to the curve and remember the values of
    the lowest one (a non-finite loss is recorded, never chosen)."""
    if t.validate is None:
        return
    loss = t.validate()
    since = state.curve[-1]["step"] if state.curve else 0
    recent = state.losses[since:]
    point: JSONObject = {"step": state.step,
                         "train_loss": float(np.mean(recent)) if recent else None,
                         "validation_loss": loss}
    if loss is not None and math.isfinite(loss) and (state.best is None
                                                     or loss < state.best["loss"]):
        state.best = {"step": state.step, "loss": loss}
        if cfg.select == "best":
            state.best_tensors = t.snapshot()
    state.curve.append(point)
    if t.on_validation is not None:
        t.on_validation(point)


def out_of_patience(cfg: LoopConfig, state: LoopState) -> bool:
    """Whether ``patience`` validation points have passed without a new lowest loss."""
    if not cfg.patience or state.best is None:
        return False
    return sum(1 for c in state.curve if c["step"] > state.best["step"]) >= cfg.patience


def kept_step(cfg: LoopConfig, state: LoopState, validated: bool) -> int | None:
    """The step whose values the result holds (None when no validation ran)."""
    if not validated:
        return None
    return state.best["step"] if cfg.select == "best" and state.best_tensors else state.step


def keep_best(cfg: LoopConfig, state: LoopState,
              restore: Callable[[dict[str, torch.Tensor]], None]) -> bool:
    """With ``select="best"``, put back (``restore``) the values of the lowest validation
    loss; whether it did."""
    if cfg.select != "best" or not state.best_tensors:
        return False
    restore(state.best_tensors)
    return True


def train_module(groups: Sequence[tuple[list[torch.nn.Parameter], float]],
                 batch_loss: Callable[[int], torch.Tensor], steps: int, eval_every: int,
                 validate: Callable[[], float | None] | None,
                 snapshot: Callable[[], dict[str, torch.Tensor]],
                 restore: Callable[[dict[str, torch.Tensor]], None], *,
                 schedule: Literal["cosine", "linear", "constant"] = "cosine",
                 warmup_steps: int = 0, max_grad_norm: float = 1.0) -> LoopState:
    """Train ``groups`` (parameters, learning rate) with AdamW for ``steps`` steps, validating
    every ``eval_every``: ``batch_loss(n)`` is the n-th step's loss; then the best step's
    values are put back. For a trainer without the tags' machinery (the PEFT baselines):
    the same loop, optimiser and selection."""
    cfg = LoopConfig(steps, eval_every)
    opt, sched = build_optimizer(groups, steps, "adamw", schedule, warmup_steps)
    params = [p for ps, _ in groups for p in ps]

    def step(n: int) -> float:
        loss = batch_loss(n)
        loss.backward()
        apply_step(params, opt, sched, max_grad_norm)
        return loss.item()

    state = run_steps(cfg, Trainee(step, validate, snapshot, restore))
    keep_best(cfg, state, restore)
    return state
