"""Running a recipe: the stages as a dependency graph of tag trainings over the tag store.

``run`` plans (:mod:`tagllm.protocol.plan`), then trains the missing stages — each on a
fresh tag bank over the same frozen base, with its dependencies loaded frozen from the
store — resuming any checkpoint, evaluates them (:mod:`tagllm.scoring`), stores
every tag with its provenance, and exports the recipe's tags and results to its ``out``
folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagllm.config import EvalConfig
from tagllm.costs import ACCOUNT, phase
from tagllm.distributed import fsdp_requested, local_parameters, shard_model, world
from tagllm.evaluation.metrics import paired_bootstrap, translation_bootstrap
from tagllm.fileio import atomic_write_text, json_text
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.protocol.accounting import stage_costs, unavoidable_work
from tagllm.protocol.inputs import LoadedData, report_skipped
from tagllm.protocol.plan import StagePlan, as_text, plan, plan_table
from tagllm.protocol.plan import ablated as ablated_evals
from tagllm.protocol.recipe import Recipe, tags_in
from tagllm.records import EvalResult, JSONObject, RunResults, StageResult
from tagllm.scoring import evaluate
from tagllm.serialization import META
from tagllm.store import TagStore
from tagllm.tracking import Track, Tracker, check_tracker, log_evaluations
from tagllm.training import Part, TrainResult, fit_tags, stage_prefixes

Log = Callable[[str], None]


@dataclass
class RunSummary:
    """What ``run`` did: per stage, whether it trained and how many steps it took."""

    recipe: str
    out: str
    stages: list[StageResult]
    seconds: float

    @property
    def steps_run(self) -> int:
        return sum(s.steps_run for s in self.stages)


def _quiet(msg: Any) -> None:
    pass


@dataclass
class RunContext:
    """What every step of a run shares: the recipe, the frozen base model, the tag store,
    where messages go (``log``), whether bars are shown, and where stages are tracked.
    The device is the base model's (each process's own under a multi-process launch)."""

    recipe: Recipe
    base: TaggedModel
    store: TagStore
    log: Log = print
    progress: bool = True
    track: Track = "none"


def run(recipe: Recipe, store: TagStore | None = None, dry_run: bool = False,
        log: Log = print, progress: bool = True, show: Callable[[Any], None] | None = None,
        fsdp: bool | None = None, export_to_out: bool = True,
        track: Track = "tensorboard") -> RunSummary:
    """Train what is missing in dependency order; reuse what the store has.

    ``track``: each trained stage's losses, learning rates, validation losses and metrics
    also go to TensorBoard under ``out/tensorboard/STAGE`` (``"none"``: nowhere; nothing is
    tracked when the recipe has no ``out``).

    Under a multi-process launch with ``fsdp`` (default: :func:`fsdp_requested`), the base
    model's blocks are sharded across the processes (:func:`shard_model`). With
    ``export_to_out`` the tags and ``results.json`` are copied to the recipe's ``out``."""
    t0 = time.perf_counter()
    check_tracker(track)  # before the model loads
    store = store or TagStore()
    show = show or (lambda table: log(as_text(table)))
    w = world()
    if not w.is_main:  # under a multi-process launch one process reports and writes
        log, show, progress = _quiet, _quiet, False
    base = load_base(recipe.model, w.distributed and (
        fsdp_requested() if fsdp is None else fsdp), log)
    log(f"tag store {store.root}")
    plans = plan(recipe, base, store, log, progress)
    show(plan_table(recipe, plans))
    for p in plans:
        report_skipped(f"stage {p.stage.name}", p.data, log)
    if dry_run:
        return RunSummary(recipe.name, recipe.out,
                          [StageResult(p.stage.name, p.cached, p.key, reason=p.reason)
                           for p in plans],
                          time.perf_counter() - t0)
    ctx = RunContext(recipe, base, store, log, progress, track)
    stages = [_cached_stage(ctx, p) if p.cached else _train_or_reuse(ctx, p) for p in plans]
    summary = RunSummary(recipe.name, recipe.out, stages, time.perf_counter() - t0)
    if w.is_main and export_to_out:
        export(recipe, plans, store, summary)
    w.barrier()
    return summary


