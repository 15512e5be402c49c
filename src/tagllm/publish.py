"""Results pages generated from results files, never typed by hand: one self-contained HTML
page (plots embedded as PNG data, styles inline, no external URL) and/or a Markdown page
with its plots as files beside it.

Inputs: run folders of ``tagllm run`` (their ``results.json``), such files themselves,
rows of ``tagllm evaluate --json_out``, and the JSON of ``benchmarks/ablations.py`` and
``benchmarks/tag_training_sweep.py``. Per
evaluation: a table of every method (the tags, each baseline, the untrained-tag ablation)
with its metrics, the paired-bootstrap 95% interval of tags minus the method, trainable
parameters and wall time; plots of the learning curves (train and validation), predicted
against true, and the interval of every comparison. An ablation file adds the metric
against the tag length p with its seed-to-seed spread.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagllm.errors import DataError
from tagllm.fileio import atomic_write_text
from tagllm.records import (
    EVAL_FORMAT,
    RUN_FORMAT,
    EvalResult,
    JSONObject,
    Metrics,
    RunResults,
    StageResult,
)
from tagllm.report import in_order

#: metrics where lower is better (every other one: higher is better)
LOWER_BETTER = {"mse", "mae", "loss", "perplexity"}


@dataclass
class Figure:
    slug: str
    title: str
    png: bytes


@dataclass
class Section:
    """A heading, paragraphs, tables (header, rows) and figures, in that order."""

    title: str
    level: int = 2
    text: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


#: the benchmark files the report reads, by their declared ``benchmark``
BENCHMARKS = {"qed-ablations": "ablations", "tag-training-sweep": "training-sweep"}


def load(path: str | Path) -> tuple[str, RunResults | EvalResult | JSONObject]:
    """(kind, document) of a results file or a run folder, read by the format it declares:
    ``run`` (a :class:`RunResults`), ``eval`` (an :class:`EvalResult`), or a benchmark's
    file (``ablations``, ``training-sweep``: its JSON). Files written before formats were
    declared are recognised by their keys."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise DataError(f"{path}: no results file (a run folder holds results.json)")
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not a JSON results file ({e})") from None
    if not isinstance(doc, dict):
        doc = {}
    declared = doc.get("format")
    if declared not in (None, RUN_FORMAT, EVAL_FORMAT):
        raise DataError(f"{p}: results format {declared!r} is not one this tagllm reads "
                        f"({RUN_FORMAT}, {EVAL_FORMAT}); a newer tagllm wrote it")
    if declared == RUN_FORMAT or (declared is None and "stages" in doc and "recipe" in doc):
        return "run", RunResults.from_json(doc, str(p))
    if doc.get("benchmark") in BENCHMARKS:
        return BENCHMARKS[doc["benchmark"]], doc
    if declared == EVAL_FORMAT or (declared is None and "metrics" in doc and "name" in doc):
        return "eval", EvalResult.from_json(doc, str(p))
    raise DataError(f"{p}: neither a run's results.json, an evaluation row (tagllm evaluate "
                    "--json_out) nor an ablations or tag-training-sweep benchmark file")


# ----------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_figure(stage: StageResult, slug: str) -> Figure | None:
    """Train and validation loss against the step, the kept step marked."""
    curve = stage.curve
    if not curve:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    tr = [(c["step"], c["train_loss"]) for c in curve if c.get("train_loss") is not None]
    va = [(c["step"], c["validation_loss"]) for c in curve
          if c.get("validation_loss") is not None]
    if tr:
        ax.plot(*zip(*tr, strict=True), "o-", label="train (mean since last point)")
    if va:
        ax.plot(*zip(*va, strict=True), "s-", label="validation")
    kept = stage.kept_step
    if kept is not None:
        ax.axvline(kept, color="grey", ls=":", label="kept step")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage {stage.stage}: learning curve")
    ax.legend(fontsize=8)
    return Figure(slug, f"stage {stage.stage}: learning curve", _png(fig))


