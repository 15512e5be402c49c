"""Every shipped task recipe trains end to end through its recipe on a tiny model (same
data sources, templates, heads and evaluation; fewer rows and steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tagllm.protocol import recipe_from_dict, run
from tagllm.store import TagStore

from tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


def shrunk(name: str, tmp_path: Path) -> dict:
    """The recipe with the tiny model and a few rows and steps."""
    d = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    save_tiny(tmp_path / "tiny")
    d.update(model=str(tmp_path / "tiny"), out=str(tmp_path / "out"))
    for t in d["tags"]:  # the tiny tokenizer spends one token per character
        if t.get("init") == "text":
            t["num_tokens"] = max(t["num_tokens"], len(t["init_text"]))
    for s in d["stages"]:
        for e in s["data"]:
            e["n"] = 24
        for e in s.get("eval", []):
            e["n"] = 12
            if "reference" in e:
                e["max_new_tokens"] = 6
        # one token per character: at least 512 (a tiny Llama's rotary positions go further)
        length = max(512, s.get("train", {}).get("max_length", 0))
        s["train"] = {**s.get("train", {}), "steps": 2, "batch_size": 4, "warmup_steps": 1,
                      "warm_start_examples": 24, "max_length": length}
    return d


@pytest.mark.slow
@pytest.mark.parametrize("name, metrics", [
    ("descriptor", {"mse", "mae", "pearson", "spearman", "ci"}),
    ("lipinski", {"accuracy", "auroc"}),
    ("binding-affinity", {"mse", "mae", "pearson", "spearman", "ci"}),
    ("drug-combination", {"mse", "mae", "pearson", "spearman", "ci"}),
    ("translate", {"bleu", "chrf"}),
    ("qed-in-context", {"mse", "mae", "pearson", "spearman", "ci"}),
    ("solubility", {"mse", "mae", "pearson", "spearman", "ci"}),
    ("bbb", {"accuracy", "auroc"}),
])
def test_task_recipe_trains_end_to_end(tmp_path, name, metrics):
    r = recipe_from_dict(shrunk(name, tmp_path), f"{name}.yaml")
    summary = run(r, TagStore(tmp_path / "store"), log=lambda m: None, progress=False)
    assert summary.steps_run == 2 * len(r.stages)
    stages = [s.to_json() for s in summary.stages]  # as results.json holds them
    last = stages[-1]["eval"][0]
    assert set(last["metrics"]) == metrics
    assert all(v == v for v in last["metrics"].values())  # no NaN
    assert last["kind"] == ("generation" if name == "translate" else "head")
    if name == "translate":  # generation, scored beside both text baselines
        assert set(last["baselines"]) == {"copy the source", "plain-text prompt (no tags)",
                                          "ablation: <Translate> untrained"}
        assert last["examples"][0]["input"].startswith("<es> ")
        assert len(last["outputs"]) == last["rows"]  # every generated output is kept
        assert set(last["intervals"]) == set(last["baselines"])  # BLEU/chrF, paired
        assert all(set(ci) == {"bleu", "chrf"} for ci in last["intervals"].values())
        assert stages[-1]["eval"][1]["name"] == "pt->es (zero-shot)"
        costs = stages[-1]["costs"]  # generated lengths are unknown beforehand
        assert costs["ratio"] is None and "generation" not in costs["unavoidable"]
        assert stages[0]["costs"]["ratio"] is not None  # stage 1 has one
        return
    assert {"training mean", "training class frequencies"} & set(last["baselines"])
    if name == "qed-in-context":  # k labelled examples before each query, never itself
        from tagllm.model import TaggedModel
        from tagllm.protocol import plan

        plans = plan(r, TaggedModel.from_pretrained(r.model), TagStore(tmp_path / "store"),
                     log=lambda m: None, progress=False)
        by_name = {p.stage.name: p for p in plans}
        for k in (0, 1, 4):
            d, (_, e) = by_name[f"k{k}"].data[0], by_name[f"k{k}"].evals[0]
            for texts in (d.texts, e.texts):
                assert all(t.count(f"<QEDk{k}>") == k + 1 for t in texts)
                assert all(t.count("\n") == k for t in texts)
            for t, smi in zip(d.texts, d.table["smiles"], strict=True):
                assert f"<SMILES> {smi} <QEDk{k}> " not in t  # its own label is not shown
            if k:  # validation rows (held out before examples were drawn) are never shown
                assert d.val_mask is not None and 0 < sum(d.val_mask) < len(d.val_mask)
                held = {s for s, v in zip(d.table["smiles"], d.val_mask, strict=True) if v}
                for t in d.texts:
                    shown = [ln.split(" <QED")[0].removeprefix("<SMILES> ")
                             for ln in t.split("\n")[:-1]]
                    assert not held & set(shown), t
        assert [s["eval"][0]["name"] for s in stages[1:]] == [
            "QED, k=0", "QED, k=1", "QED, k=4"]
    if name in ("descriptor", "lipinski", "solubility", "bbb"):  # one input: k-NN too
        assert any(k.startswith(("3-mer k-NN", "Morgan k-NN")) for k in last["baselines"])
    if name == "binding-affinity":  # drug-target pairs: the forest reads both
        assert "Morgan + composition random forest (200 trees)" in last["baselines"]
    if name in ("solubility", "bbb"):  # the frozen model's own baselines
        assert {"linear probe (frozen hidden states, no tags)",
                "tags as plain text + linear head"} <= set(last["baselines"])
    assert any(k.startswith("ablation") for k in last["baselines"])
    for t in r.tags:
        assert (tmp_path / "out" / "tags" / t.name.strip("<>") / "tag.safetensors").is_file()


def test_classification_labels_must_be_class_indices(tmp_path):
    from tagllm.data import DataError

    save_tiny(tmp_path / "tiny")
    (tmp_path / "m.csv").write_text("smiles,active\nCCO,0\nCCN,1\nCCC,2\nCCCC,1\n")
    r = recipe_from_dict({
        "name": "c", "model": str(tmp_path / "tiny"), "out": str(tmp_path / "out"),
        "tags": [{"name": "<C>", "kind": "function", "num_tokens": 2,
                  "head": {"kind": "classification", "num_outputs": 2}}],
        "stages": [{"name": "c", "tags": ["<C>"], "data": [
            {"source": str(tmp_path / "m.csv"), "template": "{smiles} <C>",
             "label": "active"}]}]})
    with pytest.raises(DataError, match=r"m.csv row 3: label 'active': 2 is not a class index "
                                        r"0..1 \(1 such row\(s\)\)"):
        run(r, TagStore(tmp_path / "store"), dry_run=True, log=lambda m: None, progress=False)
