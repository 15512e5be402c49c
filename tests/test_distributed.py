"""Two processes (torchrun, gloo on CPU) reach the same tags as one process with the same
global batch: the tag and head gradients are summed across processes each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from tagllm.protocol import load_recipe, run
from tagllm.store import TagStore

from tiny import save_tiny

SMILES = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "OCCO", "c1ccncc1", "CC(C)O", "CCOC",
          "C1CCCCC1", "CN(C)C", "O=C=O", "CCCCO", "CCCN", "CC=O", "C#N"]
PROTEINS = ["MKVLAAGIVGLLLAQ", "MSTNPKPQRKTKRNT", "MAHHHHHHVDDDDKM", "MGSSHHHHHHSSGLV",
            "MKKLLPTAAAGLLLL", "MDPVVVLGLCLSCLL", "MRLLLLLALLGGAAA", "MEEPQSDPSVEPPLS"]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, fsdp):
    """DDP-style (every process holds the whole base) and FSDP (the base's blocks sharded
    across the processes); both with evaluation split across the processes."""
    save_tiny(tmp_path / "tiny")
    (tmp_path / "m.csv").write_text("smiles,y\n" + "".join(
        f"{s},{len(s) / 10 + 0.05 * (i % 3)}\n" for i, s in enumerate(SMILES)))
    (tmp_path / "m2.csv").write_text("smiles,y\n" + "".join(
        f"{s},{len(s) / 8}\n" for s in ["CCCCCCC", "CCOCCO", "NCCCN", "OCCCO", "CCCCl", "CSC"]))
    (tmp_path / "me.csv").write_text("smiles,y\n" + "".join(
        f"{s},{len(s) / 10}\n" for s in ["CCCCCC", "CCOCC", "NCCN", "OCC(O)CO", "CCCl", "CS",
                                         "CC(N)=O"]))
    (tmp_path / "pe.fasta").write_text("".join(
        f">e{i}\n{s}\n" for i, s in enumerate(["MKTAYIAKQR", "MVLSPADKTN", "MSDKIIHLTD",
                                                "MAEGEITTFT", "MGLSDGEWQQ"])))
    (tmp_path / "p.fasta").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(PROTEINS)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ddp", "model": str(tmp_path / "tiny"), "out": str(tmp_path / "out"),
        "train": {"batch_size": 4, "warmup_steps": 1, "steps": 5},
        "tags": [{"name": "<SMILES>", "num_tokens": 3}, {"name": "<Protein>", "num_tokens": 2},
                 {"name": "<Q>", "kind": "function", "num_tokens": 2,
                  "head": {"kind": "regression"}},
                 {"name": "<R>", "kind": "function", "num_tokens": 2,
                  "head": {"kind": "regression"}}],
        "stages": [
            {"name": "domains", "tags": ["<SMILES>", "<Protein>"],  # joint: mixed batches
             "data": [{"source": str(tmp_path / "m.csv"), "template": "<SMILES> {smiles}"},
                      {"source": str(tmp_path / "p.fasta"),
                       "template": "<Protein> {sequence}"}],
             "eval": [{"source": str(tmp_path / "pe.fasta"),  # 5 rows: uneven shares
                       "template": "<Protein> {sequence}"}]},
            {"name": "q", "tags": ["<Q>", "<R>"],  # warm start + frozen prefix, sharded; the
             # head re-fitted on the features the steps computed, gathered from both ranks
             "train": {"refit_every": 2, "refit_rows": "seen", "select": "last"},
             "data": [{"source": str(tmp_path / "m.csv"), "template": "<SMILES> {smiles} <Q>",
                       "label": "y"},  # two heads' parts: mixed batches, and under
                      {"source": str(tmp_path / "m2.csv"),  # FSDP idle stand-ins
                       "template": "<SMILES> {smiles} <R>", "label": "y", "weight": 0.3}],
             "eval": [{"source": str(tmp_path / "me.csv"), "template": "<SMILES> {smiles} <Q>",
                       "label": "y", "baselines": ["mean"], "ablation": True}]}]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "--module", "tagllm.cli", "run", str(recipe),
         "--store", str(tmp_path / "two"), "--progress", "false", "--fsdp", str(fsdp)],
        capture_output=True, text=True, env=env, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    if fsdp:  # tiny llama: 18,560 of its 25,248 parameters are in the 2 blocks
        assert "holds 15,968 of the base model's 25,248 parameters" in " ".join(
            two.stderr.split()), two.stderr[-3000:]
    rows2 = [r for s in json.loads((tmp_path / "out" / "results.json").read_text())["stages"]
             for r in s["eval"]]
    one = run(load_recipe(recipe), TagStore(tmp_path / "one"), log=lambda s: None,
              progress=False)
    assert one.steps_run == 10
    for entry in sorted((tmp_path / "one").glob("*/tag.json")):
        meta2 = json.loads((tmp_path / "two" / entry.parent.name / "tag.json").read_text())
        prov = meta2["provenance"]
        assert prov["processes"] == 2  # both ranks really ran, each on half of every batch
        assert prov["sharded_base"] is fsdp
        assert prov["examples_per_process"] == [10, 10]
        assert json.loads(entry.read_text())["provenance"]["examples_per_process"] == [20]
        a = load_file(entry.parent / "tag.safetensors")
        b = load_file(tmp_path / "two" / entry.parent.name / "tag.safetensors")
        for k in a:
            assert (a[k] - b[k]).abs().max().item() < 1e-4, (meta2["name"], k)
    # evaluation, split across the processes (7 and 5 rows: uneven shares), matches
    rows1 = [r.to_json() for s in one.stages for r in s.eval]
    assert [r["rows"] for r in rows1] == [r["rows"] for r in rows2] == [5, 7]
    for r1, r2 in zip(rows1, rows2, strict=True):
        for k, v in r1["metrics"].items():
            assert abs(v - r2["metrics"][k]) < 1e-4 * max(1, abs(v)), (r1["name"], k)
        assert set(r1.get("baselines", {})) == set(r2.get("baselines", {}))
