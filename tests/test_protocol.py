"""Running recipes on a tiny model: order, caching by key, retraining exactly what changed,
extending, resuming after a kill, joint training."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from filelock import FileLock
from rich.console import Console
from safetensors.torch import load_file

from tagllm.cli import main
from tagllm.costs import peak_rss_gb
from tagllm.errors import DataError, TagFileError
from tagllm.fileio import json_text
from tagllm.protocol import load_recipe, run
from tagllm.report import cost_table
from tagllm.store import TagStore
from tagllm.tags import InputTooLongError
from tagllm.training import mixed_batches

from tiny import KILLER, save_tiny

SMILES = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "OCCO", "c1ccncc1", "CC(C)O", "CCOC",
          "C1CCCCC1", "CN(C)C", "O=C=O", "CCCCO", "CCCN", "CC=O", "C#N"]
TEST = ["CCCCC", "NCCO", "CC(N)=O", "c1ccoc1"]
PROTEINS = ["MKVLAAGIVGLLLAQ", "MSTNPKPQRKTKRNT", "MAHHHHHHVDDDDKM", "MGSSHHHHHHSSGLV",
            "MKKLLPTAAAGLLLL", "MDPVVVLGLCLSCLL", "MRLLLLLALLGGAAA", "MEEPQSDPSVEPPLS"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("protocol")
    save_tiny(d / "tiny")
    for name, rows in (("mols.csv", SMILES), ("test.csv", TEST)):
        with open(d / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["smiles", "y"])
            w.writerows([s, len(s) / 10 + 0.05 * (i % 3)] for i, s in enumerate(rows))
    (d / "prot.fasta").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(PROTEINS)))
    return d


def base_recipe(d):
    return {
        "name": "tiny", "model": str(d / "tiny"), "out": str(d / "out"),
        "train": {"batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 1},
        "tags": [{"name": "<SMILES>", "num_tokens": 3}, {"name": "<Protein>", "num_tokens": 2},
                 {"name": "<Q>", "kind": "function", "num_tokens": 2,
                  "head": {"kind": "regression"}}],
        "stages": [  # file order is not run order: q needs <SMILES> from stage smiles
            {"name": "q", "tags": ["<Q>"], "train": {"steps": 6},
             "data": [{"source": str(d / "mols.csv"), "template": "<SMILES> {smiles} <Q>",
                       "label": "y"}],
             "eval": [{"source": str(d / "test.csv"), "label": "y",
                       "baselines": ["knn", "mean"], "ablation": True}]},
            {"name": "smiles", "tags": ["<SMILES>"], "train": {"steps": 4},
             "data": [{"source": str(d / "mols.csv"), "template": "<SMILES> {smiles}"}]},
            {"name": "protein", "tags": ["<Protein>"], "train": {"steps": 3},
             "data": [{"source": str(d / "prot.fasta"), "template": "<Protein> {sequence}"}]},
        ],
    }


def write(tmp_path, recipe, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return p


def go(path, store, **kw):
    return run(load_recipe(path), TagStore(store), log=lambda s: None, progress=False, **kw)


def trained(summary):
    return {s.stage: s.steps_run for s in summary.stages if not s.cached}


def stage(summary, name):
    """A stage of a run as results.json holds it."""
    return next(s for s in summary.stages if s.stage == name).to_json()


def snapshot(store):
    return {p.relative_to(store): p.read_bytes() for p in store.glob("*/tag.*")}


@pytest.mark.slow
def test_order_cache_and_exactly_the_changed_stages_retrain(workdir, tmp_path):
    store = tmp_path / "store"
    r = base_recipe(workdir)
    s1 = go(write(tmp_path, r), store)
    assert [s.stage for s in s1.stages] == ["smiles", "q", "protein"]  # q after smiles
    assert trained(s1) == {"smiles": 4, "protein": 3, "q": 6}
    q_eval = stage(s1, "q")["eval"][0]
    assert set(q_eval["baselines"]) == {"Morgan k-NN (k=5)", "training mean",
                                        "ablation: <Q> untrained, head fitted"}
    # every comparison, the ablation too, carries the paired interval of tags minus method
    assert set(q_eval["intervals"]) == set(q_eval["baselines"])
    for method, ci in q_eval["intervals"].items():
        lo, hi = ci["mse"]
        diff = q_eval["metrics"]["mse"] - q_eval["baselines"][method]["mse"]
        assert lo <= hi and (lo <= diff <= hi or abs(hi - lo) < 1e-12), method
    assert q_eval["intervals"]["training mean"]["pearson"] is None  # a constant prediction
    # each fitted method's cost: wall time and trainable parameters (k-NN has none)
    assert set(q_eval["costs"]) == {"Morgan k-NN (k=5)", "training mean"}
    assert q_eval["costs"]["training mean"]["trainable_parameters"] == 1
    assert q_eval["costs"]["Morgan k-NN (k=5)"]["trainable_parameters"] is None
    assert all(c["seconds"] >= 0 for c in q_eval["costs"].values())
    assert len(q_eval["predictions"]) == q_eval["rows"]
    # the cost account: exclusive phases that add up, the ablation and the final evaluation
    # sharing the test rows' prefixes, and measured / unavoidable forward tokens
    costs = stage(s1, "q")["costs"]
    work = {f"stage q/{x}" for x in ("warm start", "ablation/evaluation", "training",
                                     "training/validation", "evaluation", "baselines")}
    rest = {"stage q", "stage q/ablation"}  # set-up, storing: seconds, no forward token
    assert work <= set(costs["phases"]) <= work | rest
    assert all(costs["phases"][k]["tokens"] == 0 for k in rest & set(costs["phases"]))
    assert costs["forward_tokens"] + costs["baseline_tokens"] == sum(
        v["tokens"] for v in costs["phases"].values())
    ablation, final = (costs["phases"][f"stage q/{x}"]["tokens"]
                       for x in ("ablation/evaluation", "evaluation"))
    assert 0 < final < ablation / 3  # the final pass runs only <Q> on: prefixes were kept
    assert costs["ratio"] == pytest.approx(costs["forward_tokens"]
                                           / sum(costs["unavoidable"].values()), abs=1e-3)
    assert 1.0 <= costs["ratio"] <= 1.15
    # each phase records the process's peak memory by its end: it never falls
    peaks = [v["peak_gb"] for v in costs["phases"].values()]
    assert all(0.05 < g <= peak_rss_gb() + 1e-3 for g in peaks)
    console = Console(record=True, width=200)
    console.print(cost_table(s1.stages))
    printed = console.export_text()
    assert "peak GB by its end" in printed and "stage q/warm start" in printed
    assert f"{costs['phases']['stage q/training']['peak_gb']:.2f}" in printed
    files = snapshot(store)
    assert len(files) == 6
    assert (workdir / "out" / "tags" / "Q" / "tag.json").is_file()

    s2 = go(write(tmp_path, r), store)  # a second run trains nothing, rewrites nothing
    assert trained(s2) == {} and s2.steps_run == 0
    assert snapshot(store) == files
    # metrics from the stored provenance (strict JSON there: an undefined metric is null)
    same = json_text(stage(s2, "q")["eval"][0], sort_keys=True)
    assert same == json_text(q_eval, sort_keys=True)

    dry = go(write(tmp_path, r), store, dry_run=True)
    assert all(s.cached for s in dry.stages)

    r2 = copy.deepcopy(r)  # the domain tag's lr: it and its dependant retrain, protein not
    r2["stages"][1]["train"]["lr"] = 5e-4
    plan = go(write(tmp_path, r2), store, dry_run=True)
    reasons = {s.stage: s.reason for s in plan.stages}
    assert reasons["smiles"] == "changed since the last run: train.lr"
    assert reasons["q"] == "changed since the last run: deps.<SMILES>"
    assert reasons["protein"] == "cached"
    assert snapshot(store) == files  # a dry run writes no tag
    s3 = go(write(tmp_path, r2), store)
    assert trained(s3) == {"smiles": 4, "q": 6}

    r3 = copy.deepcopy(r2)  # the function tag's lr: only it retrains
    r3["stages"][0]["train"]["head_lr"] = 3e-4
    assert trained(go(write(tmp_path, r3), store)) == {"q": 6}

    r4 = copy.deepcopy(r3)  # different data rows: a new data fingerprint
    r4["stages"][2]["data"][0]["n"] = 6
    assert trained(go(write(tmp_path, r4), store)) == {"protein": 3}
    assert all(store.joinpath(k).read_bytes() == v for k, v in files.items())  # old intact

    # gc: the entries of earlier configurations go; what the index references stays
    st = TagStore(store)
    keep = st.referenced()
    assert {s.key for s in go(write(tmp_path, r4), store, dry_run=True).stages} <= {
        json.loads((store / k / "tag.json").read_text())["provenance"]["stage_key"]
        for k in keep}
    stale = {e.key for e in st.unreferenced()}
    assert len(stale) == 4 and not stale & keep  # smiles, q (r and r2), protein (r)
    assert len(st.entries()) == 7
    main(["gc", "--store", str(store), "--dry-run"])
    assert len(st.entries()) == 7  # a dry run removes nothing
    busy = next(e for e in st.entries() if e.key in stale)
    with FileLock(store / ".locks" / f"{busy.stage_key}.lock"):  # being trained: left
        main(["gc", "--store", str(store)])
        assert {e.key for e in st.entries()} == keep | {busy.key}
    main(["gc", "--store", str(store)])
    assert {e.key for e in st.entries()} == keep
    assert trained(go(write(tmp_path, r4), store)) == {}  # nothing the recipe needs went
    index = next((store / ".index").glob("*/*.json"))
    index.write_text("{")
    with pytest.raises(TagFileError, match="unreadable store index"):
        st.unreferenced()


@pytest.mark.slow
def test_extending_a_recipe_trains_only_the_new_tag(workdir, tmp_path):
    store = tmp_path / "store"
    r = base_recipe(workdir)
    go(write(tmp_path, r), store)
    before = snapshot(store)
    r["tags"].append({"name": "<K>", "kind": "function", "num_tokens": 2,
                      "head": {"kind": "classification", "num_outputs": 2}})
    for name, rows in (("cls.csv", SMILES), ("cls_test.csv", TEST)):
        with open(workdir / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["smiles", "ring"])
            w.writerows([s, int("1" in s)] for s in rows)
    r["stages"].append({"name": "k", "tags": ["<K>"], "train": {"steps": 2},
                        "data": [{"source": str(workdir / "cls.csv"),
                                  "template": "<SMILES> {smiles} <K>", "label": "ring"}],
                        "eval": [{"source": str(workdir / "cls_test.csv"), "label": "ring"}]})
    s = go(write(tmp_path, r), store)
    assert trained(s) == {"k": 2}
    after = snapshot(store)
    assert {k: after[k] for k in before} == before  # old tags byte-identical
    assert set(s.stages[-1].eval[0].metrics) == {"accuracy", "auroc"}
    rows = TagStore(store).entries()
    assert sorted(r.name for r in rows) == ["<K>", "<Protein>", "<Q>", "<SMILES>"]
    k_meta = next(r for r in rows if r.name == "<K>")
    assert k_meta.metric.endswith(str(round(s.stages[-1].eval[0].metrics["accuracy"],
                                            4)).rstrip("0").rstrip("."))




@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(workdir, tmp_path):
    path = write(tmp_path, base_recipe(workdir))
    killed = subprocess.run([sys.executable, "-c", KILLER, str(path), str(tmp_path / "a")],
                            capture_output=True, text=True, env={**os.environ})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = list((tmp_path / "a" / ".work").glob("*/state.json"))
    assert len(work) == 1  # the <Q> stage died after its step-2 checkpoint
    plan = go(path, tmp_path / "a", dry_run=True)
    assert stage(plan, "q")["reason"] == "resumes from its checkpoint at step 2/6"

    resumed = go(path, tmp_path / "a")
    assert trained(resumed) == {"q": 4, "protein": 3}  # q: steps 3..6 only
    assert stage(resumed, "q")["resumed_from"] == 2
    assert not list((tmp_path / "a" / ".work").glob("*/state.json"))  # cleaned up
    straight = go(path, tmp_path / "b")
    assert trained(straight) == {"smiles": 4, "protein": 3, "q": 6}
    assert stage(resumed, "q")["key"] == stage(straight, "q")["key"]
    for entry in (tmp_path / "b").glob("*/tag.safetensors"):
        a = load_file(tmp_path / "a" / entry.parent.name / "tag.safetensors")
        b = load_file(entry)
        for k in b:
            assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    assert stage(resumed, "q")["eval"][0]["metrics"] == pytest.approx(
        stage(straight, "q")["eval"][0]["metrics"], abs=1e-6)
    # the validation curve and the kept step survive the kill too (checkpointed)
    a, b = stage(resumed, "q"), stage(straight, "q")
    assert [c["step"] for c in a["curve"]] == list(range(7)) and a["best_step"] == b["best_step"]
    assert [c["validation_loss"] for c in a["curve"]] == pytest.approx(
        [c["validation_loss"] for c in b["curve"]], abs=1e-6)
    ablation = "ablation: <Q> untrained, head fitted"  # kept in the checkpoint across the kill
    assert stage(resumed, "q")["eval"][0]["baselines"][ablation] == pytest.approx(
        stage(straight, "q")["eval"][0]["baselines"][ablation])


def test_ctrl_c_saves_a_checkpoint_between_steps(workdir, tmp_path):
    r = base_recipe(workdir)
    r["stages"], r["tags"] = [r["stages"][1]], r["tags"][:1]
    r["stages"][0]["train"].update(steps=6, checkpoint_every=0, log_every=1)
    path = write(tmp_path, r)

    def interrupt(msg):
        if "step 3/6 loss" in msg:  # not the validation line: a second ^C stops at once
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run(load_recipe(path), TagStore(tmp_path / "s"), log=interrupt, progress=False)
    state = list((tmp_path / "s" / ".work").glob("*/state.json"))
    assert len(state) == 1 and '"step": 3' in state[0].read_text()
    assert trained(go(path, tmp_path / "s")) == {"smiles": 3}


def test_joint_stage_mixes_domains_by_weight_and_trains_both(workdir, tmp_path):
    r = base_recipe(workdir)
    r["stages"] = [{"name": "domains", "tags": ["<SMILES>", "<Protein>"],
                    "train": {"steps": 3},
                    "data": [{"source": str(workdir / "mols.csv"), "weight": 3,
                              "template": "<SMILES> {smiles}"},
                             {"source": str(workdir / "prot.fasta"),
                              "template": "<Protein> {sequence}"}],
                    "eval": [{"source": str(workdir / "test.csv"),
                              "template": "<SMILES> {smiles}"}]}]
    r["tags"] = r["tags"][:2]
    s = go(write(tmp_path, r), tmp_path / "store")
    assert trained(s) == {"domains": 3}
    assert set(s.stages[0].eval[0].metrics) == {"loss", "perplexity", "tokens"}
    assert s.stages[0].eval[0].kind == "loss"
    names = {e.name for e in TagStore(tmp_path / "store").entries()}
    assert names == {"<SMILES>", "<Protein>"}


def test_mixed_batches_follow_the_weights_and_replay_exactly():
    gen = mixed_batches([[3] * 100, [5] * 50], [3.0, 1.0], batch_size=8, seed=0)
    batches = [next(gen) for _ in range(400)]
    counts = np.zeros(2)
    for b in batches:
        assert sum(len(i) for _, i in b) == 8
        for k, idx in b:
            counts[k] += len(idx)
            assert all(0 <= i < (100 if k == 0 else 50) for i in idx)
    assert counts[0] / counts.sum() == pytest.approx(0.75, abs=0.03)
    again = mixed_batches([[3] * 100, [5] * 50], [3.0, 1.0], batch_size=8, seed=0)
    assert [next(again) for _ in range(400)] == batches


@pytest.mark.slow
def test_pretrained_tags_and_the_too_long_policy(workdir, tmp_path):
    r = base_recipe(workdir)
    go(write(tmp_path, r), tmp_path / "s1")
    shared = workdir / "out" / "tags" / "SMILES"  # a tag folder someone shared
    r2 = {**r, "out": str(tmp_path / "out2"), "pretrained": {"<SMILES>": str(shared)}}
    r2["stages"] = [r["stages"][0]]
    r2["tags"] = [t for t in r["tags"] if t["name"] == "<Q>"]
    r2["stages"][0]["train"] = {"steps": 2, "max_length": 9}
    r2["stages"][0]["eval"] = []
    with pytest.raises(InputTooLongError, match=r"mols.csv row 3: 14 tokens > max_length 9 "):
        go(write(tmp_path, r2), tmp_path / "s2")
    r2["stages"][0]["data"][0]["too_long"] = "skip"
    messages: list[str] = []
    s = run(load_recipe(write(tmp_path, r2)), TagStore(tmp_path / "s2"), log=messages.append,
            progress=False)
    assert trained(s) == {"q": 2}
    assert any("mols.csv: skipped 13 of 16 input(s) longer than 9 tokens" in m
               for m in messages)
    meta = json.loads(next((tmp_path / "s2").glob("*/tag.json")).read_text())
    assert meta["provenance"]["data"][0]["rows"] == 3
    assert meta["provenance"]["data"][0]["skipped"] == 13
    assert meta["provenance"]["key_material"]["deps"]["<SMILES>"].startswith("pretrained:")


@pytest.mark.slow
def test_runs_are_tracked_in_tensorboard_and_results_are_strict_json(workdir, tmp_path):
    """Each trained stage writes TensorBoard scalars under out/tensorboard/STAGE: the step
    losses and learning rates, the validation losses (step 0 included) and every method's
    test metrics; read back with TensorBoard's own reader. track='none' writes nothing.
    results.json and tag.json are strict JSON: an undefined metric is null, never NaN."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tagllm.errors import ConfigError
    from tagllm.tracking import scalar_name

    r = base_recipe(workdir)
    r["out"] = str(tmp_path / "out")
    go(write(tmp_path, r), tmp_path / "store")
    acc = EventAccumulator(str(tmp_path / "out" / "tensorboard" / "q"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("validation/loss")] == [0, 1, 2, 3, 4, 5, 6]
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]  # warm-up then cosine decay
    assert "train/head_lr" in tags
    def strict(constant):  # what JavaScript's and jq's parsers do with NaN / Infinity
        raise ValueError(f"not JSON: {constant}")

    q_eval = json.loads((tmp_path / "out" / "results.json").read_text(),
                        parse_constant=strict)
    q_eval = next(s for s in q_eval["stages"] if s["stage"] == "q")["eval"][0]
    assert q_eval["baselines"]["training mean"]["pearson"] is None  # undefined: null
    for tag in ("Q", "SMILES"):  # the tag files' provenance too
        json.loads((tmp_path / "out" / "tags" / tag / "tag.json").read_text(),
                   parse_constant=strict)
    mse = acc.Scalars(scalar_name("eval", q_eval["name"], "tags", "mse"))
    assert [e.step for e in mse] == [6]
    assert mse[0].value == pytest.approx(q_eval["metrics"]["mse"], rel=1e-5)
    assert any(t.startswith("eval/") and "/Morgan_k-NN" in t for t in tags)
    assert (tmp_path / "out" / "tensorboard" / "smiles").is_dir()

    r["out"] = str(tmp_path / "quiet")
    go(write(tmp_path, r), tmp_path / "store2", track="none")
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    with pytest.raises(ConfigError, match="track: 'wandb' is not one of"):
        go(write(tmp_path, r), tmp_path / "store3", track="wandb")


