"""Running a recipe: the stages as a dependency graph of tag trainings over the tag store.

``plan`` loads the data, works out each stage's key (see :mod:`tagllm.store`) in dependency
order and says what is cached, what will train and why. ``run`` then trains the missing
stages — each on a fresh tag bank over the same frozen base, with its dependencies loaded
frozen from the store — resuming any checkpoint, evaluates them, stores every tag with its
provenance, and exports the recipe's tags and results to the recipe's ``out`` folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagllm.data import DataError, Table, parse_labels
from tagllm.distributed import fsdp_requested, local_parameters, shard_model, world
from tagllm.heads import not_class_indices
from tagllm.model import TaggedModel
from tagllm.recipe import DataConfig, EvalConfig, Recipe, RecipeError, StageConfig, tags_in
from tagllm.serialization import META, TENSORS, atomic_write_dir, read_tag
from tagllm.sources import HELD_OUT_COLUMNS, SMILES_COLUMNS, label_columns, load_source
from tagllm.store import STORE_FORMAT, TagStore, digest, flat_diff
from tagllm.tags import InputTooLongError
from tagllm.train import Part, fit_tags

Log = Callable[[str], None]


@dataclass
class LoadedData:
    """A data entry loaded, validated and rendered."""

    config: DataConfig
    table: Table
    texts: list[str]
    targets: np.ndarray | None
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 of the rendered inputs and targets: what training actually sees."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode())
            h.update(b"\0")
        if self.targets is not None:
            h.update(np.ascontiguousarray(self.targets, dtype=np.float64).tobytes())
        return "sha256:" + h.hexdigest()


@dataclass
class StagePlan:
    """One stage of a plan: its key, whether it is cached, and why."""

    stage: StageConfig
    key: str
    tag_keys: dict[str, str]
    deps: dict[str, str]  # dependency tag -> store key (or pretrained folder)
    material: dict[str, Any]
    data: list[LoadedData]
    evals: list[tuple[EvalConfig, LoadedData]]
    cached: bool
    reason: str


def _load(cfg: DataConfig | EvalConfig, seed: int, exclude_smiles: set[str],
          exclude_sequences: set[str], progress: bool, tagger: TaggedModel,
          max_length: int, log: Log, classes: int = 0,
          held_texts: frozenset[str] = frozenset()) -> LoadedData:
    table, skipped = load_source(cfg.source, cfg.n, cfg.seed if cfg.seed is not None else seed,
                                 label=cfg.label, skip_invalid=cfg.skip_invalid,
                                 exclude_smiles=exclude_smiles,
                                 exclude_sequences=exclude_sequences, progress=progress)
    texts = table.render(cfg.template)
    held = [i for i, t in enumerate(texts) if t in held_texts]
    if held:  # the very same input is in an evaluation set: never train on it
        log(f"{cfg.source}: left out {len(held)} row(s) whose input is in an evaluation set")
        if len(held) == len(texts):
            raise DataError(f"{cfg.source}: every input is also in an evaluation set")
        keep = sorted(set(range(len(texts))) - set(held))
        table, texts = table.select(keep), [texts[i] for i in keep]
    keep, dropped = _within_length(cfg, table, texts, tagger, max_length, log)
    if dropped:
        skipped = skipped + dropped
        table, texts = table.select(keep), [texts[i] for i in keep]
    cols = label_columns(cfg.source, cfg.label)
    targets = parse_labels(table, cols[0] if len(cols) == 1 else cols) if cols else None
    if classes and targets is not None:
        bad = not_class_indices(targets, classes)
        if bad:
            raise DataError(f"{table.where(bad[0])}: label {cols[0]!r}: {targets[bad[0]]:g} is "
                            f"not a class index 0..{classes - 1} ({len(bad)} such row(s))")
    return LoadedData(cfg, table, texts, targets, skipped)


def _within_length(cfg: DataConfig | EvalConfig, table: Table, texts: list[str],
                   tagger: TaggedModel, max_length: int, log: Log, what: str = ""
                   ) -> tuple[list[int], list[str]]:
    """The entry's too_long policy on its rendered inputs: ``error`` names the first row
    over ``max_length`` tokens; ``skip`` drops those rows, counted and logged, and never
    all of them. Returns the rows to keep and a message per dropped row. Nothing is ever
    truncated."""
    lengths = [len(tagger.tagtok.encode(t).ids) for t in texts]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long and cfg.too_long == "error":
        i = long[0]
        raise InputTooLongError(
            f"{table.where(i)}: {lengths[i]} tokens{what} > max_length {max_length} "
            f"({len(long)} such input(s)); raise the stage's max_length, or set too_long: "
            "skip to drop them")
    if long:  # too_long: skip, an explicit policy: the dropped rows are counted and logged
        log(f"{cfg.source}: skipped {len(long)} of {len(texts)} input(s) longer than "
            f"{max_length} tokens{what} (too_long: skip)")
        if len(long) == len(texts):
            raise DataError(f"{cfg.source}: every input is longer than {max_length} "
                            f"tokens{what}")
    drop = set(long)
    return ([i for i in range(len(texts)) if i not in drop],
            [f"{table.where(i)}: {lengths[i]} tokens{what} > {max_length}" for i in long])


def _add_context(d: LoadedData, pool: LoadedData, seed: int, tagger: TaggedModel,
                 max_length: int, log: Log) -> None:
    """Prefix every input of ``d`` with ``k`` labelled examples drawn (seeded, per row)
    from ``pool``'s rows, each written as its input followed by its label, one per line.
    When ``pool`` is ``d`` itself a row never serves as its own example. Inputs that grow
    beyond ``max_length`` follow the entry's too_long policy."""
    k = d.config.context
    if len(pool.texts) < k + (pool is d):
        raise DataError(f"{d.config.source}: context {k} needs more than {len(pool.texts)} "
                        "labelled training rows")

    def shown(y: np.ndarray | float) -> str:
        return " ".join(f"{v:.3g}" for v in np.atleast_1d(y))

    rng = np.random.default_rng([seed, 7919])
    texts = []
    for i, t in enumerate(d.texts):
        choice: list[int] = []
        while len(choice) < k:
            j = int(rng.integers(len(pool.texts)))
            if j not in choice and not (pool is d and j == i):
                choice.append(j)
        examples = [f"{pool.texts[j]} {shown(pool.targets[j])}" for j in choice]
        texts.append("\n".join([*examples, t]))
    keep, dropped = _within_length(d.config, d.table, texts, tagger, max_length, log,
                                   f" with {k} in-context examples")
    d.skipped += dropped
    d.table = d.table.select(keep)
    d.texts = [texts[i] for i in keep]
    if d.targets is not None:
        d.targets = d.targets[keep]


