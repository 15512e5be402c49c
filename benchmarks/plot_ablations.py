"""Plot an ablations.py results file: the tag-length sweep (test MSE and validation loss
against p, every seed, trained and untrained) beside the ablation rows, and the learning
curves of the recipe's p.

    .venv/bin/python benchmarks/plot_ablations.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def p_axis(ax, ps: list[int], xlabel: str, ylabel: str, legend: int) -> None:
    """A log-scaled axis over the tag lengths, labelled, with its legend and grid."""
    ax.set_xscale("log")
    ax.set_xticks(ps, [str(p) for p in ps])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend)
    ax.grid(alpha=0.3)


def main(path: str, out: str) -> None:
    doc = json.load(open(path))
    rows = doc["rows"] if isinstance(doc, dict) else doc  # a .partial file is the rows
    sweep = [r for r in rows if "p" in r and r["name"].startswith("<QED_p")
             and not r["name"].endswith("_refit>")]
    ps = sorted({r["p"] for r in sweep})
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, label, style in (("test", "trained (kept step)", "o-"),
                              ("test_step0", "untrained + closed-form head", "s--")):
        vals = [[r[key]["mse"] for r in sweep if r["p"] == p] for p in ps]
        a.plot(ps, [np.mean(v) for v in vals], style, label=label)
        for p, v in zip(ps, vals, strict=True):
            a.scatter([p] * len(v), v, s=10, alpha=0.5, color=a.lines[-1].get_color())
    others = [r for r in rows if not r["name"].startswith("<QED_p")]
    for r, color in zip(others, plt.cm.tab10(np.arange(2, 2 + len(others))), strict=False):
        a.axhline(r["test"]["mse"], color=color, lw=1, ls=":",
                  label=r["name"].split(" (")[0].strip("<>")[:40])
    p_axis(a, ps, "p (vectors of <QED>)", "test MSE (1,000 MOSES molecules)", 6)
    for r in sweep:
        b.scatter(r["p"], r["validation_loss"], color="C0", s=12)
        b.scatter(r["p"], r["validation_loss_step0"], color="C1", marker="s", s=12)
    b.plot(ps, [np.mean([r["validation_loss"] for r in sweep if r["p"] == p]) for p in ps],
           "o-", color="C0", label="kept step")
    b.plot(ps, [np.mean([r["validation_loss_step0"] for r in sweep if r["p"] == p])
                for p in ps], "s--", color="C1", label="step 0")
    p_axis(b, ps, "p", "validation loss (standardised MSE)", 7)
    for r in [r for r in sweep if r["p"] == 10]:
        steps = [pt["step"] for pt in r["curve"]]
        line, = c.plot(steps, [pt["validation_loss"] for pt in r["curve"]], "o-",
                       label=f"validation, seed {r['seed']}")
        c.plot(steps[1:], [pt["train_loss"] for pt in r["curve"][1:]], "x:",
               color=line.get_color(), label=f"training, seed {r['seed']}")
    c.set_xlabel("step (p = 10)")
    c.set_ylabel("loss (standardised MSE)")
    c.legend(fontsize=6)
    c.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
