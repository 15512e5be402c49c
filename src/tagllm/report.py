"""Result tables for the terminal (rich)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Column order of metrics (stored results have sorted keys).
ORDER = ("mse", "mae", "pearson", "spearman", "accuracy", "auroc", "bleu", "chrf", "spbleu",
         "loss", "perplexity", "tokens")


def results_table(results: dict[str, dict[str, float]], title: str):
    """Methods as rows, metrics as columns."""
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    table.add_column("method")
    first = list(next(iter(results.values())))
    names = [n for n in ORDER if n in first] + [n for n in first if n not in ORDER]
    for n in names:
        table.add_column(n.upper() if n in ("mse", "mae", "auroc", "bleu") else
                         "spBLEU" if n == "spbleu" else n.capitalize(),
                         justify="right")
    for method, m in results.items():
        table.add_row(method, *(_fmt(m.get(n)) for n in names))
    return table


def stage_tables(stages: list[dict[str, Any]]) -> list:
    """One table per evaluation of each stage: the tags' row, then baselines/ablation."""
    tables = []
    for s in stages:
        for ev in s.get("eval", []):
            label = (f"tags ({ev['tag']})" if ev.get("tag") else "tags (generation)"
                     if "bleu" in ev["metrics"] else "tags (validation loss)")
            rows = {label: ev["metrics"], **ev.get("baselines", {})}
            cached = " (cached)" if s.get("cached") else ""
            tables.append(results_table(
                rows, f"stage {s['stage']}{cached}: {ev['name']} ({ev['rows']} examples)"))
    return tables


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)