def _classes(recipe: Recipe, rows: DataConfig | EvalConfig) -> int:
    """The number of classes of the classification head a labelled entry feeds (0: none)."""
    if not rows.label or not rows.template:
        return 0
    heads = [recipe.tag[t].head for t in tags_in(rows.template)
             if t in recipe.tag and recipe.tag[t].head is not None]
    head = heads[-1] if heads else None
    return head.num_outputs if head is not None and head.kind == "classification" else 0


def _pretrained_key(path: str) -> str:
    meta, _ = read_tag(path)
    return "pretrained:" + meta["files"][TENSORS]


def plan(recipe: Recipe, model: TaggedModel, store: TagStore, log: Log = print,
         progress: bool = True) -> list[StagePlan]:
    """Work out every stage's key in dependency order; nothing is trained."""
    order = recipe.order()
    tagger = TaggedModel(model.base, model.tokenizer, model.model_name)  # every tag: lengths
    for t in recipe.tags:
        if t.name not in recipe.pretrained:
            tagger.add_tag(t, init=torch.zeros(t.num_tokens, model.hidden_size))
    for name, path in recipe.pretrained.items():
        found = tagger.load_tag(path)  # verified against the base model before any training
        if found != name:
            raise RecipeError(f"{recipe.source}: pretrained {name} points to {path}, which "
                              f"holds the tag {found}")
    evals: dict[str, list[tuple[EvalConfig, LoadedData]]] = {}
    held_smiles: set[str] = set()
    held_seqs: set[str] = set()
    held_texts: set[str] = set()
    for s in order:  # test data first: it is excluded from every training set
        evals[s.name] = [(e, _load(e, recipe.seed, set(), set(), progress, tagger,
                                   s.train.max_length, log, _classes(recipe, e)))
                         for e in s.eval]
        if recipe.exclude_eval_molecules:
            for _, d in evals[s.name]:
                held_texts.update(d.texts)
                for col, values in d.table.columns.items():
                    if col.lower() in SMILES_COLUMNS:
                        held_smiles.update(values)
                    if col.lower() in HELD_OUT_COLUMNS:
                        held_seqs.update(values)
    keys: dict[str, str] = {t: _pretrained_key(p) for t, p in recipe.pretrained.items()}
    out: list[StagePlan] = []
    for s in order:
        data = [_load(d, recipe.seed, held_smiles, held_seqs, progress, tagger,
                      s.train.max_length, log, _classes(recipe, d), frozenset(held_texts))
                for d in s.data]
        for e, d in evals[s.name]:
            if e.context:  # examples from the training entry that feeds the same tag
                pool = next((x for x in data if x.targets is not None and x.config.label
                             and set(tags_in(x.config.template)) & set(tags_in(e.template))
                             & set(s.tags)), None)
                if pool is None:
                    raise RecipeError(f"{recipe.source}: stage {s.name!r} eval {e.source}: "
                                      "context needs a labelled training entry with its tag")
                _add_context(d, pool, recipe.seed, tagger, s.train.max_length, log)
        for d in data:  # after the evals, whose examples are the plain training rows
            if d.config.context:  # examples from the entry itself, never the row itself
                _add_context(d, d, recipe.seed, tagger, s.train.max_length, log)
        deps = {t: keys[t] for t in s.uses()}
        material = {
            "store_format": STORE_FORMAT,
            "base_model": model.fingerprint,
            "tags": [recipe.tag[t].to_dict() for t in s.tags],
            "train": s.train.result_dict(),
            "data": [{"template": d.config.template, "label": d.config.label,
                      "weight": d.config.weight, "rows": len(d.texts),
                      "fingerprint": d.fingerprint()} for d in data],
            "deps": deps,
        }
        key = digest(material)
        tag_keys = {t: digest({"stage": key, "tag": t}) for t in s.tags}
        keys.update(tag_keys)
        cached = all(store.has(k) for k in tag_keys.values())
        if cached:
            reason = "cached"
        else:
            ck = store.work_dir(key) / "state.json"
            if ck.is_file():
                step = json.loads(ck.read_text()).get("step", 0)
                reason = f"resumes from its checkpoint at step {step}/{s.train.steps}"
            else:
                last = store.last_material(recipe.name, s.name)
                changed = flat_diff(last, material) if last else []
                reason = ("changed since the last run: " + ", ".join(changed[:6])
                          + (" ..." if len(changed) > 6 else "")) if changed else "not trained yet"
        out.append(StagePlan(s, key, tag_keys, deps, material, data, evals[s.name], cached,
                             reason))
    return out


