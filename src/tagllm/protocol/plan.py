"""The plan of a recipe: each stage's data, evaluations and key, and whether it is cached.

:func:`plan` loads every entry in dependency order (the evaluation sets first: their
molecules, sequences and inputs never enter a training set), works out each stage's key
(see :mod:`tagllm.store`) and says what is cached, what will train and why. Nothing trains.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from tagllm.config import EvalConfig, HeadConfig, RowsConfig
from tagllm.errors import RecipeError
from tagllm.fileio import remove_stale
from tagllm.heads import head_class
from tagllm.hub import resolve_tag_dir
from tagllm.model import TaggedModel
from tagllm.protocol.inputs import (
    HeldOut,
    LoadedData,
    add_context,
    length_limit,
    read_rows,
)
from tagllm.protocol.recipe import Recipe, StageConfig, tags_in
from tagllm.records import JSONObject
from tagllm.serialization import META, TENSORS, read_tag
from tagllm.store import STORE_FORMAT, TagStore, digest, flat_diff, tag_key
from tagllm.training.batching import validation_split

Log = Callable[[str], None]


@dataclass
class StagePlan:
    """One stage of a plan: its key, whether it is cached, and why."""

    stage: StageConfig
    key: str
    tag_keys: dict[str, str]
    deps: dict[str, str]  # dependency tag -> store key (or pretrained folder)
    material: JSONObject
    data: list[LoadedData]
    evals: list[tuple[EvalConfig, LoadedData]]
    cached: bool
    reason: str
    #: what the evaluations' results depend on besides the tags (their settings, baselines
    #: and rows); a stored stage whose evaluations differ is re-evaluated, not retrained
    eval_key: str = ""
    reevaluate: bool = False

    @property
    def ablated(self) -> list[int]:
        """Indices of the evaluations measured before training too (the ablation)."""
        return ablated(self.stage.eval)


def ablated(evals: list[EvalConfig] | list[JSONObject]) -> list[int]:
    """Indices of the evaluation entries (configs, or their stored dicts) with an ablation
    that applies (a label or a reference to score)."""
    def get(e, k):
        return e[k] if isinstance(e, dict) else getattr(e, k)
    return [i for i, e in enumerate(evals)
            if get(e, "ablation") and (get(e, "label") or get(e, "reference"))]


def eval_material(e: EvalConfig, d: LoadedData, ablation_only: bool = False) -> JSONObject:
    """What one evaluation's results depend on besides the tags: its settings and rows. With
    ``ablation_only`` what its ablation (measured while training) depends on: all but the
    baselines and the row's name."""
    cfg = asdict(e)
    if ablation_only:
        cfg.pop("baselines")
        cfg.pop("name")
    return {"config": cfg, "rows": len(d.texts), "fingerprint": d.fingerprint()}


def head_of(recipe: Recipe, rows: RowsConfig) -> HeadConfig | None:
    """The head a labelled entry feeds: that of the last tag with a head in its template."""
    if not rows.label or not rows.template:
        return None
    heads = [recipe.tag[t].head for t in tags_in(rows.template)
             if t in recipe.tag and recipe.tag[t].head is not None]
    return heads[-1] if heads else None


def _pretrained_key(path: str) -> str:
    meta, _ = read_tag(resolve_tag_dir(path))
    return "pretrained:" + meta["files"][TENSORS]


def _tagger(recipe: Recipe, model: TaggedModel) -> TaggedModel:
    """The base model with every tag of the recipe (zeros for the untrained ones): it
    measures input lengths, and verifies the pretrained tags before any training."""
    tagger = TaggedModel(model.base, model.tokenizer, model.model_name)
    for t in recipe.tags:
        if t.name not in recipe.pretrained:
            tagger.add_tag(t, init=torch.zeros(t.num_tokens, model.hidden_size))
    for name, path in recipe.pretrained.items():
        found = tagger.load_tag(path)
        if found != name:
            raise RecipeError(f"{recipe.source}: pretrained {name} points to {path}, which "
                              f"holds the tag {found}")
    return tagger


def _load(recipe: Recipe, cfg: RowsConfig, stage: StageConfig, tagger: TaggedModel,
          held: HeldOut | None, progress: bool, log: Log) -> LoadedData:
    return read_rows(cfg, recipe.seed, held, progress, log, head_of(recipe, cfg),
                     length_limit(cfg, tagger.tagtok, stage.train.max_length, log))


def plan(recipe: Recipe, model: TaggedModel, store: TagStore, log: Log = print,
         progress: bool = True) -> list[StagePlan]:
    """Work out every stage's key in dependency order; nothing is trained."""
    order = recipe.order()
    tagger = _tagger(recipe, model)
    held = HeldOut()
    evals: dict[str, list[tuple[EvalConfig, LoadedData]]] = {}
    for s in order:  # test data first: it is excluded from every training set
        evals[s.name] = [(e, _load(recipe, e, s, tagger, None, progress, log)) for e in s.eval]
        if recipe.exclude_eval_molecules:
            for _, d in evals[s.name]:
                held.add(d)
    keys: dict[str, str] = {t: _pretrained_key(p) for t, p in recipe.pretrained.items()}
    plans = []
    for s in order:
        data = [_load(recipe, d, s, tagger, held, progress, log) for d in s.data]
        for d in data:
            if d.config.validation_source:  # validation rows of their own
                d.val = _load(recipe, replace(d.config, source=d.config.validation_source,
                                              n=d.config.validation_n, validation_source=None,
                                              validation_n=None),
                              s, tagger, held, progress, log)
        _contexts(recipe, s, data, evals[s.name], tagger, log)
        plans.append(_stage_plan(recipe, s, data, evals[s.name], model, store, keys))
        keys.update(plans[-1].tag_keys)
    return plans


