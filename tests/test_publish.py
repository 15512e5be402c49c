"""`tagllm report`: the generated HTML page is self-contained and carries every table and
plot of the runs it reads; the Markdown page links its plots as files."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tagllm.cli import main
from tagllm.errors import DataError
from tagllm.protocol import recipe_from_dict, run
from tagllm.store import TagStore

from tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
SMILES = ["CCO", "CCN", "CCC", "CCCl", "c1ccccc1", "CC(=O)O", "CCOC", "CNC", "OCCO", "CCCC",
          "c1ccncc1", "CC(C)O", "COC", "CCS", "C1CCCCC1", "CC#N", "OC(=O)C", "NCCN", "CCCO",
          "CCCN"]


class Page(HTMLParser):
    """Every tag's attributes and the text of each table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    save_tiny(d / "tiny")
    for name, rows in (("train.csv", SMILES), ("test.csv", SMILES[:8])):
        with open(d / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["smiles", "y"])
            w.writerows([s, len(s) / 10] for s in rows)
    recipe = recipe_from_dict({
        "name": "tiny", "model": str(d / "tiny"), "out": str(d / "out"),
        "train": {"batch_size": 4, "warmup_steps": 1, "eval_every": 2, "validation": 0.2},
        "tags": [{"name": "<SMILES>", "num_tokens": 2},
                 {"name": "<Q>", "kind": "function", "num_tokens": 2,
                  "head": {"kind": "regression"}}],
        "stages": [
            {"name": "smiles", "tags": ["<SMILES>"], "train": {"steps": 2},
             "data": [{"source": str(d / "train.csv"), "template": "<SMILES> {smiles}"}]},
            {"name": "q", "tags": ["<Q>"], "train": {"steps": 4},
             "data": [{"source": str(d / "train.csv"), "template": "<SMILES> {smiles} <Q>",
                       "label": "y"}],
             "eval": [{"source": str(d / "test.csv"), "label": "y", "name": "test set",
                       "baselines": ["knn", "mean"], "ablation": True}]}]}, "tiny.yaml")
    run(recipe, TagStore(d / "store"), log=lambda m: None, progress=False, track="none")
    return d / "out"


def test_html_report_is_self_contained_with_every_table_and_plot(run_dir, tmp_path):
    ablations = ROOT / "benchmarks" / "results" / "2026-11-27-qed-ablations.json"
    page = tmp_path / "report.html"
    # the run twice: its stages (as a stored stage shared by two recipes) are shown once
    main(["report", str(run_dir), str(run_dir), str(ablations), "--html", str(page)])
    text = page.read_text()
    parsed = Page()
    parsed.feed(text)
    # self-contained: no external URL anywhere, every image inline
    assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:|//)", text)
    assert not [t for t, a in parsed.attrs if t in ("script", "link", "iframe")]
    images = [a for t, a in parsed.attrs if t == "img"]
    assert images and all(a["src"].startswith("data:image/png;base64,") for a in images)
    # every plot: both learning curves, predicted vs true, the intervals, the p sweep
    figures = {a["data-figure"] for a in images}
    assert len(figures) == len(images)
    assert figures == {"tiny-smiles-curve", "tiny-q-curve", "tiny-q-test-set-truth",
                       "tiny-q-test-set-methods", "qed-sweep"}
    # every table: the methods of the run's evaluation row with their metric values
    results = json.loads((run_dir / "results.json").read_text())
    ev = next(s for s in results["stages"] if s["stage"] == "q")["eval"][0]
    table = next(t for t in parsed.tables if t[0][0] == "method")
    methods = [r[0] for r in table[1:]]
    assert methods == ["tags (<Q>)", *ev["baselines"]]
    mse = table[0].index("mse")
    assert float(table[1][mse]) == pytest.approx(ev["metrics"]["mse"], rel=1e-3)
    assert table[1][table[0].index("trainable parameters")] == \
        f"{ev['trainable_parameters']:,}"
    knn = next(r for r in table if r[0].startswith("Morgan k-NN"))
    lo, hi = ev["intervals"][knn[0]]["mse"]
    assert knn[table[0].index("tags − method, mse (95% CI)")] == f"[{lo:+.4g}, {hi:+.4g}]"
    ablation_rows = next(t for t in parsed.tables if t[0][0] == "row")
    assert len(ablation_rows) - 1 == len(json.loads(ablations.read_text())["rows"])


def test_markdown_report_writes_its_plots_beside_it(run_dir, tmp_path):
    md = tmp_path / "docs" / "results.md"
    (tmp_path / "intro.md").write_text("How to read this page.\n")
    main(["report", str(run_dir / "results.json"), "--html", "", "--markdown", str(md),
          "--preamble", str(tmp_path / "intro.md")])
    text = md.read_text()
    assert text.startswith("# tagllm results\n\nHow to read this page.")
    links = re.findall(r"!\[[^\]]*\]\((img/results/[^)]+\.png)\)", text)
    assert len(links) == 4 and all((md.parent / link).is_file() for link in links)
    assert "| tags (&lt;Q&gt;) |" in text  # a tag name is shown, not read as HTML
    assert not (tmp_path / "report.html").exists()

    # two evaluation files of the same source: each keeps its own plots
    ev = next(s for s in json.loads((run_dir / "results.json").read_text())["stages"]
              if s["stage"] == "q")["eval"][0]
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({**ev, "name": "same"}))
    md2 = tmp_path / "two.md"
    main(["report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--html", "",
          "--markdown", str(md2)])
    links = re.findall(r"\]\((img/two/[^)]+\.png)\)", md2.read_text())
    assert len(links) == 4 and len(set(links)) == 4


