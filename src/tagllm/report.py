"""Result tables for the terminal (rich)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from tagllm.records import EvalResult, StageResult

if TYPE_CHECKING:
    import torch

    from tagllm.records import JSONObject, JSONValue
    from tagllm.store import StoreEntry

#: Column order of metrics (stored results have sorted keys).
ORDER = ("mse", "mae", "pearson", "spearman", "ci", "accuracy", "auroc", "bleu", "chrf",
         "spbleu", "loss", "perplexity", "tokens")


def results_table(results: dict[str, dict[str, float]], title: str):
    """Methods as rows, metrics as columns."""
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    table.add_column("method")
    names = in_order(next(iter(results.values())))
    for n in names:
        table.add_column(_header(n), justify="right")
    for method, m in results.items():
        table.add_row(method, *(_fmt(m.get(n)) for n in names))
    return table


def method_rows(ev: EvalResult) -> dict[str, dict[str, float | None]]:
    """An evaluation as methods -> metrics: the tags first, then baselines/ablation."""
    return {ev.label: ev.metrics, **{n: s.metrics for n, s in ev.methods.items()}}


def eval_table(ev: EvalResult, prefix: str = ""):
    """One evaluation of ``tagllm run`` or ``tagllm evaluate`` as a table."""
    return results_table(method_rows(ev), f"{prefix}{ev.name} ({ev.rows} examples)")


def interval_table(ev: EvalResult):
    """The paired bootstrap intervals of an evaluation: tags minus each method, per
    metric (None when it has none)."""
    from rich.table import Table as RichTable

    intervals = {n: s.interval for n, s in ev.methods.items() if s.interval}
    if not intervals:
        return None
    names = in_order(next(iter(intervals.values())))
    table = RichTable(title=f"tags minus method on the same {ev.rows} rows: 95% paired "
                      "bootstrap interval (MSE, MAE: below 0 = tags better; others: above 0)")
    table.add_column("method")
    for n in names:
        table.add_column(_header(n), justify="right")
    for method, m in intervals.items():
        table.add_row(method, *("n/a" if m.get(n) is None
                                else f"[{m[n][0]:+.4f}, {m[n][1]:+.4f}]" for n in names))
    return table


def stage_tables(stages: list[StageResult]) -> list:
    """Per evaluation of each stage: the tags' row, then baselines/ablation; then the
    intervals of the differences, if any."""
    out = []
    for s in stages:
        for ev in s.eval:
            out.append(eval_table(ev, f"stage {s.stage}{' (cached)' if s.cached else ''}: "))
            out += [t for t in [interval_table(ev)] if t is not None]
    return out


def cost_table(stages: list[StageResult]):
    """The cost account of the stages trained in this run (None if none was): each phase's
    seconds, forward tokens and the process's peak memory by its end, then per stage the
    tokens it could not avoid and the ratio (measured / unavoidable, the baselines
    apart)."""
    from rich.table import Table as RichTable

    trained = [s for s in stages if s.costs]
    if not trained:
        return None
    table = RichTable(title="cost account: seconds, forward tokens and peak memory per phase")
    for col, justify in (("phase", "left"), ("seconds", "right"), ("tokens", "right"),
                         ("peak GB by its end", "right")):
        table.add_column(col, justify=justify)
    for s in trained:
        c = s.costs
        for name, v in c.phases.items():
            peak = f"{v.peak_gb:.2f}" if v.peak_gb is not None else ""
            table.add_row(name, f"{v.seconds:.1f}", f"{v.tokens:,}", peak)
        need = sum(c.unavoidable.values())
        ratio = "n/a (generation)" if c.ratio is None else f"{c.ratio:.3f}"
        table.add_row(f"[bold]stage {s.stage}: measured / unavoidable[/bold]", "",
                      f"{c.forward_tokens:,} / {need:,} = {ratio}", "", end_section=True)
    return table


def store_table(root: Any, rows: list[StoreEntry],
                problems: dict[str, str | None] | None = None):
    """The tag store as a table; ``problems`` (key -> error or None) adds "ok" or the error
    after each verified key."""
    from rich.table import Table as RichTable

    table = RichTable(title=f"tag store {root}: {len(rows)} tag(s)")
    for col in ("name", "kind", "p", "base model", "metric", "recipe/stage", "key", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.name), str(r.kind), str(r.num_tokens), str(r.base_model),
                      r.metric or r.error or "", f"{r.recipe}/{r.stage}",
                      r.key + _verified(problems, r.key), str(r.created or ""))
    return table


def _verified(problems: dict[str, str | None] | None, key: str) -> str:
    if problems is None:
        return ""
    return f" [red]{problems[key]}[/red]" if problems.get(key) else " [green]ok[/green]"


def _header(n: str) -> str:
    return n.upper() if n in ("mse", "mae", "auroc", "bleu") else \
        "spBLEU" if n == "spbleu" else n.capitalize()


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def tag_summary(meta: JSONObject, tensors: dict[str, torch.Tensor]):
    """A tag folder at a glance (``tagllm inspect``): what the tag is, its head, the base
    model and tags it needs, how it was trained and what its test said; the whole tag.json
    is ``inspect --full``. Provenance is free-form (a tag saved outside a recipe, an older
    tagllm): what it lacks is left out."""
    from rich.table import Table as RichTable

    def part(d: JSONValue, key: str) -> JSONObject:
        v = d.get(key) if isinstance(d, dict) else None
        return v if isinstance(v, dict) else {}

    def count(n: Any) -> str:
        return f"{n:,}" if isinstance(n, int) else "?"

    cfg, base, prov = part(meta, "config"), part(meta, "base_model"), part(meta, "provenance")
    head = part(cfg, "head")
    rows = [("tag", f"{meta.get('name')} ({meta.get('kind')}), {meta.get('num_tokens')} "
                    f"vectors x {meta.get('hidden_size')}"
                    + "".join(f", {k} {cfg[k]}" for k in ("depth", "reparam") if cfg.get(k)))]
    if head:
        read = ", ".join(f"{k} {head[k]}" for k in ("readout_layer", "pool") if k in head)
        outputs = "the model's LM head" if head.get("kind") == "lm" else \
            f"{head.get('num_outputs')} output(s)"
        rows.append(("head", f"{head.get('kind')}, {outputs}"
                             + (f", loss {head['loss']}" if head.get("loss") else "")
                             + (f", reads {read}" if read else "")))
    rows.append(("base model", f"{base.get('name')} ({base.get('architecture')}), "
                               f"fingerprint {base.get('fingerprint')} of its "
                               f"{base.get('fingerprint_of', 'input embeddings')}"))
    if isinstance(meta.get("trained_with"), dict) and meta["trained_with"]:
        rows.append(("trained with", ", ".join(meta["trained_with"])))
    if prov.get("recipe"):
        val = part(prov, "validation")
        kept = f", kept step {val['kept_step']}" if val.get("kept_step") is not None else ""
        secs = prov.get("seconds")
        rows.append(("trained by", f"recipe {prov['recipe']} ({prov.get('recipe_file')}), "
                                   f"stage {part(prov, 'stage').get('name')}: "
                                   f"{prov.get('steps')} steps{kept}, "
                                   + (f"{secs:,.0f} s, " if isinstance(secs, int | float)
                                      else "") + f"{meta.get('created')}"))
    data = prov.get("data")
    for d in data if isinstance(data, list) else []:
        if isinstance(d, dict):
            rows.append(("data", f"{d.get('source')}: {count(d.get('rows'))} rows"))
    evals = prov.get("eval")
    for ev in evals if isinstance(evals, list) else []:
        metrics = part(ev, "metrics")
        if metrics:
            text = ", ".join(f"{k} {_fmt(metrics[k])}" for k in in_order(metrics))
            rows.append(("test", f"{ev.get('name')} ({count(ev.get('rows'))} rows): {text}"))
    versions = part(meta, "versions")
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    rows += [(f"tensor {k}", f"{tuple(t.shape)} {t.dtype}") for k, t in sorted(tensors.items())]
    table = RichTable(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    return table


def in_order(metrics: Iterable[str]) -> list[str]:
    """Metric names in the order tables show them (:data:`ORDER`, then the others as
    given)."""
    given = list(metrics)
    return [n for n in ORDER if n in given] + [n for n in given if n not in ORDER]
