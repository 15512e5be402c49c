"""Plot the validation curves of a tag_training.py results file (one panel per run).

    .venv/bin/python benchmarks/plot_training.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str, out: str) -> None:
    doc = json.load(open(path))
    runs = doc.get("runs") or doc["results"]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), sharey=True)
    for ax, run in zip(list(getattr(axes, "flat", [axes])), runs, strict=True):
        steps = [c["step"] for c in run["curve"]]
        ax.plot(steps, [c["val"] for c in run["curve"]], "o-", label="current head")
        ax.plot(steps, [c["refit"] for c in run["curve"]], "s--",
                label=f"head re-fitted ({run.get('refit_rows', doc['rows'].get('refit'))} rows)")
        ax.set_title(run.get("name", json.dumps(run["config"])).split(",")[0][:60], fontsize=8)
        ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes_list = list(getattr(axes, "flat", [axes]))
    axes_list[0].set_ylabel("validation MSE (QED)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