def load_base(model: str, fsdp: bool, log: Log) -> TaggedModel:
    """The frozen base model, its blocks sharded across the processes with ``fsdp``."""
    w = world()
    # a model to shard loads on the CPU first: each process's device then gets its shard
    base = TaggedModel.from_pretrained(model, device="cpu" if fsdp else w.device)
    log(f"base model {base.model_name} ({type(base.base).__name__}, fingerprint "
        f"{base.fingerprint[:19]})")
    if fsdp:
        n = shard_model(base.base, w)
        mine, total = local_parameters(base.base)
        log(f"FSDP: {n} transformer blocks sharded across {w.size} processes; this process "
            f"holds {mine:,} of the base model's {total:,} parameters")
    return base


def _cached_stage(ctx: RunContext, p: StagePlan) -> StageResult:
    """A stored stage: what the run that trained it measured (its evaluations measured
    again with the stored tags when they changed since)."""
    meta = json.loads((ctx.store.path(p.tag_keys[p.stage.tags[0]]) / META).read_text())
    prov = meta["provenance"]
    if world().is_main:
        ctx.store.remember(ctx.recipe.name, p.stage.name, p.material)
    return _summary(p, prov, _stored_evals(ctx, p, prov), meta.get("created"))


def _summary(p: StagePlan, prov: JSONObject, evals: list[EvalResult],
             created: str | None = None) -> StageResult:
    """A stage's summary, from the provenance its tags are stored with: the one place it is
    built, for a stage trained now and for one found in the store (``created``: when it was
    trained; this run took no step of it). Provenance written before ``kept_step`` was
    recorded: the best step was kept, or with ``select: last`` the last."""
    val = prov.get("validation", {})
    fresh = created is None
    kept = val["kept_step"] if "kept_step" in val else (
        prov.get("steps") if val.get("select") == "last" else val.get("best_step"))
    return StageResult(
        p.stage.name, not fresh, p.key, prov["steps"] - prov["resumed_from"] if fresh else 0,
        evals, prov.get("seconds"), prov.get("final_loss"), val.get("best_step"), kept,
        val.get("curve", []), trained=created,
        examples_per_process=prov["examples_per_process"] if fresh else None,
        resumed_from=prov["resumed_from"] if fresh else None,
        refit=val.get("refit") if fresh else None)


def _stored_evals(ctx: RunContext, p: StagePlan, prov: JSONObject) -> list[EvalResult]:
    """The evaluations of a stored stage under the recipe's evaluation settings: those of
    the training run, or of an earlier re-evaluation, or measured now with the stored tags
    (and then stored). The ablation rows come from the training run: the key of the tags
    covers everything they depend on."""
    if prov.get("eval_key") == p.eval_key:
        return [EvalResult.from_json(e, f"stored stage {p.stage.name} eval[{i}]")
                for i, e in enumerate(prov.get("eval", []))]
    store = ctx.store
    rows = world().gather_object(store.read_evals(p.eval_key) if world().is_main else None)[0]
    if rows is not None:  # the main process's reading, so that all processes agree
        return rows
    ctx.log(f"stage {p.stage.name}: its evaluations changed since it was trained; "
            "evaluating the stored tags")
    with phase(f"stage {p.stage.name}"):
        rows = _evaluate(ctx, _stage_model(ctx, p, stored=True), p)
    old = [EvalResult.from_json(e) for e in prov.get("eval", [])]
    for i, j in zip(p.ablated, ablated_evals(prov["stage"]["eval"]), strict=True):
        rows[i].methods.update({name: score for name, score in old[j].methods.items()
                                if name.startswith("ablation: ")})
    if world().is_main:
        store.write_evals(p.eval_key, rows)
    world().barrier()
    return rows


def _stage_model(ctx: RunContext, p: StagePlan, stored: bool = False) -> TaggedModel:
    """A fresh tag bank on the shared frozen base: dependencies frozen, new tags trainable
    (with ``stored``, the stage's own tags as the store holds them)."""
    m = TaggedModel(ctx.base.base, ctx.base.tokenizer, ctx.base.model_name)
    for t, k in p.deps.items():
        m.load_tag(ctx.recipe.pretrained[t] if k.startswith("pretrained:")
                   else ctx.store.path(k))
    torch.manual_seed(p.stage.train.seed)
    for t in p.stage.tags:
        if stored:
            m.load_tag(ctx.store.path(p.tag_keys[t]))
        else:
            m.add_tag(ctx.recipe.tag[t], seed=p.stage.train.seed)
    return m