def plan_table(recipe: Recipe, plans: list[StagePlan]):
    """A rich table of the plan: stage, tags, uses, steps, key, status and reason."""
    from rich.table import Table as RichTable

    t = RichTable(title=f"recipe {recipe.name} ({recipe.source}): {len(plans)} stage(s)")
    for col in ("stage", "trains", "uses (frozen)", "data rows", "steps", "key", "status"):
        t.add_column(col)
    for p in plans:
        status = ("[green]cached[/green]" if p.cached
                  else f"[yellow]train[/yellow]: {p.reason}")
        t.add_row(p.stage.name, " ".join(p.stage.tags), " ".join(p.deps) or "-",
                  "+".join(str(len(d.texts)) for d in p.data), str(p.stage.train.steps),
                  p.key[:12], status)
    return t


def _stage_model(base_model: TaggedModel, p: StagePlan, recipe: Recipe,
                 store: TagStore) -> TaggedModel:
    """A fresh tag bank on the shared frozen base: dependencies frozen, new tags trainable."""
    m = TaggedModel(base_model.base, base_model.tokenizer, base_model.model_name)
    for t, k in p.deps.items():
        m.load_tag(recipe.pretrained[t] if k.startswith("pretrained:") else store.path(k))
    torch.manual_seed(p.stage.train.seed)
    for t in p.stage.tags:
        m.add_tag(recipe.tag[t], seed=p.stage.train.seed)
    return m


