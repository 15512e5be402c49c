"""Time to a clear error for hostile inputs, before and after a change, side by side.

Each case is one over-long row (after a valid one) of the kind a careless or hostile user
sends: 20,000 and 200,000 carbons, 20,000 nested branches, ring-heavy SMILES, a
100,001-residue protein. It goes through the two doors that check rows: ``tagllm predict``'s
``predict_file`` on a CSV, and the checks ``tagllm serve`` runs on a ``rows`` request. Every
(tree, door, case) runs in its own child process on the real default model with untrained
tags, so that a crash (RDKit's stack overflow) or a hang (a timeout) is recorded instead of
ending the benchmark.

    python benchmarks/hostile_inputs.py --before /tmp/before \\
        --out benchmarks/results/DATE-hostile-inputs.json

``--before`` is a checkout of an earlier tagllm (its ``src`` goes first on PYTHONPATH in the
children); without it only this tree is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from timing import machine

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "20,000 carbons": ("smiles", "C" * 20_000),
    "200,000 carbons": ("smiles", "C" * 200_000),
    "20,000 nested branches": ("smiles", "C(" * 20_000 + "C" + ")" * 20_000),
    "4,000 three-rings": ("smiles", "C1CC1" * 4_000),
    "2,500 benzene rings": ("smiles", "c1ccccc1" * 2_500),
    "100,001-residue protein": ("sequence", "M" + "ACDEFGHIKLMNPQRSTVWY" * 5_000),
}
TEMPLATE = {"smiles": "<SMILES> {smiles} <QED>", "sequence": "<SMILES> {sequence} <QED>"}

#: The child: load the model and tags, run one door on one file, print one JSON line.
CHILD = textwrap.dedent("""
    import json, sys, time
    door, model, tags, path, template, column, max_length = sys.argv[1:8]
    from tagllm import serve
    from tagllm.errors import TagllmError
    from tagllm.inference import predict_file
    from tagllm.model import TaggedModel
    m = TaggedModel.from_pretrained(model, tags=[tags])
    t = time.perf_counter()  # the checks alone: model and modules are loaded
    try:
        if door == "predict":
            predict_file(m, path, path + ".out.csv", template, max_length=int(max_length),
                         progress=False)
        else:  # what the service runs on a rows request before it queues it
            import csv
            rows = list(csv.DictReader(open(path)))
            rows = [{column: r[column]} for r in rows]
            if hasattr(serve, "predict_inputs"):
                cfg = serve.ServeConfig(max_length=int(max_length))
                serve.predict_inputs(m, cfg, None, rows, template, None)
            else:
                texts = serve.render_rows(rows, template)
                serve.check_inputs(m, texts, int(max_length))
        outcome, message = "no error", ""
    except (TagllmError, Exception) as e:
        outcome, message = "error", str(e)[:240]
    print(json.dumps({"outcome": outcome, "message": message,
                      "seconds": round(time.perf_counter() - t, 3)}))
""")


def make_tags(model: str, folder: Path) -> None:
    """Untrained <SMILES> and <QED> (a regression head) for ``model``: the checks do not
    depend on what the tags learned."""
    from tagllm import HeadConfig, TagConfig, TaggedModel

    m = TaggedModel.from_pretrained(model)
    m.add_tag(TagConfig("<SMILES>", num_tokens=10))
    m.add_tag(TagConfig("<QED>", kind="function", num_tokens=10,
                        head=HeadConfig("regression")))
    for name in ("<SMILES>", "<QED>"):
        m.save_tag(name, folder / name.strip("<>"))


def run_child(src: Path, door: str, model: str, tags: Path, path: Path, column: str,
              max_length: int, timeout: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, door, model, str(tags), str(path),
                            TEMPLATE[column], column, str(max_length)], capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"outcome": f"no answer within {timeout:g} s (stopped)", "message": "",
                "seconds": None}
    if r.returncode != 0:
        sig = -r.returncode if r.returncode < 0 else None
        what = f"process killed by signal {sig}" if sig else f"exit {r.returncode}"
        return {"outcome": what, "message": r.stderr.strip().splitlines()[-1][:240]
                if r.stderr.strip() else "", "seconds": None,
                "wall_seconds": round(time.perf_counter() - t, 1)}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, help="checkout of an earlier tagllm")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max_length", type=int, default=512, help="predict's and serve's default")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per child")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    trees = {"after": ROOT / "src"}
    if a.before is not None:
        if not (a.before / "src" / "tagllm").is_dir():
            ap.error(f"--before {a.before}: no src/tagllm there")
        trees = {"before": a.before / "src", **trees}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_tags(a.model, d / "tags")
        for i, (case, (column, value)) in enumerate(CASES.items()):
            path = d / f"case{i}.csv"
            ok = "CCO" if column == "smiles" else "MKTAYIAK"
            path.write_text(f"{column}\n{ok}\n{value}\n")
            for door in ("predict", "serve"):
                row: dict[str, object] = {"case": case, "door": door}
                for tree, src in trees.items():
                    row[tree] = run_child(src, door, a.model, d / "tags", path, column,
                                          a.max_length, a.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"benchmark": "hostile_inputs", "date": datetime.date.today().isoformat(),
              **machine(), "model": a.model, "max_length": a.max_length,
              "timeout_s": a.timeout, "command": " ".join(sys.argv), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'case':26s} {'door':8s} " + " ".join(f"{t:>34s}" for t in trees))
    for r in rows:
        cells = []
        for t in trees:
            x = r[t]
            cells.append(f"{x['seconds']:.2f} s {x['outcome']}" if x["seconds"] is not None
                         else str(x["outcome"]))
        print(f"{r['case']:26s} {r['door']:8s} " + " ".join(f"{c[:34]:>34s}" for c in cells))


if __name__ == "__main__":
    main()
