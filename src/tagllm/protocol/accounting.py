"""A stage's cost account: what each phase of a stage spent (seconds and forward tokens,
counted by :mod:`tagllm.costs`) beside the forward tokens it could not avoid, and their
ratio. ``tagllm run`` stores it with each trained stage."""

from __future__ import annotations

import numpy as np

from tagllm.model import TaggedModel
from tagllm.prefix import split_point
from tagllm.protocol.plan import StagePlan
from tagllm.records import PhaseCost, StageCosts
from tagllm.training import TrainResult


def stage_costs(phases: dict[str, dict[str, float]], unavoidable: dict[str, int],
                generates: bool = False) -> StageCosts:
    """A stage's cost account: each phase's seconds and forward tokens, beside the
    unavoidable forward tokens, and their ratio over the tags' own work (training and
    evaluation; the baselines are other methods, counted apart). A stage that ``generates``
    (evaluates by generation, whose lengths are not known beforehand) gets no ratio."""
    own = sum(v["tokens"] for k, v in phases.items() if not k.endswith("/baselines"))
    need = sum(unavoidable.values())
    return StageCosts({k: PhaseCost(v["seconds"], int(v["tokens"]), v.get("peak_gb"))
                       for k, v in phases.items()}, int(own),
                      int(sum(v["tokens"] for k, v in phases.items()
                              if k.endswith("/baselines"))),
                      unavoidable, round(own / need, 3) if need and not generates else None)


def unavoidable_work(m: TaggedModel, p: StagePlan, res: TrainResult, cached: bool
                     ) -> dict[str, int]:
    """Forward tokens a stage cannot avoid: the frozen prefix of each training row it must
    touch, once (``cached``: when the frozen-prefix path is used; else whole rows at every
    step); the trained part (from the first trained tag on) of the warm-start rows, of each
    step's batch and of the validation rows at each validation point; each evaluated row
    once, and its trained part again for the ablation. The rows it must touch are the
    validation rows and the union of the warm-start sample and the steps' rows, two
    independent draws: its expected size is counted (exact when either covers every
    row)."""
    trainable = {v for t in p.stage.tags for v in m.bank.virtual_ids(t)}
    prefixes: set[tuple[int, ...]] = set()
    trained_part: list[int] = []
    for d in p.data:
        for e in m.tagtok.encode_batch(d.texts + (d.val.texts if d.val is not None else [])):
            cut = split_point(e.ids, trainable) if cached and d.targets is not None else 0
            prefixes.add(tuple(e.ids[:cut]))
            trained_part.append(len(e.ids) - cut)
    mean = float(np.mean(trained_part)) if trained_part else 0.0
    cfg = p.stage.train
    n_val = sum(res.validation_rows)
    n_train = max(len(trained_part) - n_val, 1)
    warm = min(cfg.warm_start_examples, n_train) if cached and res.warm_start else 0
    stepped = min(res.steps * cfg.batch_size, n_train)
    touched = n_val + n_train * (1 - (1 - warm / n_train) * (1 - stepped / n_train))
    share = touched / max(len(trained_part), 1)
    out = {"distinct_prefixes": round(sum(len(x) for x in prefixes) * share),
           "warm_start": round(warm * mean),
           "steps": round(res.steps_run * cfg.batch_size * mean),
           "validation": round(len(res.curve) * sum(res.validation_rows) * mean)}
    evaluated = 0
    for e, d in p.evals:  # generated tokens are not known beforehand (stage_costs: no ratio)
        ids = [x.ids for x in m.tagtok.encode_batch(d.texts)]
        evaluated += sum(len(x) for x in ids)
        if e.ablation and e.label:
            evaluated += sum(len(x) - split_point(x, trainable) for x in ids)
    out["evaluation"] = evaluated
    return out