def _contexts(recipe: Recipe, s: StageConfig, data: list[LoadedData],
              evals: list[tuple[EvalConfig, LoadedData]], tagger: TaggedModel,
              log: Log) -> None:
    """In-context examples: an evaluation's from the training entry that feeds the same
    tag; a training entry's from itself (never the row itself)."""
    for e, d in evals:
        if e.context:
            pool = next((x for x in data if x.targets is not None and x.config.label
                         and set(tags_in(x.config.template)) & set(tags_in(e.template))
                         & set(s.tags)), None)
            if pool is None:
                raise RecipeError(f"{recipe.source}: stage {s.name!r} eval {e.source}: "
                                  "context needs a labelled training entry with its tag")
            add_context(d, pool, recipe.seed, tagger, s.train.max_length, log)
    for j, d in enumerate(data):  # after the evals, whose examples are the plain training rows
        if d.config.context:
            if s.train.validation > 0:  # validation rows first: never shown as examples
                train, val = validation_split(len(d.texts), s.train.validation,
                                              [s.train.seed, j], d.groups(), d.config.source)
                if len(train) + len(val) < len(d.texts):  # rows sharing groups with both
                    log(f"{d.config.source}: left out {len(d.texts) - len(train) - len(val)} "
                        "row(s) that share groups with both training and validation rows")
                held_out = set(val)
                d.val_mask = [i in held_out for i in range(len(d.texts))]
                d.keep(sorted(train + val))
            add_context(d, d, recipe.seed, tagger, s.train.max_length, log)


def _stage_plan(recipe: Recipe, s: StageConfig, data: list[LoadedData],
                evals: list[tuple[EvalConfig, LoadedData]], model: TaggedModel,
                store: TagStore, keys: dict[str, str]) -> StagePlan:
    """The stage's key material, key, per-tag keys, and whether and why it trains."""
    deps = {t: keys[t] for t in s.uses()}
    material = {
        "store_format": STORE_FORMAT,
        "base_model": model.fingerprint,
        "tags": [recipe.tag[t].to_dict() for t in s.tags],
        "train": s.train.result_dict(),
        "data": [{"template": d.config.template, "label": d.config.label,
                  "weight": d.config.weight, "rows": len(d.texts),
                  "fingerprint": d.fingerprint(), "validation": d.validation_material()}
                 for d in data],
        "deps": deps,
        "ablation": [eval_material(*evals[i], ablation_only=True) for i in ablated(s.eval)],
    }
    fits = {t: head_class(h.kind).fit_version for t in s.tags
            if (h := recipe.tag[t].head) is not None and head_class(h.kind).fit_version}
    if fits:  # keys of stages without such heads stay as they were
        material["head_fit"] = fits
    key = digest(material)
    tag_keys = {t: tag_key(key, t) for t in s.tags}
    eval_key = digest({"stage": key, "evals": [eval_material(e, d) for e, d in evals]})
    cached = all(store.has(k) for k in tag_keys.values())
    reason = "cached" if cached else _why_train(recipe, s, store, key, material)
    reevaluate = cached and _stored_eval_key(store, tag_keys[s.tags[0]]) != eval_key \
        and store.read_evals(eval_key) is None
    if reevaluate:
        reason = "cached; its evaluations changed: re-evaluated with the stored tags"
    return StagePlan(s, key, tag_keys, deps, material, data, evals, cached, reason, eval_key,
                     reevaluate)


def _stored_eval_key(store: TagStore, key: str) -> str | None:
    """The eval key the run that trained a stored tag recorded (its metadata alone, as the
    run reads a cached stage's: no tensor is loaded or hashed for a plan)."""
    return json.loads((store.path(key) / META).read_text()).get(
        "provenance", {}).get("eval_key")


def _why_train(recipe: Recipe, s: StageConfig, store: TagStore, key: str,
               material: JSONObject) -> str:
    ck = store.work_dir(key) / "state.json"
    if not ck.is_file():  # a checkpoint a kill left as .old (the run puts it back)
        old = [x for x in remove_stale(ck.parent.parent, ck.parent.name, dry_run=True)
               if (x / "state.json").is_file()]
        ck = old[0] / "state.json" if old else ck
    if ck.is_file():
        step = json.loads(ck.read_text()).get("step", 0)
        return f"resumes from its checkpoint at step {step}/{s.train.steps}"
    last = store.last_material(recipe.name, s.name)
    changed = flat_diff(last, material) if last else []
    if not changed:
        return "not trained yet"
    return ("changed since the last run: " + ", ".join(changed[:6])
            + (" ..." if len(changed) > 6 else ""))


def as_text(renderable: Any, width: int = 120) -> str:
    """A rich renderable (the plan table) as plain text, for a plain log."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue().rstrip()


def plan_table(recipe: Recipe, plans: list[StagePlan]):
    """A rich table of the plan: stage, tags, uses, steps, key, status and reason."""
    from rich.table import Table as RichTable

    t = RichTable(title=f"recipe {recipe.name} ({recipe.source}): {len(plans)} stage(s)")
    for col in ("stage", "trains", "uses (frozen)", "data rows", "steps", "key", "status"):
        t.add_column(col)
    for p in plans:
        status = ("[green]cached[/green]" if p.cached and not p.reevaluate
                  else "[green]cached[/green], [yellow]re-evaluate[/yellow]" if p.cached
                  else f"[yellow]train[/yellow]: {p.reason}")
        t.add_row(p.stage.name, " ".join(p.stage.tags), " ".join(p.deps) or "-",
                  "+".join(str(len(d.texts)) for d in p.data), str(p.stage.train.steps),
                  p.key[:12], status)
    return t