def _evaluate(ctx: RunContext, m: TaggedModel, p: StagePlan, baselines: bool = True,
              evals: list[tuple[EvalConfig, LoadedData]] | None = None,
              prefix: FrozenPrefix | None = None) -> list[EvalResult]:
    """One result row per eval entry of the stage (or of ``evals``, a subset of them)."""
    rows = []
    for e, d in p.evals if evals is None else evals:
        name = e.name or f"{e.source}" + (f" n={len(d.texts)}" if e.n else "")
        tag = next((t for t in tags_in(e.template) if t in p.stage.tags
                    and m.head(t) is not None and m.head(t).has_parameters), None)
        train = next((x for x in p.data if x.targets is not None
                      and tag in tags_in(x.config.template)), None)
        rows.append(evaluate(m, e, d, train, name=name, tag=tag,
                             max_length=p.stage.train.max_length, batch_size=16 if e.reference
                             else 32, baselines=baselines, progress=ctx.progress, log=ctx.log,
                             budget=p.stage.train, prefix=prefix))
    return rows


def _train_or_reuse(ctx: RunContext, p: StagePlan) -> StageResult:
    """Train a stage under the store's lock for its key; when another process stored it
    while this one waited, reuse that. (Under a multi-process launch the main process holds
    the lock and tells the others.)"""
    w = world()
    with ctx.store.lock(p.key, ctx.log) if w.is_main else contextlib.nullcontext():
        stored = all(ctx.store.has(k) for k in p.tag_keys.values()) if w.is_main else None
        if w.gather_object(stored)[0]:
            ctx.log(f"stage {p.stage.name}: stored by another process meanwhile; reused")
            return _cached_stage(ctx, p)
        return _train_stage(ctx, p)


def _train_stage(ctx: RunContext, p: StagePlan) -> StageResult:
    """Train one stage, evaluate it (and its ablation), store its tags."""
    s, recipe = p.stage, ctx.recipe
    tracker = Tracker(ctx.track if recipe.out else "none", Path(recipe.out) / "tensorboard",
                      s.name, {"recipe": recipe.name, "stage": s.name,
                               "tags": ",".join(s.tags), "key": p.key, **asdict(s.train)})
    before = ACCOUNT.snapshot()
    try:
        with phase(f"stage {s.name}"):
            out, unavoidable = _train_tracked(ctx, p, tracker)
    finally:
        tracker.close()
    out.costs = stage_costs(ACCOUNT.since(before), unavoidable,
                            generates=any(e.reference for e, _ in p.evals))
    return out