def truth_figure(ev: EvalResult, slug: str) -> Figure | None:
    """Predicted against true (regression; one panel per output, at most 6) or the ROC
    curve (two classes)."""
    if ev.predictions is None or ev.targets is None:
        return None
    y, p = np.asarray(ev.targets, dtype=float), np.asarray(ev.predictions, dtype=float)
    plt = _plt()
    if "auroc" in ev.metrics:
        if p.ndim != 2 or p.shape[1] != 2 or len(np.unique(y)) < 2:
            return None
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y.astype(int), p[:, 1])
        fig, ax = plt.subplots(figsize=(3.8, 3.6))
        ax.plot(fpr, tpr, label=f"tags (AUROC {ev.metrics['auroc']:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
        title = f"{ev.name}: ROC of the tags"
    else:
        y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
        k = min(y.shape[1], 6)
        fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), squeeze=False)
        for j, ax in enumerate(axes[0]):
            ax.scatter(y[:, j], p[:, j], s=6, alpha=0.5)
            lo, hi = min(y[:, j].min(), p[:, j].min()), max(y[:, j].max(), p[:, j].max())
            ax.plot([lo, hi], [lo, hi], color="grey", ls=":")
            ax.set_xlabel("true" + (f" (output {j})" if k > 1 else ""))
            ax.set_ylabel("predicted")
        title = f"{ev.name}: predicted vs true (tags)"
    fig.suptitle(title, fontsize=10)
    return Figure(slug, title, _png(fig))


def interval_figure(ev: EvalResult, metric: str, slug: str) -> Figure | None:
    """Tags minus each method on ``metric``: the observed difference and its interval."""
    rows = [(m, ev.metrics[metric] - b.metrics[metric], (b.interval or {}).get(metric))
            for m, b in ev.methods.items()
            if b.metrics.get(metric) is not None and b.metrics[metric] == b.metrics[metric]]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    for i, (_, d, ci) in enumerate(rows):
        if ci:
            ax.plot(ci, [i, i], color="C0", lw=3)
        ax.plot([d], [i], "ko", ms=4)
    ax.axvline(0, color="grey", ls=":")
    ax.set_yticks(range(len(rows)), [_short(m) for m, _, _ in rows], fontsize=8)
    better = "left" if metric in LOWER_BETTER else "right"
    ax.set_xlabel(f"tags minus method, {metric} (95% paired bootstrap; tags better to the "
                  f"{better})")
    ax.invert_yaxis()
    title = f"{ev.name}: tags against every method ({metric})"
    ax.set_title(title, fontsize=10)
    return Figure(slug, title, _png(fig))


