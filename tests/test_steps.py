"""The step loop every trainer shares (tagllm.training.steps): validation at step 0 and
every eval_every steps, the lowest loss's values kept, early stopping, select: last."""

from __future__ import annotations

import math

import pytest
import torch

from tagllm.training.steps import (
    LoopConfig,
    LoopState,
    Trainee,
    keep_best,
    kept_step,
    run_steps,
    train_module,
)


def toy(losses: list[float]):
    """A trainee whose validation losses are scripted and whose value counts its steps."""
    value = torch.zeros(1)
    script = iter(losses)

    def step(n: int) -> float:
        value.add_(1)
        return float(n)

    return value, Trainee(step, lambda: next(script), lambda: {"v": value.clone()},
                          lambda d: value.copy_(d["v"]))


def test_the_lowest_validation_point_is_kept_and_step_0_counts():
    value, t = toy([1.0, 0.5, 0.7, 0.6])
    cfg = LoopConfig(steps=6, eval_every=2)
    state = run_steps(cfg, t)
    assert [c["step"] for c in state.curve] == [0, 2, 4, 6]
    assert state.curve[1]["train_loss"] == 1.5  # the mean of steps 1 and 2 since step 0
    assert state.best == {"step": 2, "loss": 0.5} and kept_step(cfg, state, True) == 2
    assert keep_best(cfg, state, t.restore) and value.item() == 2  # step 2's value back
    value, t = toy([0.2, 0.5, 0.7, 0.6])
    state = run_steps(cfg, t)
    assert keep_best(cfg, state, t.restore) and value.item() == 0  # the untrained start


def test_patience_stops_and_a_non_finite_loss_is_never_chosen():
    stopped = []
    value, t = toy([1.0, math.nan, 0.9, 0.95, 0.97, 0.99, 0.5])
    state = run_steps(LoopConfig(steps=100, eval_every=1, patience=3), t, on_stop=stopped.append)
    assert state.stopped_early and stopped == [state]
    assert state.step == 5 and state.best == {"step": 2, "loss": 0.9}


def test_select_last_keeps_the_last_step_and_a_resumed_state_goes_on():
    value, t = toy([1.0, 0.5, 0.7])
    cfg = LoopConfig(steps=4, eval_every=2, select="last")
    state = run_steps(cfg, t)
    assert not keep_best(cfg, state, t.restore) and value.item() == 4
    assert kept_step(cfg, state, True) == 4 and kept_step(cfg, state, False) is None
    value, t = toy([0.4])  # resumed at step 3: no second step-0 point
    state = run_steps(LoopConfig(steps=4, eval_every=2),
                      t, LoopState(step=3, curve=[{"step": 2}], best={"step": 2, "loss": 0.5}))
    assert [c["step"] for c in state.curve] == [2, 4] and state.best["step"] == 4


def test_a_trainer_without_validation_rows_records_its_training_loss_and_chooses_nothing():
    value, t = toy([None, None, None])
    cfg = LoopConfig(steps=4, eval_every=2)
    state = run_steps(cfg, t)
    assert [(c["step"], c["validation_loss"]) for c in state.curve] == [(0, None), (2, None),
                                                                         (4, None)]
    assert state.best is None and not keep_best(cfg, state, t.restore) and value.item() == 4
    t.validate = None  # no validation at all: no points
    assert run_steps(cfg, t).curve == []


def test_train_module_fits_and_puts_back_its_best_values():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(torch.zeros(3))

    def loss(n: int) -> torch.Tensor:
        return ((x @ w - y) ** 2).mean()

    val = []

    def validate() -> float:
        with torch.no_grad():
            val.append(float(loss(0)))
        return val[-1]

    state = train_module([([w], 0.1)], loss, 50, 10, validate,
                         lambda: {"w": w.detach().clone()},
                         lambda d: w.data.copy_(d["w"]), schedule="constant")
    assert state.curve[-1]["validation_loss"] < state.curve[0]["validation_loss"] / 10
    with torch.no_grad():
        assert float(loss(0)) == pytest.approx(min(val))  # the best step's values
