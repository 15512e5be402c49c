"""Learning curves of a tag_training_sweep.py results file: one panel per variant, the
validation loss of every learning rate against steps, step 0 (the untrained tag with its
closed-form head) as a dashed line.

    .venv/bin/python benchmarks/plot_sweep.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def variant(name: str) -> str:
    """The cell's name without its learning rate."""
    return "-".join(p for p in name.split("-") if not p.startswith("lr"))


def main(path: str, out: str) -> None:
    doc = json.load(open(path))
    panels: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for name, cell in doc["cells"].items():
        panels[variant(name)].append((name, cell))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), sharey=True,
                             squeeze=False)
    for ax, (title, cells) in zip(axes[0], sorted(panels.items()), strict=True):
        start = None
        for _, cell in cells:
            steps = [c["step"] for c in cell["curve"]]
            ax.plot(steps, [c["validation_loss"] for c in cell["curve"]], "o-", ms=3,
                    label=f"lr {cell['train']['lr']:g}")
            start = cell["validation_loss_step0"]
        ax.axhline(start, ls="--", color="grey", lw=1, label="untrained (step 0)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"validation loss ({doc.get('task', 'qed')})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