def _generation_eval(m: TaggedModel, e: EvalConfig, d: LoadedData, name: str,
                     baselines: bool, progress: bool) -> dict[str, Any]:
    """Greedy generation from each input, cut at its first line break, scored against the
    reference column with sacrebleu; beside it the copy-the-source baseline and the same
    frozen model prompted in plain text (no tags)."""
    from tagllm.evaluate import first_line, translation_metrics

    refs = d.table[e.reference]

    def generate(texts: list[str]) -> list[str]:
        return [first_line(t) for t in m.generate(texts, max_new_tokens=e.max_new_tokens,
                                                  stop=["\n"], progress=progress)]

    hyps = generate(d.texts)
    row: dict[str, Any] = {"name": name, "rows": len(d.texts),
                           "metrics": translation_metrics(hyps, refs, e.spm_model),
                           "examples": [{"input": d.texts[i], "output": hyps[i],
                                         "reference": refs[i]} for i in range(min(3, len(hyps)))]}
    if baselines and e.baselines:
        row["baselines"] = {}
        if "copy" in e.baselines:
            row["baselines"]["copy the source"] = translation_metrics(
                d.table[e.source_column], refs, e.spm_model)
        if "prompt" in e.baselines:
            prompts = d.table.render(e.prompt)
            row["baselines"]["plain-text prompt (no tags)"] = translation_metrics(
                generate(prompts), refs, e.spm_model)
    return row


def _evaluate(m: TaggedModel, p: StagePlan, progress: bool, baselines: bool = True,
              evals: list[tuple[EvalConfig, LoadedData]] | None = None
              ) -> list[dict[str, Any]]:
    """One result row per eval entry of the stage (or of ``evals``, a subset of them)."""
    from tagllm.evaluate import (
        KNN_INPUTS,
        classification_metrics,
        head_metrics,
        knn_baseline,
        lm_metrics,
        mean_baseline,
    )
    from tagllm.evaluate import regression_metrics as reg

    results = []
    for e, d in p.evals if evals is None else evals:
        name = e.name or f"{e.source}" + (f" n={len(d.texts)}" if e.n else "")
        if e.label:
            tag = next(t for t in tags_in(e.template) if t in p.stage.tags
                       and m.head(t) is not None and m.head(t).has_parameters)
            row = {"name": name, "tag": tag, "rows": len(d.texts),
                   "metrics": head_metrics(m, d.texts, d.targets, tag, progress=progress)}
            train = next((x for x in p.data if x.targets is not None
                          and tag in tags_in(x.config.template)), None)
            if baselines and train is not None and e.baselines:
                head = m.head(tag)
                classes = head.num_outputs if head.kind == "classification" else 0
                score = (lambda y, p: classification_metrics(y, p)) if classes else reg
                row["baselines"] = {}
                inputs = [c for c in KNN_INPUTS if c in train.table.columns
                          and c in d.table.columns]
                if "knn" in e.baselines and len(inputs) == 1:  # one input column only
                    c = inputs[0]
                    name = {"smiles": "Morgan k-NN (k=5)", "sequence": "3-mer k-NN (k=5)"}[c]
                    row["baselines"][name] = score(d.targets, knn_baseline(
                        train.table[c], train.targets, d.table[c], column=c, classes=classes))
                if "mean" in e.baselines:
                    row["baselines"]["training class frequencies" if classes
                                     else "training mean"] = score(
                        d.targets, mean_baseline(train.targets, len(d.targets), classes))
        elif e.reference:
            row = _generation_eval(m, e, d, name, baselines, progress)
        else:
            row = {"name": name, "rows": len(d.texts),
                   "metrics": lm_metrics(m, d.texts, max_length=p.stage.train.max_length,
                                         progress=progress)}
        results.append(row)
    return results