def sweep_figure(doc: JSONObject, slug: str) -> Figure | None:
    """Test MSE against the tag length p: mean and spread over seeds, trained and step 0."""
    by_p: dict[int, dict[str, list[float]]] = {}
    for r in doc.get("rows", []):
        if re.fullmatch(r"<QED_p\d+_s\d+>", r.get("name", "")) and "test" in r:
            d = by_p.setdefault(int(r["p"]), {"trained": [], "step0": []})
            d["trained"].append(r["test"]["mse"])
            if r.get("test_step0"):
                d["step0"].append(r["test_step0"]["mse"])
    if not by_p:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ps = sorted(by_p)
    for key, label, marker in (("trained", "trained tag", "o"),
                               ("step0", "untrained tag (step 0)", "s")):
        xs = [p for p in ps if by_p[p][key]]
        mean = [float(np.mean(by_p[p][key])) for p in xs]
        sd = [float(np.std(by_p[p][key])) for p in xs]
        ax.errorbar(xs, mean, yerr=sd, marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ps, [str(p) for p in ps])
    ax.set_xlabel("tag length p (vectors)")
    ax.set_ylabel("test MSE (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    title = "QED: test MSE against the tag length p"
    ax.set_title(title, fontsize=10)
    return Figure(slug, title, _png(fig))


def training_curves_figure(task: str, doc: JSONObject, slug: str) -> Figure | None:
    """Validation loss of every cell of a tag-training sweep against the step, relative to
    its step 0 (the untrained tag with its closed-form head): below 1 the training helps."""
    cells = {k: c for k, c in (doc.get("cells") or {}).items() if c.get("curve")}
    if not cells:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, c in sorted(cells.items()):
        start = c["validation_loss_step0"]
        pts = [(p["step"], p["validation_loss"] / start) for p in c["curve"]
               if p.get("validation_loss") is not None]
        ax.plot(*zip(*pts, strict=True), "o-", ms=2.5, lw=1, label=name)
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss / step 0")
    title = f"{task}: validation loss of every setting, relative to the untrained tag"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return Figure(slug, title, _png(fig))


# ----------------------------------------------------------------- sections
def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def _slug(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:80]


def primary_metric(metrics: Metrics) -> str:
    for m in ("mse", "auroc", "chrf", "loss"):
        if m in metrics:
            return m
    return next(iter(metrics))


def eval_section(ev: EvalResult, where: str, command: str | None,
                 seconds: float | None = None) -> Section:
    """One evaluation: the method table and its figures."""
    metrics = in_order(ev.metrics)
    key = primary_metric(ev.metrics)
    header = ["method", *metrics, f"tags − method, {key} (95% CI)", "trainable parameters",
              "seconds"]
    rows = [[ev.label, *(_fmt(ev.metrics.get(m)) for m in metrics), "—",
             _fmt(ev.trainable_parameters), _fmt(seconds)]]
    for method, m in ev.methods.items():
        ci, c = (m.interval or {}).get(key), m.cost
        rows.append([method, *(_fmt(m.metrics.get(x)) for x in metrics),
                     f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "n/a",
                     _fmt(c.trainable_parameters) if c else
                     ("0 (the tags' own)" if method.startswith("ablation") else "n/a"),
                     _fmt(c.seconds if c else None)])
    s = Section(f"{where}: {ev.name} ({ev.rows:,} rows)", level=3)
    better = "below 0" if key in LOWER_BETTER else "above 0"
    s.text.append(f"Every method on the same {ev.rows:,} test rows. The interval is the "
                  f"paired bootstrap 95% interval of the tags' {key} minus the method's "
                  f"({better}: the tags are better; an interval that holds 0 is no "
                  "difference).")
    if command:
        s.text.append(f"Regenerate: `{command}`")
    s.tables.append((header, rows))
    base = _slug(where, ev.name)
    s.figures += [f for f in (truth_figure(ev, base + "-truth"),
                              interval_figure(ev, key, base + "-methods")) if f]
    return s


def run_sections(doc: RunResults, path: str, seen: set[str] | None = None
                 ) -> list[Section]:
    """A run's sections; a stage whose key is in ``seen`` (shown for an earlier run: a
    shared stored stage) is not shown again."""
    seen = set() if seen is None else seen
    recipe = doc.recipe
    command = f"tagllm run {doc.recipe_file or recipe}"
    top = Section(f"Recipe {recipe}", text=[
        f"Base model `{doc.model}`; {len(doc.stages)} stage(s); "
        f"{_fmt(doc.seconds)} s for the run that wrote `{path}` (stored stages are "
        f"reused, their own training time is listed below). Command: `{command}`."])
    top.tables.append((["stage", "trained here", "steps", "kept step", "seconds"],
                       [[s.stage, "no (stored)" if s.cached else "yes", _fmt(s.steps_run),
                         _fmt(s.kept_step), _fmt(s.seconds)] for s in doc.stages]))
    out = [top]
    for s in doc.stages:
        if s.key in seen:
            continue
        seen.add(s.key)
        fig = curve_figure(s, _slug(recipe, s.stage, "curve"))
        if fig is None and not s.eval:
            continue
        sec = Section(f"{recipe} / stage {s.stage}", level=3)
        if fig:
            sec.figures.append(fig)
        out.append(sec)
        out += [eval_section(e, f"{recipe} / {s.stage}", command, s.seconds) for e in s.eval]
    return out


def ablation_sections(doc: JSONObject) -> list[Section]:
    s = Section("QED ablations and the tag-length sweep", text=[
        f"{doc.get('train_rows', '?')} training and {doc.get('test_rows', '?')} test "
        f"molecules, base model `{doc.get('model')}`, {doc.get('machine', '')}, "
        f"{doc.get('date', '')}. Each row's interval is the paired bootstrap 95% interval "
        f"of the reference tag ({doc.get('reference')}) minus the row, on test MSE."])
    rows = []
    for r in doc.get("rows", []):
        t, ci = r.get("test") or {}, (r.get("reference_minus_this") or {}).get("mse")
        rows.append([r["name"], _fmt(t.get("mse")), _fmt(t.get("pearson")),
                     _fmt((r.get("test_step0") or {}).get("mse")),
                     _fmt(r.get("validation_loss")), _fmt(r.get("best_step")),
                     f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "n/a",
                     _fmt(r.get("parameters")), _fmt(r.get("seconds"))])
    s.tables.append((["row", "test MSE", "test Pearson", "step-0 test MSE",
                      "validation loss", "kept step", "reference − row, MSE (95% CI)",
                      "trainable parameters", "seconds"], rows))
    fig = sweep_figure(doc, "qed-sweep")
    if fig:
        s.figures.append(fig)
    for run in doc.get("runs", []):
        s.text.append(f"Run: `{run['command']}` ({_fmt(run.get('seconds'))} s, peak "
                      f"{_fmt(run.get('peak_rss_gb'))} GB)")
    return [s]


def _interval(d: JSONObject | None, metric: str) -> str:
    ci = (d or {}).get(metric)
    return f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "n/a"


def training_sweep_sections(doc: JSONObject) -> list[Section]:
    """A tag-training sweep: per task, the settings chosen on validation scored once on the
    test set against the same tag untrained and the baselines; every cell's validation
    curve."""
    s = Section("Tag training: trained tags against their untrained start", text=[
        "Each setting (learning rate, optimizer, head re-fits, the tag's parameterisation) "
        "trains a fresh function tag, early-stopped on validation rows; step 0 is the "
        "untrained tag with its closed-form head. The best setting of each variant is chosen "
        "on validation and scored once on the test set. Intervals: paired bootstrap 95% of "
        "the trained tag minus the other method (`better`: the interval excludes zero in "
        "the trained tag's favour)."])
    rows = []
    tasks = doc.get("tasks") or {}
    for e in [e for t in tasks.values() for e in t.get("summary", [])] or doc.get("summary", []):
        d = e["trained_minus_untrained"]
        m = d["metric"]
        rows.append([e["task"], e.get("variant", ""), e["setting"], _fmt(e["test"][m]),
                     _fmt(e["untrained_test"][m]), f"[{d['low']:+.4g}, {d['high']:+.4g}]",
                     "yes" if d["better"] else "no",
                     *(_interval(e.get(f"trained_minus_{b}"), m)
                       for b in ("rf", "chemprop"))])
    s.tables.append((["task", "variant", "setting (chosen on validation)", "test metric",
                      "untrained", "trained − untrained (95% CI)", "better",
                      "trained − random forest", "trained − Chemprop"], rows))
    out = [s]
    for task, t in tasks.items():
        sub = Section(f"Tag training sweep: {task}", level=3, text=[
            f"Base model `{t.get('model')}`, {_fmt(t.get('train_rows'))} training rows (10% "
            f"held out for validation), {_fmt(t.get('test_rows'))} test rows; "
            f"{t.get('machine', '')}, {t.get('date', '')}."])
        base = t.get("baselines_test") or {}
        if base:
            cols = sorted({k for v in base.values() for k in v})
            sub.tables.append((["baseline", *cols],
                               [[n, *(_fmt(v.get(k)) for k in cols)] for n, v in base.items()]))
        sub.tables.append((["setting", "steps run", "kept step", "validation loss at step 0",
                            "lowest validation loss", "relative change", "s/step"],
                           [[k, _fmt(c["steps_run"]), _fmt(c["kept_step"]),
                             _fmt(c["validation_loss_step0"]), _fmt(c["validation_loss"]),
                             f"{c['validation_loss'] / c['validation_loss_step0'] - 1:+.2%}",
                             _fmt(c.get("seconds_per_step"))]
                            for k, c in (t.get("cells") or {}).items()]))
        for setting, seeds in (t.get("seeds") or {}).items():
            sub.tables.append(([f"seed ({setting})", "steps run", "kept step",
                                "validation loss: step 0 → kept", "test metric", "untrained",
                                "trained − untrained (95% CI)", "better"],
                               [_seed_row(e) for e in seeds]))
        fig = training_curves_figure(task, t, _slug("training-sweep", task))
        if fig:
            sub.figures.append(fig)
        for run in t.get("runs", []):
            sub.text.append(f"Run: `{run['command']}` ({_fmt(run.get('seconds'))} s, peak "
                            f"{_fmt(run.get('peak_rss_gb'))} GB)")
        out.append(sub)
    return out


def _seed_row(e: JSONObject) -> list[str]:
    """One seed of a tag-training setting: its training and its test against its start."""
    d = e["trained_minus_untrained"]
    m = d["metric"]
    return [str(e["seed"]), _fmt(e["steps_run"]), _fmt(e["kept_step"]),
            f"{_fmt(e['validation_loss_step0'])} → {_fmt(e['validation_loss'])}",
            _fmt(e["test"][m]), _fmt(e["untrained_test"][m]), _difference(d),
            "yes" if d["better"] else "no"]


def sections(paths: list[str | Path]) -> list[Section]:
    out: list[Section] = []
    seen: set[str] = set()
    for path in paths:
        kind, doc = load(path)
        if kind == "run":
            out += run_sections(doc, str(path), seen)
        elif kind == "ablations":
            out += ablation_sections(doc)
        elif kind == "training-sweep":
            out += training_sweep_sections(doc)
        else:
            out.append(eval_section(doc, "tagllm evaluate", doc.command))
    used: dict[str, int] = {}  # figure names are file names: two files' same title must
    for f in (f for s in out for f in s.figures):  # not overwrite each other's plots
        used[f.slug] = used.get(f.slug, 0) + 1
        if used[f.slug] > 1:
            f.slug = f"{f.slug}-{used[f.slug]}"
    return out


# ----------------------------------------------------------------- renderers
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid
#ccc;padding:.3em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}figure{display:inline-block;vertical-align:top;width:48%;margin:.5em 1%}
figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .2em}img{max-width:100%}"""


def _inline(text: str) -> str:
    """Markdown's `code` spans as HTML, everything else escaped."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(parts))