def test_report_refuses_what_is_not_a_results_file(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match=r"x\.json: neither a run's results\.json"):
        from tagllm.publish import write_report

        write_report([tmp_path / "x.json"], tmp_path / "r.html")
    with pytest.raises(DataError, match="no results file"):
        write_report([tmp_path / "missing"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()  # nothing half-written


def _scored_task(task: str, metric: str, better: bool) -> dict:
    """A task's file as tag_training_sweep.py --score writes it (two cells)."""
    curve = [{"step": 0, "train_loss": None, "validation_loss": 0.5},
             {"step": 50, "train_loss": 0.4, "validation_loss": 0.49}]
    cells = {f"plain-lr{lr}": {"name": f"plain-lr{lr}", "train": {"lr": lr}, "steps_run": 50,
                               "kept_step": 50, "validation_loss": 0.49,
                               "validation_loss_step0": 0.5, "seconds_per_step": 1.5,
                               "curve": curve} for lr in (0.001, 0.0001)}
    entry = {"task": task, "setting": "plain-lr0.001", "test": {metric: 0.7},
             "untrained_test": {metric: 0.71},
             "trained_minus_untrained": {"metric": metric, "low": -0.02, "high": -0.001,
                                         "better": better},
             "trained_minus_rf": {metric: [-0.1, 0.05]}}
    return {"task": task, "model": "smollm2", "machine": "Linux", "processor": "x86_64",
            "date": "2026-12-07", "train_rows": 100, "test_rows": 40, "cells": cells,
            "summary": [{**entry, "variant": "best overall"}, {**entry, "variant": "plain"}],
            "baselines_test": {"rf": {metric: 0.8}}, "runs": [{"command": "x", "seconds": 9}]}


def test_report_shows_a_tag_training_sweep_with_its_curves(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sweep", ROOT / "benchmarks" / "tag_training_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for task, metric in (("qed", "mse"), ("bbb", "auroc")):
        (tmp_path / f"{task}.json").write_text(json.dumps(_scored_task(task, metric, True)))
    out = tmp_path / "sweep.json"
    sweep.combine(str(out), [str(tmp_path / "qed.json"), str(tmp_path / "bbb.json")])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "tag-training-sweep"
    assert [e["task"] for e in doc["summary"]] == ["qed", "bbb"]  # one entry per task
    assert all(e["variant"] == "best overall" for e in doc["summary"])
    md = tmp_path / "r.md"
    main(["report", str(out), "--html", "", "--markdown", str(md)])
    text = md.read_text()
    assert "## Tag training: trained tags against their untrained start" in text
    assert text.count("| qed | ") == 2 and "[-0.02, -0.001]" in text
    assert "### Tag training sweep: bbb" in text and "| plain-lr0.0001 | 50 | 50 |" in text
    assert "-2.00%" in text  # 0.49 against 0.5 at step 0
    links = re.findall(r"\]\((img/r/training-sweep-[^)]+\.png)\)", text)
    assert len(links) == 2 and all((md.parent / link).is_file() for link in links)
    (tmp_path / "raw.json").write_text(json.dumps({"task": "qed", "cells": {}}))
    with pytest.raises(SystemExit, match="not scored"):
        sweep.combine(str(tmp_path / "x.json"), [str(tmp_path / "raw.json")])

    # another seed of the chosen setting joins the combined file, against its own start
    seed = _scored_task("qed", "mse", False)
    cell = {**seed["cells"]["plain-lr0.001"], "seed": 1, "name": "plain-lr0.001-seed1",
            "kept_step": 0, "validation_loss": 0.5}
    seed["cells"] = {"plain-lr0.001-seed1": cell}
    for e in seed["summary"]:
        e.update(setting="plain-lr0.001-seed1", trained_minus_untrained={
            "metric": "mse", "low": -0.01, "high": 0.03, "better": False})
    (tmp_path / "seed1.json").write_text(json.dumps(seed))
    for _ in range(2):  # twice: the seed is replaced, not repeated
        sweep.add_seeds(str(out), [str(tmp_path / "seed1.json")])
    doc = json.loads(out.read_text())
    assert [x["seed"] for x in doc["tasks"]["qed"]["seeds"]["plain-lr0.001"]] == [0, 1]
    assert [(x["seed"], x["better"]) for x in doc["summary"][0]["seeds"]] == [(0, True),
                                                                               (1, False)]
    from tagllm.publish import summary_table

    assert "qed, the same setting with other seeds (trained − untrained, mse): seed 0: " \
           "[-0.02, -0.001], trained better; seed 1: [-0.01, +0.03]." in summary_table(out)
    main(["report", str(out), "--html", "", "--markdown", str(md)])
    assert "| 1 | 50 | 0 | 0.5 → 0.5 | 0.7 | 0.71 | [-0.01, +0.03] | no |" in md.read_text()
    (tmp_path / "stray.json").write_text(json.dumps(_scored_task("qed", "mse", True)))
    with pytest.raises(SystemExit, match="not another seed"):
        sweep.add_seeds(str(out), [str(tmp_path / "stray.json")])


def test_a_report_the_disk_refuses_is_a_clear_error_and_keeps_the_earlier_page(run_dir,
                                                                               tmp_path):
    """A file-size limit (a full disk, as the writer sees it) while writing the page: one
    line naming the page, exit 2, the earlier page unchanged, no temporary file left."""
    import resource
    import subprocess
    import sys

    page = tmp_path / "report.html"
    page.write_text("earlier page\n")
    r = subprocess.run(
        [sys.executable, "-m", "tagllm.cli", "report", str(run_dir / "results.json"),
         "--html", str(page)], capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"cannot write {page}" in r.stderr.replace("\n", ""), r.stderr
    assert page.read_text() == "earlier page\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