@dataclass
class RunSummary:
    """What ``run`` did: per stage, whether it trained and how many steps it took."""

    recipe: str
    out: str
    stages: list[dict[str, Any]]
    seconds: float

    @property
    def steps_run(self) -> int:
        return sum(s["steps_run"] for s in self.stages)


def run(recipe: Recipe, store: TagStore | None = None, dry_run: bool = False,
        log: Log = print, progress: bool = True, show: Callable[[Any], None] | None = None,
        fsdp: bool | None = None) -> RunSummary:
    """Train what is missing in dependency order; reuse what the store has.

    Under a multi-process launch with ``fsdp`` (default: :func:`fsdp_requested`), the base
    model's blocks are sharded across the processes (:func:`shard_model`)."""
    t0 = time.perf_counter()
    store = store or TagStore()
    show = show or (lambda x: log(str(x)))
    w = world()
    if not w.is_main:  # under a multi-process launch one process reports and writes
        log, show, progress = (lambda m: None), (lambda x: None), False
    fsdp = w.distributed and (fsdp_requested() if fsdp is None else fsdp)
    # a model to shard loads on the CPU first: each process's device then gets its shard
    base = TaggedModel.from_pretrained(recipe.model, device="cpu" if fsdp else w.device)
    log(f"base model {base.model_name} ({type(base.base).__name__}, fingerprint "
        f"{base.fingerprint[:19]}); tag store {store.root}")
    if fsdp:
        n = shard_model(base.base, w)
        mine, total = local_parameters(base.base)
        log(f"FSDP: {n} transformer blocks sharded across {w.size} processes; this process "
            f"holds {mine:,} of the base model's {total:,} parameters")
    plans = plan(recipe, base, store, log, progress)
    show(plan_table(recipe, plans))
    for p in plans:
        for d in p.data:
            if d.skipped:
                more = f" (and {len(d.skipped) - 3} more)" if len(d.skipped) > 3 else ""
                log(f"stage {p.stage.name}: skipped {len(d.skipped)} row(s) of "
                    f"{d.config.source}: " + "; ".join(d.skipped[:3]) + more)
    if dry_run:
        return RunSummary(recipe.name, recipe.out,
                          [{"stage": p.stage.name, "cached": p.cached, "steps_run": 0,
                            "reason": p.reason, "key": p.key} for p in plans],
                          time.perf_counter() - t0)
    stages = []
    for p in plans:
        if p.cached:
            meta = json.loads((store.path(p.tag_keys[p.stage.tags[0]]) / META).read_text())
            prov = meta["provenance"]  # what the run that trained it measured
            stages.append({"stage": p.stage.name, "cached": True, "steps_run": 0, "key": p.key,
                           "trained": meta.get("created"), "seconds": prov.get("seconds"),
                           "final_loss": prov.get("final_loss"), "eval": prov.get("eval", [])})
            if w.is_main:
                store.remember(recipe.name, p.stage.name, p.material)
            continue
        stages.append(_train_stage(recipe, base, p, store, log, progress))
    summary = RunSummary(recipe.name, recipe.out, stages, time.perf_counter() - t0)
    if w.is_main:
        export(recipe, plans, store, summary)
    w.barrier()
    return summary


