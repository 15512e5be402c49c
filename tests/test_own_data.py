"""A user's own file in one command: the defaults `tagllm train` chooses from the flags and
the file (template, head, shipped domain tag, 80/20 test split, out folder), each printed,
every mistake refused before a model loads; and the whole path on the tiny model, ending
with the paired comparison against the random forest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tagllm.cli import main
from tagllm.errors import ConfigError, DataError
from tagllm.protocol.standalone import own_data
from tagllm.shipped import SHIPPED

from tiny import saved_tiny_tags

MOLS = [f"{'C' * k}{end}" for k in range(1, 21) for end in ("O", "N", "F", "Cl", "S")]


def _file(tmp_path, header: str, rows: list[str], name: str = "mine.csv") -> str:
    p = tmp_path / name
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(p)


def _defaults(data, label, tag="<Y>", **kw):
    args = dict(template=None, kind=None, head="auto", num_outputs=None, load=None, out=None,
                test="auto", model="smollm2")
    return own_data(tag, data, label=label, **{**args, **kw})


def test_defaults_for_a_file_of_molecules_or_sequences(tmp_path):
    f = _file(tmp_path, "SMILES,logS", [f"{s},{i / 7:.3f}" for i, s in enumerate(MOLS)])
    d = _defaults(f, ["logS"], "<LogS>")
    assert (d.template, d.kind, d.head, d.num_outputs) == \
        ("<SMILES> {SMILES} <LogS>", "function", "regression", 1)
    assert d.load == SHIPPED["smiles"].paths() and d.out == Path("tags/LogS")
    assert (d.data, d.test) == (f"split:train:{f}", f"split:test:{f}")
    assert len(d.notes) == 5  # template, head, shipped tag, split, out: each printed
    assert "split:test:" in d.notes[3] and " rows: 20% by a hash" in d.notes[3]
    # 0/1 labels, one of them missing: classification; explicit classification of 0..2: 3
    binary = _file(tmp_path, "smiles,active", [f"{s},{'' if i == 3 else i % 2}"
                                                for i, s in enumerate(MOLS)], "b.csv")
    assert (_defaults(binary, ["active"]).head, _defaults(binary, ["active"]).num_outputs) == \
        ("classification", 2)
    three = _file(tmp_path, "smiles,c", [f"{s},{i % 3}" for i, s in enumerate(MOLS)], "3.csv")
    assert _defaults(three, ["c"]).head == "regression"
    assert _defaults(three, ["c"], head="classification").num_outputs == 3
    seqs = ["".join("ACDEFGHIKLMNPQRSTVWY"[(i * 7 + j) % 20] for j in range(20 + i))
            for i in range(120)]
    prot = _file(tmp_path, "sequence,y", [f"{q},{i / 3:.2f}" for i, q in enumerate(seqs)],
                 "p.csv")
    d = _defaults(prot, ["y"])
    assert d.template == "<Protein> {sequence} <Y>" and d.load == SHIPPED["protein"].paths()
    fasta = tmp_path / "p.fasta"  # FASTA and SD files are read by their own readers
    fasta.write_text("".join(f">sp|P{i}|X\n{q}\n" for i, q in enumerate(seqs)))
    assert _defaults(str(fasta), [], "<D>").template == "<D> {sequence}"
    sdf = tmp_path / "m.sdf"
    from rdkit import Chem
    with Chem.SDWriter(str(sdf)) as w:
        for i, m in enumerate(MOLS[:30]):
            mol = Chem.MolFromSmiles(m)
            mol.SetProp("y", str(i))
            w.write(mol)
    assert _defaults(str(sdf), ["y"], test="none").template == "<SMILES> {smiles} <Y>"
    assert _defaults("b3db:train", ["bbb"], template="<SMILES> {smiles} <Y>").head == \
        "classification"  # a built-in source's labels decide too
    d = _defaults(f, [], "<Mol>")  # a domain tag on the user's molecules: no head, no test
    assert (d.template, d.kind, d.head, d.test, d.load) == \
        ("<Mol> {SMILES}", "domain", "none", None, [])
    given = _defaults(f, ["logS"], test="none", out="x", load="", template="{SMILES} <Y>")
    assert (given.data, given.test, given.out, given.load) == (f, None, Path("x"), [])


def test_mistakes_are_refused_before_a_model_loads(tmp_path, monkeypatch):
    f = _file(tmp_path, "name,y", ["a,1", "b,2"])
    with pytest.raises(ConfigError, match=r"no SMILES or sequence column \(columns: \['name', "
                                          r"'y'\]\); give the input text"):
        _defaults(f, ["y"])
    m = _file(tmp_path, "smiles,y", ["CCO,1"], "m.csv")
    with pytest.raises(ConfigError, match="the template uses <SMILES>: load its tag folder "
                                          "with --load .shipped tags for /tiny: none"):
        _defaults(m, ["y"], model="/tiny")
    smollm2 = ", ".join(n for n, e in SHIPPED.items() if e.model == "smollm2")
    with pytest.raises(ConfigError, match=rf"uses <Foo>: load its tag folder with --load "
                                          rf"\(shipped tags for smollm2: {smollm2}\)"):
        _defaults(m, ["y"], template="<Foo> {smiles} <Y>")
    with pytest.raises(ConfigError, match="moses:train is a built-in source; give the input"):
        _defaults("moses:train", ["qed"])
    with pytest.raises(ConfigError, match="--label trains a head: it needs --kind function"):
        _defaults(m, ["y"], kind="domain")
    few = _file(tmp_path, "smiles,y", [f"{s},{i}" for i, s in enumerate(MOLS[:12])], "few.csv")
    with pytest.raises(ConfigError, match=r"few.csv: its test split .* holds \d valid row.*"
                                          r"fewer than 10 to score.*--test none"):
        _defaults(few, ["y"])
    assert _defaults(few, ["y"], test="none").test is None
    pair = _file(tmp_path, "drug1,drug2,y", ["CCO,CCN,1"], "pair.csv")
    with pytest.raises(ConfigError, match=r"several input columns \(\['drug1', 'drug2'\]\)"):
        _defaults(pair, ["y"])
    with pytest.raises(DataError, match="did you mean 'moses:'"):
        _defaults("mose:train", ["qed"])
    (tmp_path / "tags" / "Y").mkdir(parents=True)  # not a tag: never replaced by default
    big = _file(tmp_path, "smiles,y", [f"{s},{i}" for i, s in enumerate(MOLS)], "big.csv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tags/Y exists and is not the tag <Y>; give --out"):
        _defaults(big, ["y"])


def test_own_file_in_one_command_on_the_tiny_model(tmp_path, tiny_model_dir, monkeypatch,
                                                   capsys):
    """Only the file, the label, the tag, and (the tiny model has no shipped tags) the
    template and the domain tag: trained on the file's 80% split, scored on its 20% beside
    the random forest, the training mean and the untrained tag; written to tags/Y."""
    saved_tiny_tags(tmp_path, {})
    monkeypatch.chdir(tmp_path)
    f = _file(tmp_path, "SMILES,y", [f"{s},{len(s) / 10:.2f}" for s in MOLS])
    main(["train", "--data", f, "--label", "y", "--tag", "<Y>", "--template", "<S> {SMILES} <Y>",
          "--load", str(tmp_path / "tags" / "S"), "--model", str(tiny_model_dir), "--steps",
          "3", "--batch_size", "4", "--progress", "false", "--num_tokens", "2"])
    cap = capsys.readouterr()
    out = cap.out + cap.err
    meta = json.loads((tmp_path / "tags" / "Y" / "tag.json").read_text())
    prov = meta["provenance"]
    assert prov["data"][0]["source"] == f"split:train:{f}"
    test = prov["eval"][0]
    assert test["name"] == f"split:test:{f}" and 10 <= test["rows"] < len(MOLS) / 2
    assert prov["data"][0]["rows"] + test["rows"] == len(MOLS)
    assert any("random forest" in b for b in test["baselines"]) and "training mean" in \
        test["baselines"]
    assert any(k.startswith("ablation") for k in test["baselines"])
    assert "default: head regression on y" in out and "split:test:" in out
    assert "random forest" in out and "wrote tags/Y" in out.replace("\n", " ")
    # a tag with a head trains with the validated setting, except what was given (--steps)
    train = prov["stage"]["train"]
    assert (train["steps"], train["lr"], train["head_lr"], train["refit_every"],
            train["patience"], train["schedule"]) == (3, 1e-4, 1e-6, 50, 4, "constant")
    assert "default: for a tag with a head, lr 0.0001, schedule constant" in " ".join(out.split())


def test_head_training_defaults_yield_to_given_flags():
    """The validated setting fills only what the user did not give, and drops what a given
    flag rules out (so the error never names a flag the user did not type)."""
    from tagllm.config import HEAD_TRAINING, TrainConfig, head_training

    assert head_training({}) == HEAD_TRAINING
    assert "steps" not in head_training({"steps": 100})
    for given in ({"warm_start_head": False}, {"validation": 0.0, "select": "last"}):
        TrainConfig(**head_training(given), **given)  # no conflict left


def test_dependencies_and_template_from_the_tag_files(tmp_path, monkeypatch):
    """A function tag alone brings the tag it was trained with from the store (by value, a
    damaged entry skipped) and its recorded template; a tag trained with in-context
    examples, or with odd provenance, records no template that would reproduce its inputs."""
    from tagllm.protocol.standalone import recorded_template, with_trained_with

    store = tmp_path / "store"
    monkeypatch.setenv("TAGLLM_STORE", str(store))
    part = {"template": "<S> {smiles} <Q>", "context": 0}
    saved_tiny_tags(tmp_path, {"stage": {"data": [part]}})
    (store / "bad").mkdir(parents=True)
    (store / "bad" / "tag.json").write_text("[1]")
    (store / "worse").mkdir()
    (store / "worse" / "tag.json").write_text('{"name": "<S>"}')  # no tensors file
    notes = []
    assert with_trained_with([tmp_path / "tags" / "Q"], notes.append) == [tmp_path / "tags" / "Q"]
    assert "neither given, shipped nor in the tag store" in notes[0]
    shutil.copytree(tmp_path / "tags" / "S", store / "s-entry")
    notes.clear()
    assert with_trained_with([tmp_path / "tags" / "Q"], notes.append) == [
        store / "s-entry", tmp_path / "tags" / "Q"]
    assert notes == [f"<S>: {store / 's-entry'}, the one <Q> was trained with"]
    assert recorded_template([tmp_path / "tags" / "Q"]) == "<S> {smiles} <Q>"
    meta_path = tmp_path / "tags" / "Q" / "tag.json"
    meta = json.loads(meta_path.read_text())
    for provenance in ({"stage": {"data": [{**part, "context": 2}]}}, {"stage": None},
                       {"stage": {"data": ["x"]}}, {"stage": "s"}):
        meta_path.write_text(json.dumps({**meta, "provenance": provenance}))
        assert recorded_template([tmp_path / "tags" / "Q"]) is None, provenance