def _train_tracked(ctx: RunContext, p: StagePlan, tracker: Tracker
                   ) -> tuple[StageResult, dict[str, int]]:
    """Train, evaluate and store one stage: what it did, and the forward tokens it could
    not avoid."""
    s, log = p.stage, ctx.log
    log(f"stage {s.name}: training {', '.join(s.tags)} ({p.reason})")
    m = _stage_model(ctx, p)
    ablated = p.ablated
    prefix, test_prefix = stage_prefixes(m, s.tags, s.train,
                                         any(d.targets is not None for d in p.data), log)

    def before_training() -> JSONObject | None:  # the honest ablation: what do trained
        if not ablated:                             # tags add? (JSON: a checkpoint keeps it)
            return None
        with phase("ablation"):
            return {"eval": [e.to_json() for e in _evaluate(
                ctx, m, p, baselines=False, evals=[p.evals[i] for i in ablated],
                prefix=test_prefix)]}

    parts = [_part(d, f"stage {s.name} data[{j}] ({d.config.source})")
             for j, d in enumerate(p.data)]
    res = fit_tags(m, s.tags, parts, s.train, ctx.progress, log, before_training,
                   ctx.store.work_dir(p.key), prefix=prefix,
                   tracker=tracker if tracker.active else None)
    evals = _evaluate(ctx, m, p, prefix=test_prefix)
    if res.after_warm_start:
        _add_ablation(m, p, evals, ablated, [EvalResult.from_json(e, "the ablation")
                                             for e in res.after_warm_start["eval"]])
    log_evaluations(tracker, evals, s.train.steps)
    for row in evals:
        log(f"stage {s.name} eval {row.name}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.metrics.items()))
    prov = _provenance(ctx.recipe, p, m, res, evals)
    if world().is_main:  # the tags are equal on every process: one writes them
        _store_stage(ctx, p, m, prov)
    world().barrier()
    return _summary(p, prov, evals), unavoidable_work(m, p, res, prefix is not None)


def _part(d: LoadedData, name: str) -> Part:
    """A training entry as the loop takes it, with how its validation rows are chosen: its
    own validation source's rows (appended), the rows held out before its in-context
    examples were drawn, or drawn by the loop keeping the entry's groups apart."""
    if d.val is not None:
        n = len(d.texts)
        targets = None if d.targets is None else np.concatenate([d.targets, d.val.targets])
        return Part(d.texts + d.val.texts, targets, d.config.weight, name,
                    val_rows=list(range(n, n + len(d.val.texts))))
    if d.val_mask is not None:
        return Part(d.texts, d.targets, d.config.weight, name,
                    val_rows=[i for i, v in enumerate(d.val_mask) if v])
    return Part(d.texts, d.targets, d.config.weight, name, groups=d.groups())


def _add_ablation(m: TaggedModel, p: StagePlan, evals: list[EvalResult],
                  ablated: list[int], before: list[EvalResult]) -> None:
    """The rows measured before training join the trained tags' rows as baselines, with
    the paired bootstrap interval of the difference on the same rows."""
    for i, row in zip(ablated, before, strict=True):
        e, d = p.evals[i]
        what = (f"{row.tag} untrained, head fitted" if e.kind == "head"
                else f"{', '.join(p.stage.tags)} untrained")  # generation: starting tags
        interval = (paired_bootstrap(d.targets, evals[i].predictions, row.predictions,
                                     m.head(row.tag).metrics) if e.kind == "head"
                    else translation_bootstrap(d.table[e.reference], evals[i].outputs,
                                               row.outputs) if e.kind == "generation"
                    else None)
        evals[i].add(f"ablation: {what}", row.metrics, interval)


def _provenance(recipe: Recipe, p: StagePlan, m: TaggedModel, res: TrainResult,
                evals: list[EvalResult]) -> JSONObject:
    """What a stored tag records of the run that trained it."""
    s = p.stage
    return {
        "recipe": recipe.name, "recipe_file": recipe.source, "stage_key": p.key,
        "eval_key": p.eval_key,
        "stage": asdict(s), "key_material": p.material,
        "data": [{"source": d.config.source, "n": d.config.n, "rows": len(d.texts),
                  "seed": d.config.seed if d.config.seed is not None else recipe.seed,
                  "skipped": len(d.skipped), "fingerprint": d.fingerprint()} for d in p.data],
        "seed": s.train.seed, "steps": res.steps, "resumed_from": res.resumed_from,
        "processes": len(res.examples_per_process), "sharded_base": m.sharded,
        "examples_per_process": res.examples_per_process,
        "seconds": round(res.seconds, 1), "final_loss": res.final_loss,
        "warm_start": res.warm_start, "eval": [e.to_json() for e in evals],
        "validation": {"fraction": s.train.validation, "seed": s.train.seed,
                       "rows": res.validation_rows, "select": s.train.select,
                       "best_step": res.best_step, "kept_step": res.kept_step,
                       "curve": res.curve, "refit": res.refit,
                       "stopped_early": res.stopped_early, "refits": res.refits},
    }


def _store_stage(ctx: RunContext, p: StagePlan, m: TaggedModel,
                 provenance: JSONObject) -> None:
    """Each tag of a stage under its own key; then the checkpoint goes."""
    store = ctx.store
    for t in p.stage.tags:
        m.save_tag(t, store.path(p.tag_keys[t]), provenance={**provenance, "key": p.tag_keys[t]},
                   trained_with=[x for x in m.bank.names if x != t])
    store.clear_work(p.key)
    store.remember(ctx.recipe.name, p.stage.name, p.material)


def export(recipe: Recipe, plans: list[StagePlan], store: TagStore, summary: RunSummary) -> None:
    """Copy the recipe's tags to ``out/tags/<Name>`` and write ``out/results.json``."""
    out = Path(recipe.out)
    tags = {t: out / "tags" / t.strip("<>") for p in plans for t in p.tag_keys}
    for p in plans:
        for t, k in p.tag_keys.items():
            store.export(k, tags[t])
    doc = RunResults(recipe.name, summary.stages, recipe.model, recipe.source,
                     round(summary.seconds, 1), {t: str(path) for t, path in tags.items()})
    atomic_write_text(out / "results.json", json_text(doc.to_json()))  # strict: null, not NaN