def _train_stage(recipe: Recipe, base: TaggedModel, p: StagePlan, store: TagStore, log: Log,
                 progress: bool) -> dict[str, Any]:
    s = p.stage
    log(f"stage {s.name}: training {', '.join(s.tags)} ({p.reason})")
    m = _stage_model(base, p, recipe, store)
    ablated = [i for i, (e, _) in enumerate(p.evals) if e.ablation and (e.label or e.reference)]

    def before_training() -> dict | None:  # the honest ablation: what do trained tags add?
        if not ablated:
            return None
        return {"eval": _evaluate(m, p, progress, baselines=False,
                                  evals=[p.evals[i] for i in ablated])}

    parts = [Part(d.texts, d.targets, d.config.weight, f"stage {s.name} data[{j}] "
                  f"({d.config.source})") for j, d in enumerate(p.data)]
    res = fit_tags(m, s.tags, parts, s.train, progress, log, before_training,
                   store.work_dir(p.key))
    evals = _evaluate(m, p, progress)
    if res.after_warm_start:
        for i, before in zip(ablated, res.after_warm_start["eval"], strict=True):
            what = (f"{before['tag']} untrained, head fitted" if before.get("tag")
                    else f"{', '.join(s.tags)} untrained")  # generation: the starting tags
            evals[i].setdefault("baselines", {})[f"ablation: {what}"] = before["metrics"]
    for row in evals:
        log(f"stage {s.name} eval {row['name']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row["metrics"].items()))
    provenance = {
        "recipe": recipe.name, "recipe_file": recipe.source, "stage_key": p.key,
        "stage": asdict(s), "key_material": p.material,
        "data": [{"source": d.config.source, "n": d.config.n, "rows": len(d.texts),
                  "seed": d.config.seed if d.config.seed is not None else recipe.seed,
                  "skipped": len(d.skipped), "fingerprint": d.fingerprint()} for d in p.data],
        "seed": s.train.seed, "steps": res.steps, "resumed_from": res.resumed_from,
        "processes": len(res.examples_per_process), "sharded_base": m.sharded,
        "examples_per_process": res.examples_per_process,
        "seconds": round(res.seconds, 1), "final_loss": res.final_loss,
        "warm_start": res.warm_start, "eval": evals,
    }
    if world().is_main:  # the tags are equal on every process: one writes them
        for t in s.tags:  # each tag of a stage is stored under its own key
            m.save_tag(t, store.path(p.tag_keys[t]),
                       provenance={**provenance, "key": p.tag_keys[t]},
                       trained_with=[x for x in m.bank.names if x != t])
        store.clear_work(p.key)
        store.remember(recipe.name, s.name, p.material)
    world().barrier()
    return {"stage": s.name, "cached": False, "steps_run": res.steps_run, "key": p.key,
            "examples_per_process": res.examples_per_process,
            "resumed_from": res.resumed_from, "seconds": round(res.seconds, 1),
            "final_loss": res.final_loss, "eval": evals}


def export(recipe: Recipe, plans: list[StagePlan], store: TagStore, summary: RunSummary) -> None:
    """Copy the recipe's tags to ``out/tags/<Name>`` and write ``out/results.json``."""
    out = Path(recipe.out)
    for p in plans:
        for t, k in p.tag_keys.items():
            target = out / "tags" / t.strip("<>")
            src = store.path(k)
            if (target / TENSORS).is_file() and (target / META).is_file() and all(
                    (target / f).read_bytes() == (src / f).read_bytes() for f in (TENSORS, META)):
                continue

            def fill(tmp: Path, src: Path = src) -> None:
                for f in (TENSORS, META):
                    shutil.copy2(src / f, tmp / f)

            atomic_write_dir(target, fill)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"recipe": recipe.name, "recipe_file": recipe.source, "model": recipe.model,
           "stages": summary.stages, "seconds": round(summary.seconds, 1),
           "tags": {t: str(out / "tags" / t.strip("<>")) for p in plans for t in p.tag_keys}}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    tmp.replace(out / "results.json")