def render_html(secs: list[Section], title: str) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in secs:
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        out += [f"<p>{_inline(t)}</p>" for t in s.text]
        for header, rows in s.tables:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>"
                                                            for c in r) + "</tr>" for r in rows)
                       + "</table>")
        for f in s.figures:
            data = base64.b64encode(f.png).decode()
            out.append(f"<figure><img alt='{html.escape(f.title)}' data-figure='{f.slug}' "
                       f"src='data:image/png;base64,{data}'><figcaption>"
                       f"{html.escape(f.title)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(secs: list[Section], title: str, image_dir: Path, relative: str,
                    preamble: str = "") -> str:
    """Markdown with each figure written to ``image_dir`` and linked as ``relative/...``."""
    image_dir.mkdir(parents=True, exist_ok=True)
    out = [f"# {title}", "", preamble.strip(), ""] if preamble.strip() else [f"# {title}", ""]
    for s in secs:
        out += [f"{'#' * s.level} {_md(s.title)}", ""]
        for t in s.text:
            out += [t, ""]
        for header, rows in s.tables:
            cells = [[_md(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
            out.append("| " + " | ".join(cells[0]) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(r) + " |" for r in cells[1:]]
            out.append("")
        for f in s.figures:
            (image_dir / f"{f.slug}.png").write_bytes(f.png)
            out += [f"![{_md(f.title)}]({relative}/{f.slug}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    """Text for a Markdown heading or table cell: a tag name such as <QED> is shown, not
    taken for an HTML element."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def write_report(paths: list[str | Path], html_path: str | Path | None = None,
                 markdown_path: str | Path | None = None, title: str = "tagllm results",
                 preamble: str = "") -> list[Path]:
    """Build the pages from ``paths``; returns the files written."""
    if not paths:
        raise DataError("report: name at least one run folder or results file")
    secs = sections(paths)  # every input is read and checked before anything is written
    written: list[Path] = []
    if html_path:
        written.append(atomic_write_text(Path(html_path), render_html(secs, title)))
    if markdown_path:
        md = Path(markdown_path)
        images = md.parent / "img" / md.stem
        written.append(atomic_write_text(md, render_markdown(
            secs, title, images, f"img/{md.stem}", preamble)))
    return written


#: the lines around the README's summary table (``make docs`` regenerates what is between)
SUMMARY_BEGIN = "<!-- summary: generated by `make docs` from benchmarks/results; do not edit -->"
SUMMARY_END = "<!-- /summary -->"
#: the README summary's columns: (label, the sweep file's baseline key)
SUMMARY_BASELINES = (("Morgan random forest", "rf"), ("Chemprop", "chemprop"),
                     ("linear probe", "probe-L-1"))


def newest_sweep(root: str | Path = ".") -> Path:
    """The newest ``benchmarks/results/*-tag-training-sweep.json`` (file names start with
    the date)."""
    found = sorted((Path(root) / "benchmarks" / "results").glob("*-tag-training-sweep.json"))
    if not found:
        raise DataError(f"{Path(root) / 'benchmarks' / 'results'}: no tag-training sweep file")
    return found[-1]


def summary_table(path: str | Path) -> str:
    """The README's results table: per task of a tag-training sweep file, the tag trained
    with the setting chosen on validation, the same tag untrained, the strongest baselines
    (test metric) and the paired 95% interval of trained minus untrained."""
    doc = json.loads(Path(path).read_text())
    rows = ["| task | metric | trained tag | untrained tag | "
            + " | ".join(n for n, _ in SUMMARY_BASELINES) + " | trained − untrained (95% CI) |",
            "|" + "---|" * (5 + len(SUMMARY_BASELINES))]
    for e in doc["summary"]:
        d, base = e["trained_minus_untrained"], doc["tasks"][e["task"]]["baselines_test"]
        m = d["metric"]
        rows.append(f"| {e['task']} | {m} | {_fmt(e['test'][m])} | "
                    f"{_fmt(e['untrained_test'][m])} | "
                    + " | ".join(_fmt((base.get(k) or {}).get(m)) for _, k in SUMMARY_BASELINES)
                    + " | " + _difference(d) + " |")
    seeds = [f"{e['task']}, the same setting with other seeds (trained − untrained, "
             f"{e['trained_minus_untrained']['metric']}): " + "; ".join(
                 f"seed {x['seed']}: {_difference(x)}" for x in e["seeds"]) + "."
             for e in doc["summary"] if len(e.get("seeds") or []) > 1]
    where = Path(path).as_posix()
    where = where[where.index("benchmarks/"):] if "benchmarks/" in where else where
    return "\n".join([*rows, "", *seeds, *([""] if seeds else []),
                      f"From `{where}` ({doc.get('date', '')}, {doc.get('machine', '')}); "
                      "every row in docs/results.md."])


def _difference(d: JSONObject) -> str:
    if d["low"] == d["high"] == 0:
        return "0: validation kept the untrained tag"
    return f"[{d['low']:+.2g}, {d['high']:+.2g}]" + (", trained better" if d["better"] else "")


def readme_page(page: str, root: str | Path = ".") -> str:
    """README ``page`` with its summary table regenerated from the newest sweep file."""
    head, sep, rest = page.partition(SUMMARY_BEGIN)
    _, sep2, tail = rest.partition(SUMMARY_END)
    if not (sep and sep2):
        raise ValueError(f"README.md lacks the lines {SUMMARY_BEGIN} and {SUMMARY_END}")
    return f"{head}{SUMMARY_BEGIN}\n{summary_table(newest_sweep(root))}\n{SUMMARY_END}{tail}"