@pytest.mark.slow
def test_two_processes_on_one_store_train_a_stage_once(workdir, tmp_path):
    """Two `tagllm run`s of one recipe on one store: the stage's lock makes the second wait
    while the first trains, then reuse what the first stored. The test holds the lock until
    both are waiting, so the race is real and its outcome deterministic."""
    r = base_recipe(workdir)
    r["stages"], r["tags"] = [r["stages"][1]], r["tags"][:1]
    r.pop("out")
    path, store = write(tmp_path, r), tmp_path / "store"
    key = stage(go(path, store, dry_run=True), "smiles")["key"]
    held = FileLock(store / ".locks" / f"{key}.lock")
    held.acquire()
    procs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
    try:
        for f in logs:
            with open(f, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tagllm.cli", "run", str(path), "--store", str(store),
                     "--progress", "false", "--track", "none"], stdout=out, stderr=out,
                    env={**os.environ}))
        deadline = time.monotonic() + 240
        while not all("waiting for it" in f.read_text() for f in logs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [f.read_text() for f in logs]
            time.sleep(0.2)
    finally:
        held.release()
    assert [p.wait(timeout=240) for p in procs] == [0, 0], [f.read_text() for f in logs]
    out = [f.read_text() for f in logs]
    assert sum("stage smiles: training <SMILES>" in o for o in out) == 1, out
    assert sum("stage smiles: stored by another process meanwhile; reused" in o
               for o in out) == 1, out
    assert len(list(store.glob("*/tag.json"))) == 1 and not list(store.glob(".work/*/*"))


@pytest.mark.slow
def test_a_changed_evaluation_is_re_evaluated_with_the_stored_tags(workdir, tmp_path):
    """Adding a baseline or pointing an evaluation elsewhere re-evaluates the stored tags
    (no training; the ablation measured by the training run is kept while its test rows are
    the same); the next run reads the stored evaluation. New test rows for an evaluation
    with an ablation retrain the stage: the ablation is measured while training."""
    store = tmp_path / "store"
    r = base_recipe(workdir)
    r["stages"][0]["eval"].append({"source": str(workdir / "test.csv"), "label": "y", "n": 3,
                                   "name": "three rows"})
    s1 = go(write(tmp_path, r), store)
    first = stage(s1, "q")["eval"]

    r2 = copy.deepcopy(r)
    r2["stages"][0]["eval"][0]["baselines"] = ["knn", "mean", "rf"]
    other = tmp_path / "other.csv"  # another test file (molecules not in training)
    other.write_text("smiles,y\n" + "".join(f"{s},{len(s) / 10}\n" for s in
                                            ["CCCCCC", "OCCCO", "NCCCN", "CCSC", "c1ccsc1"]))
    r2["stages"][0]["eval"][1]["source"] = str(other)
    r2["stages"][0]["eval"][1]["n"] = 5
    plan = go(write(tmp_path, r2), store, dry_run=True)
    assert stage(plan, "q")["cached"] and "re-evaluated" in stage(plan, "q")["reason"]
    logs = []
    s2 = run(load_recipe(write(tmp_path, r2)), TagStore(store), log=logs.append,
             progress=False)
    assert trained(s2) == {} and any("evaluating the stored tags" in x for x in logs)
    ev, three = stage(s2, "q")["eval"]
    assert "Morgan random forest (200 trees)" in ev["baselines"]
    assert ev["baselines"]["ablation: <Q> untrained, head fitted"] == \
        first[0]["baselines"]["ablation: <Q> untrained, head fitted"]
    assert ev["metrics"] == pytest.approx(first[0]["metrics"], rel=1e-4, abs=1e-6)
    assert three["rows"] == 5 and sorted(np.ravel(three["targets"])) == pytest.approx(
        [0.4, 0.5, 0.5, 0.6, 0.7])
    results = json.loads((workdir / "out" / "results.json").read_text())
    assert stage_rows(results, "q") == [ev["rows"], 5]

    logs.clear()  # the third run reads the stored evaluation
    s3 = run(load_recipe(write(tmp_path, r2)), TagStore(store), log=logs.append,
             progress=False)
    assert trained(s3) == {} and not any("evaluating the stored tags" in x for x in logs)
    assert json_text(stage(s3, "q")["eval"]) == json_text(stage(s2, "q")["eval"])

    r3 = copy.deepcopy(r2)  # the ablated evaluation's rows change: q trains again
    r3["stages"][0]["eval"][0]["n"] = 3
    assert trained(go(write(tmp_path, r3), store)) == {"q": 6}


def stage_rows(results, name):
    return [e["rows"] for e in next(s for s in results["stages"] if s["stage"] == name)["eval"]]


@pytest.mark.slow
def test_validation_rows_of_their_own_and_by_groups(workdir, tmp_path):
    """validation_source: the stage validates on that file's rows (never trained on) and
    they are part of the key; groups: the validation rows share no group with training."""
    store = tmp_path / "store"
    val = tmp_path / "val.csv"
    val.write_text("smiles,y\nCCCCCCC,0.7\nOCCCCO,0.6\nNCCCCN,0.6\n")
    r = base_recipe(workdir)
    q = r["stages"][0]
    q["data"][0]["validation_source"] = str(val)
    s1 = go(write(tmp_path, r), store)
    prov = json.loads((workdir / "out" / "tags" / "Q" / "tag.json").read_text())["provenance"]
    assert prov["validation"]["rows"] == [3]
    assert prov["data"][0]["rows"] == len(SMILES)  # every training row trains
    material = prov["key_material"]["data"][0]["validation"]
    assert material["rows"]["n"] == 3 and material["groups"] == []

    r2 = copy.deepcopy(r)
    r2["stages"][0]["data"][0].pop("validation_source")
    r2["stages"][0]["data"][0]["groups"] = ["smiles"]  # a group per molecule: whole rows
    assert stage(go(write(tmp_path, r2), store), "q")["key"] != stage(s1, "q")["key"]
    with pytest.raises(DataError, match="groups names column"):
        r3 = copy.deepcopy(r2)
        r3["stages"][0]["data"][0]["groups"] = ["ligand"]
        go(write(tmp_path, r3), store, dry_run=True)


def test_protein_sources_validate_by_homology_group():
    from tagllm.sources import default_groups, load_source

    t, _ = load_source("proteins:train", n=300, seed=0, progress=False)
    assert default_groups("proteins:train") == ["homology"] and "homology" in t.columns
    assert default_groups("kiba:train") == ["ligand_id", "prot_id"]
    assert default_groups("moses:train") == [] and default_groups("my.csv") == []


def test_in_context_validation_by_groups_leaves_linked_rows_out(workdir, tmp_path):
    """With context and grouped rows, the rows that share a group with both sides neither
    validate nor train (nor appear as examples); no training row shares a group with a
    validation row."""
    from tagllm.model import TaggedModel
    from tagllm.protocol import plan

    grid = tmp_path / "grid.csv"
    grid.write_text("smiles,lig,prot,y\n" + "".join(
        f"{'C' * (i + 1)}O,L{i % 8},P{i // 8},{i / 48}\n" for i in range(48)))
    r = base_recipe(workdir)
    r["stages"][0]["data"][0].update(source=str(grid), context=1, groups=["lig", "prot"])
    r["stages"][0]["train"]["validation"] = 0.2
    r["stages"][0]["eval"] = []
    recipe = load_recipe(write(tmp_path, r))
    plans = plan(recipe, TaggedModel.from_pretrained(recipe.model), TagStore(tmp_path / "s"),
                 log=lambda m: None, progress=False)
    d = next(p for p in plans if p.stage.name == "q").data[0]
    val = [i for i, v in enumerate(d.val_mask) if v]
    train = [i for i, v in enumerate(d.val_mask) if not v]
    assert val and train and len(d.texts) < 48
    for col in ("lig", "prot"):
        assert not {d.table[col][i] for i in val} & {d.table[col][i] for i in train}


def test_a_new_closed_form_fit_of_a_head_kind_retrains_only_its_stages(workdir, tmp_path,
                                                                         monkeypatch):
    """A head kind whose warm start fits differently (its ``fit_version``) changes the keys
    of the stages that train such a head, and of no other stage."""
    from tagllm import TaggedModel
    from tagllm.heads import ClassificationHead
    from tagllm.protocol.plan import plan

    r = base_recipe(workdir)
    r["tags"].append({"name": "<C>", "kind": "function", "num_tokens": 2,
                      "head": {"kind": "classification", "num_outputs": 2}})
    r["stages"].append({"name": "c", "tags": ["<C>"], "train": {"steps": 2}, "data": [
        {"source": str(workdir / "mols.csv"), "template": "<SMILES> {smiles} <C>",
         "label": "y"}]})
    cls_csv = tmp_path / "cls.csv"
    cls_csv.write_text("smiles,y\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(SMILES)))
    r["stages"][-1]["data"][0]["source"] = str(cls_csv)
    recipe = load_recipe(write(tmp_path, r))
    model = TaggedModel.from_pretrained(str(workdir / "tiny"))

    def keys():
        return {p.stage.name: p.key for p in plan(recipe, model, TagStore(tmp_path / "s"),
                                                  log=lambda s: None, progress=False)}

    before = keys()
    monkeypatch.setattr(ClassificationHead, "fit_version", ClassificationHead.fit_version + 1)
    after = keys()
    assert {k for k in before if before[k] != after[k]} == {"c"}


def test_a_run_validates_on_whole_groups_and_reports_the_step_select_last_kept(
        workdir, tmp_path, monkeypatch, capsys):
    """Through a whole run (no in-context examples): the entry's ``groups`` reach the
    validation split, so no training row shares a ligand or a protein with a validation
    row; with ``select: last`` after a wrecking learning rate the run, its results file, the
    stored tag and ``tagllm train`` all name the last step as the one kept, not the best."""
    from tagllm.training import batching

    grid = tmp_path / "grid.csv"
    grid.write_text("smiles,lig,prot,y\n" + "".join(
        f"{'C' * (i % 12 + 1)}O,L{i % 8},P{i // 8},{i / 48}\n" for i in range(48)))
    splits = []
    real = batching.validation_split

    def spy(n, fraction, seed, groups=None, where="data"):
        splits.append((groups, *real(n, fraction, seed, groups, where)))
        return splits[-1][1:]

    monkeypatch.setattr(batching, "validation_split", spy)
    r = base_recipe(workdir)
    r["stages"][0]["data"][0].update(source=str(grid), groups=["lig", "prot"])
    r["stages"][0]["train"].update(steps=4, eval_every=2, validation=0.25, select="last",
                                   lr=30.0, head_lr=30.0, max_grad_norm=0)
    r["stages"][0]["eval"] = []
    summary = go(write(tmp_path, r), tmp_path / "store")
    groups, train, val = next(s for s in splits if s[0] is not None)
    assert train and val and len(train) + len(val) < 48  # linked rows do neither
    for col in (0, 1):
        assert not {groups[i][col] for i in val} & {groups[i][col] for i in train}
    q = stage(summary, "q")
    assert q["kept_step"] == 4 and q["best_step"] == 0, q  # the wreck is kept, as asked
    results = json.loads((workdir / "out" / "results.json").read_text())
    assert next(s for s in results["stages"] if s["stage"] == "q")["kept_step"] == 4
    prov = next(m["provenance"] for m in (json.loads(f.read_text()) for f in
                                          (tmp_path / "store").glob("*/tag.json"))
                if m["provenance"]["stage_key"] == q["key"])
    assert prov["validation"]["kept_step"] == 4 and prov["validation"]["best_step"] == 0

    main(["train", "--tag", "<W>", "--kind", "function", "--head", "regression", "--label",
          "y", "--data", str(grid), "--template", "<W> {smiles}", "--model",
          str(workdir / "tiny"), "--steps", "4", "--eval_every", "2", "--validation", "0.25",
          "--select", "last", "--lr", "30", "--head_lr", "30", "--max_grad_norm", "0",
          "--test", "none", "--out", str(tmp_path / "W"), "--store", str(tmp_path / "s2"),
          "--progress", "false"])
    out = " ".join(capsys.readouterr().out.split())
    assert "kept the last step 4 (lowest validation loss at step 0)" in out, out


#: What the tiny recipe trains under each store format: its stages' final losses and the
#: summed norms of the stored tensors (vectors and heads). A change to training that moves
#: these numbers changes what a stored tag would be: raise ``store.STORE_FORMAT`` (its
#: comment says why) and pin the new numbers here under the new format.
PINNED = {4: {"smiles": (4.694544, 0.030292), "q": (1.976506, 4.677263),
              "protein": (4.653367, 0.02453)}}


def test_what_training_does_is_pinned_to_the_store_format(workdir, tmp_path):
    from tagllm.serialization import read_tag
    from tagllm.store import STORE_FORMAT

    summary = go(write(tmp_path, base_recipe(workdir)), tmp_path / "store")
    got = {}
    for f in (tmp_path / "store").glob("*/tag.json"):
        meta = json.loads(f.read_text())
        name = next(s.stage for s in summary.stages
                    if s.key == meta["provenance"]["stage_key"])
        _, tensors = read_tag(f.parent)
        norm = float(sum(t.double().norm() for _, t in sorted(tensors.items())))
        got[name] = (round(stage(summary, name)["final_loss"], 6), round(norm, 6))
    assert STORE_FORMAT in PINNED, f"pin what format {STORE_FORMAT} trains: {got}"
    want = PINNED[STORE_FORMAT]
    assert got.keys() == want.keys(), got
    for name, (loss, norm) in want.items():
        assert got[name] == pytest.approx((loss, norm), rel=1e-4), (
            f"stage {name} trains differently from what store format {STORE_FORMAT} "
            f"pinned ({got[name]} != {(loss, norm)}): if tagllm's training changed, raise "
            "store.STORE_FORMAT and pin the new numbers under it; if only torch or the "
            "machine changed, re-pin them under the same format")
