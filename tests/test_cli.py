"""The CLI end to end on a tiny local model: train (2 stages), predict, evaluate, inspect."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tagllm.cli import main
from tagllm.records import EvalResult
from tagllm.report import method_rows

from tiny import save_tiny

SMILES = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "OCCO", "c1ccncc1", "CC(C)O",
          "CCOC", "C1CCCCC1", "CN(C)C", "O=C=O"]


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "mols.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smiles", "y"])
        for i, s in enumerate(SMILES):
            w.writerow([s, len(s) / 10 + (i % 3) * 0.1])
    return p


def _train_two_stages(tmp_path, model, data):
    common = ["--model", str(model), "--steps", "3", "--batch_size", "4", "--progress", "false"]
    main(["train", "--tag", "<SMILES>", "--data", str(data), "--template", "<SMILES> {smiles}",
          "--out", str(tmp_path / "S"), "--num_tokens", "3", *common])
    main(["train", "--tag", "<QED>", "--kind", "function", "--head", "regression",
          "--label", "y", "--data", str(data), "--template", "<SMILES> {smiles} <QED>",
          "--load", str(tmp_path / "S"), "--out", str(tmp_path / "Q"), "--num_tokens", "2",
          "--test", "none", *common])


def test_train_predict_evaluate_inspect(tmp_path, tiny_model_dir, data, capsys):
    _train_two_stages(tmp_path, tiny_model_dir, data)
    meta = json.loads((tmp_path / "Q" / "tag.json").read_text())
    assert meta["trained_with"].keys() == {"<SMILES>"}
    assert meta["provenance"]["data"][0]["rows"] == len(SMILES)

    out = tmp_path / "pred.csv"
    tags = ["--tags", f"{tmp_path / 'S'},{tmp_path / 'Q'}"]
    main(["predict", *tags, "--input", str(data), "--output", str(out), "--model",
          str(tiny_model_dir), "--progress", "false"])
    rows = list(csv.DictReader(open(out)))
    assert [r["smiles"] for r in rows] == SMILES
    assert all(float(r["prediction"]) == float(r["prediction"]) for r in rows)
    # bfloat16 weights (--dtype): the same rows, predictions close to float32's
    out16 = tmp_path / "pred16.csv"
    main(["predict", *tags, "--input", str(data), "--output", str(out16), "--model",
          str(tiny_model_dir), "--progress", "false", "--dtype", "bfloat16"])
    rows16 = list(csv.DictReader(open(out16)))
    assert [r["smiles"] for r in rows16] == SMILES
    p32, p16 = (np.array([float(r["prediction"]) for r in x]) for x in (rows, rows16))
    assert np.abs(p16 - p32).max() <= 0.05 * (np.abs(p32).max() + 1e-3)

    js = tmp_path / "m.json"
    main(["evaluate", "--tags", str(tmp_path), "--data", str(data), "--label", "y", "--model",
          str(tiny_model_dir), "--json_out", str(js), "--progress", "false"])
    row = json.loads(js.read_text())
    assert row["format"] == "tagllm.eval/2"
    metrics = method_rows(EvalResult.from_json(row))["tags (<QED>)"]
    assert set(metrics) == {"mse", "mae", "pearson", "spearman", "ci"}
    assert row["command"].startswith("tagllm evaluate --tags ")  # what regenerates it
    # too long: an error naming the row, or skipped and counted with --too_long skip
    capsys.readouterr()
    short = ["evaluate", "--tags", str(tmp_path), "--data", str(data), "--label", "y",
             "--model", str(tiny_model_dir), "--max_length", "11", "--progress", "false"]
    with pytest.raises(SystemExit) as e:
        main(short)
    assert e.value.code == 2 and "tokens > max_length 11" in capsys.readouterr().err
    main([*short, "--too_long", "skip", "--json_out", str(js)])
    assert 0 < json.loads(js.read_text())["rows"] < len(SMILES)

    capsys.readouterr()
    main(["inspect", str(tmp_path / "Q"), "--model", str(tiny_model_dir)])
    text = " ".join(capsys.readouterr().out.split())
    assert "files verified" in text and "fingerprint matches" in text
    assert "tensor embedding (2, 32)" in text and "tensor head.linear.weight (1, 32)" in text
    assert "<QED> (function), 2 vectors x 32" in text and "regression, 1 output(s)" in text
    assert "trained with <SMILES>" in text and "3 steps" in text
    assert "key_material" not in text  # the whole tag.json only with --full
    main(["inspect", str(tmp_path / "Q"), "--full", "true"])
    assert "key_material" in capsys.readouterr().out
    main(["inspect", str(tmp_path), "--model", str(tiny_model_dir)])  # a folder of folders
    text = capsys.readouterr().out
    assert text.count("files verified") == text.count("fingerprint matches") == 2

    gen = ["generate", "--prompt", "<SMILES> CC", "--tags", str(tmp_path / "S"), "--model",
           str(tiny_model_dir), "--max_new_tokens", "40"]
    capsys.readouterr()
    main(gen)
    text = capsys.readouterr().out[:-1]  # written as generated (sys.stdout, no rich)
    assert len(text) > 10 and "\n" not in text
    letter = next(c for c in text[len(text) // 2:] if c.isalnum())
    for cut in (letter, "#", "~"):  # --stop ends the text before the string's first use
        main([*gen, "--stop", cut])
        assert capsys.readouterr().out[:-1] == text.split(cut, 1)[0], cut
    # without --model: the base model the tag files record (here the tiny model's folder)
    again = tmp_path / "again.csv"
    main(["predict", *tags, "--input", str(data), "--output", str(again), "--progress",
          "false"])
    assert again.read_text() == out.read_text()
    # the function tag alone, no template: the <SMILES> it was trained with comes from the
    # tag store (found by the digest its tag file records), the template from its provenance
    capsys.readouterr()
    alone = tmp_path / "alone.csv"
    main(["predict", "--tags", str(tmp_path / "Q"), "--input", str(data), "--output",
          str(alone), "--progress", "false"])
    assert alone.read_text() == out.read_text()
    cap = capsys.readouterr()
    said = " ".join((cap.out + cap.err).split())  # the console wraps long lines
    assert "default: <SMILES>:" in said and "the one <QED> was trained with" in said
    assert "default: template '<SMILES> {smiles} <QED>'" in said


def test_cli_errors_exit_2_with_a_message(tmp_path, tiny_model_dir, data, capsys):
    _train_two_stages(tmp_path, tiny_model_dir, data)
    other = tmp_path / "other-model"
    save_tiny(other, "qwen2")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--tags", str(tmp_path / "S"), "--input", str(data), "--output",
              str(tmp_path / "p.csv"), "--model", str(other), "--progress", "false",
              "--template", "<SMILES> {smiles} <QED>"])
    assert e.value.code == 2
    assert "was trained for base model" in capsys.readouterr().err

    # tags of two base models and no --model: which one to load is not guessed
    main(["train", "--tag", "<O>", "--data", str(data), "--template", "<O> {smiles}",
          "--out", str(tmp_path / "qwen" / "O"), "--model", str(other), "--steps", "1",
          "--batch_size", "4", "--progress", "false"])
    with pytest.raises(SystemExit) as e:
        main(["predict", "--tags", f"{tmp_path / 'S'},{tmp_path / 'qwen'}", "--input", str(data),
              "--output", str(tmp_path / "p.csv"), "--progress", "false",
              "--template", "<SMILES> {smiles} <QED>"])
    assert e.value.code == 2
    assert "do not agree on one base model" in capsys.readouterr().err.replace("\n", " ")

    with pytest.raises(SystemExit) as e:  # a domain tag alone records no template
        main(["predict", "--tags", str(tmp_path / "S"), "--input", str(data), "--output",
              str(tmp_path / "p.csv"), "--model", str(tiny_model_dir), "--progress", "false"])
    assert e.value.code == 2
    assert "record no single template" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(SystemExit) as e:  # template names a tag that is not loaded
        main(["predict", "--tags", str(tmp_path / "S"), "--input", str(data), "--output",
              str(tmp_path / "p.csv"), "--model", str(tiny_model_dir), "--progress", "false",
              "--template", "<SMILES> {smiles} <QED>"])
    assert e.value.code == 2
    assert "unknown tag <QED>; known tags: <SMILES>" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "p.csv").exists()

    empty = tmp_path / "empty.csv"
    empty.write_text("smiles\n")
    with pytest.raises(SystemExit):
        main(["predict", "--tags", str(tmp_path), "--input", str(empty), "--output",
              str(tmp_path / "p.csv"), "--model", str(tiny_model_dir)])
    assert "empty.csv: no rows to predict" in capsys.readouterr().err.replace("\n", "")

    bad = tmp_path / "bad.csv"
    bad.write_text("smiles,y\nCCO,1\nnot_a_smiles,2\n")
    with pytest.raises(SystemExit):
        main(["train", "--tag", "<X>", "--data", str(bad), "--template", "<X> {smiles}",
              "--out", str(tmp_path / "X"), "--model", str(tiny_model_dir)])
    assert "bad.csv row 2: column 'smiles': invalid SMILES" in \
        capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "X").exists()


def test_run_list_and_recipe_errors(tmp_path, tiny_model_dir, data, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: clitest
model: {tiny_model_dir}
out: {tmp_path / "out"}
train: {{batch_size: 4, steps: 2, warmup_steps: 0}}
tags: [{{name: <SMILES>, num_tokens: 2}}]
stages:
  - {{name: s, tags: [<SMILES>], data: [{{source: {data}, template: "<SMILES> {{smiles}}"}}]}}
""")
    store = ["--store", str(tmp_path / "store")]
    main(["run", str(recipe), "--dry-run", *store, "--progress", "false"])
    assert "not trained yet" in capsys.readouterr().out
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("*/tag.json"))
    main(["run", str(recipe), *store, "--progress", "false"])
    assert "trained 1 stage(s) (2 steps)" in capsys.readouterr().out
    main(["list", *store, "--verify"])
    out = capsys.readouterr().out
    assert "<SMILES>" in out and "clitest/s" in out and " ok" in out
    recipe.write_text(recipe.read_text().replace("steps: 2", "stpes: 2"))
    with pytest.raises(SystemExit) as e:
        main(["run", str(recipe), *store])
    assert e.value.code == 2
    assert "unknown key(s) ['stpes']" in capsys.readouterr().err


def test_predict_streams_chunks_and_keeps_rows_and_atomicity(tmp_path, tiny_model_dir, data,
                                                            capsys):
    _train_two_stages(tmp_path, tiny_model_dir, data)
    big = tmp_path / "big.csv"
    rows = [SMILES[i % len(SMILES)] for i in range(150)]
    rows[129] = "C1CC"  # invalid (unclosed ring), data row 130, in the third chunk of 64
    with open(big, "w", newline="") as f:
        csv.writer(f).writerows([["smiles"], *([s] for s in rows)])
    out = tmp_path / "big_pred.csv"
    args = ["predict", "--tags", str(tmp_path), "--input", str(big), "--output", str(out),
            "--model", str(tiny_model_dir), "--batch_size", "2", "--progress", "false"]
    with pytest.raises(SystemExit):
        main(args)
    assert "big.csv row 130" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".big_pred.csv.tmp*"))  # nothing half
    main([*args, "--skip_invalid", "true"])
    got = list(csv.DictReader(open(out)))
    assert [r["smiles"] for r in got] == rows[:129] + rows[130:]
    from tagllm.data import iter_table

    chunks = list(iter_table(big, chunk_rows=64))
    assert [len(c) for c in chunks] == [64, 64, 22]
    assert chunks[2].where(1) == f"{big} row 130"


@pytest.mark.slow
def test_evaluate_classification_and_generation(tmp_path, tiny_model_dir, data):
    common = ["--model", str(tiny_model_dir), "--progress", "false"]
    labelled = tmp_path / "c.csv"
    labelled.write_text("smiles,c\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(SMILES)))
    main(["train", "--tag", "<C>", "--kind", "function", "--head", "classification",
          "--num_outputs", "2", "--label", "c", "--data", str(labelled), "--template",
          "{smiles} <C>", "--out", str(tmp_path / "tags" / "C"), "--num_tokens", "2",
          "--steps", "2", "--batch_size", "4", "--test", "none", *common])
    other = tmp_path / "c_train.csv"  # the baselines' own training molecules
    other.write_text("smiles,c\nCCCCCCO,0\nCCCCCN,1\nc1ccccc1CC,0\nCCOCCO,1\nCC(C)CC,0\n"
                     "NCCCCN,1\n")
    js = tmp_path / "c.json"
    main(["evaluate", "--tags", str(tmp_path / "tags"), "--data", str(labelled), "--label", "c",
          "--template", "{smiles} <C>", "--baseline_train", str(other),
          "--json_out", str(js), *common])
    res = method_rows(EvalResult.from_json(json.loads(js.read_text())))
    assert set(res["tags (<C>)"]) == {"accuracy", "auroc"}
    assert set(res) == {"tags (<C>)", "Morgan k-NN (k=5)", "Morgan random forest (200 trees)",
                        "training class frequencies"}
    main(["evaluate", "--tags", str(tmp_path / "tags"), "--data", str(labelled), "--label", "c",
          "--template", "{smiles} <C>", "--baseline_train", str(other), "--baselines",
          "rf,mean", "--json_out", str(js), *common])
    picked = json.loads(js.read_text())  # the evaluation row, as results.json holds it
    assert set(method_rows(EvalResult.from_json(picked))) == {
        "tags (<C>)", "Morgan random forest (200 trees)", "training class frequencies"}
    assert set(picked["intervals"]) == set(picked["baselines"])
    assert len(picked["predictions"]) == picked["rows"] == len(SMILES)

    pairs = tmp_path / "p.csv"
    pairs.write_text("source,target\nhello,hola\ngood day,buenos dias\n")
    main(["evaluate", "--tags", str(tmp_path / "tags"), "--data", str(pairs),
          "--reference", "target", "--template", "{source} <C> =", "--prompt",
          "English: {source}\nSpanish:", "--max_new_tokens", "4", "--json_out", str(js),
          *common])
    res = method_rows(EvalResult.from_json(json.loads(js.read_text())))
    assert set(res) == {"tags (generation)", "copy the source", "plain-text prompt (no tags)"}
    assert set(res["tags (generation)"]) == {"bleu", "chrf"}
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    # what training fits for generation: <C>'s 2 vectors (the LM head is the model's own)
    assert json.loads(js.read_text())["trainable_parameters"] == 2 * hidden


def test_evaluate_checks_every_argument_and_source_before_the_model(tmp_path, tiny_model_dir,
                                                                    data, capsys):
    """A bad flag, tag or source fails in seconds: with a model folder whose weights are
    missing, the error is still about the input, so no weight was loaded before the check
    (the tokenizer is: the length of every row is checked before its chemistry)."""
    import shutil

    _train_two_stages(tmp_path, tiny_model_dir, data)
    capsys.readouterr()
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    tags = ["--tags", f"{tmp_path / 'S'},{tmp_path / 'Q'}", "--model", str(no_weights)]
    cases = [
        (["--data", str(data), "--label", "y", "--reference", "y"], "give --label"),
        (["--data", str(data), "--label", "y", "--baseline_train", "moses:train"],
         "moses:train has no label(s) ['y']"),
        (["--data", str(data), "--label", "y", "--baseline_train", str(tmp_path / "no.csv")],
         "no.csv: no such file"),
        (["--data", str(data), "--label", "nope"], "missing column 'nope'"),
        (["--data", str(data), "--label", "y", "--template", "<SMILES> {smiles} <X>"],
         "unknown tag <X>"),
        (["--data", str(data), "--reference", "y", "--baseline_train", str(data)],
         "--baseline_train trains the label baselines"),
        (["--data", str(data), "--label", "y", "--baselines", "rf"], "--baselines chooses"),
        (["--data", str(data), "--label", "y", "--baseline_train", str(data), "--baselines",
          "rf,lora9"], "baselines: unknown ['lora9']"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["evaluate", *tags, *args, "--progress", "false"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err.replace("\n", " ")


def test_a_bug_prints_its_traceback_and_says_so(monkeypatch, capsys):
    """Only TagllmError is a user's error (one line, exit 2); any other exception is a bug
    in tagllm: its traceback is printed with a request to report it (exit 1)."""
    import tagllm.cli as cli

    def broken(recipe: str) -> None:
        raise ValueError("an internal invariant broke")

    monkeypatch.setitem(cli.COMMANDS, "run", broken)
    with pytest.raises(SystemExit) as e:
        main(["run", "r.yaml"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal invariant broke" in err
    assert "this is a bug in tagllm" in err.replace("\n", " ")


def test_predict_never_writes_over_its_input(tmp_path, tiny_model_dir, data, capsys):
    """--output naming the input (the same path, another spelling, a hard link or a
    symbolic link) fails before the model loads, and the input is unchanged."""
    import os

    _train_two_stages(tmp_path, tiny_model_dir, data)
    before = data.read_bytes()
    os.link(data, tmp_path / "hard.csv")
    (tmp_path / "sym.csv").symlink_to(data)
    spelled = data.parent / "." / data.name
    for out in (data, spelled, tmp_path / "hard.csv", tmp_path / "sym.csv"):
        with pytest.raises(SystemExit) as e:
            main(["predict", "--tags", str(tmp_path), "--input", str(data), "--output",
                  str(out), "--model", str(tmp_path / "no-model"), "--progress", "false"])
        assert e.value.code == 2
        assert "is the input file" in capsys.readouterr().err
    assert data.read_bytes() == before
    # the other commands' outputs: evaluate's --json_out (over the data or a tag file),
    # report's pages (over a results file or the preamble), all before any work
    meta = tmp_path / "Q" / "tag.json"
    tag_meta = meta.read_bytes()
    for source, out in ((data, data), (data, tmp_path / "sym.csv"), (data, meta),
                        (f"split:test:{data}", data)):
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "--tags", f"{tmp_path / 'S'},{tmp_path / 'Q'}", "--data",
                  str(source), "--label", "y", "--json_out", str(out), "--model",
                  str(tmp_path / "no-model"), "--progress", "false"])
        assert e.value.code == 2
        assert "--json_out" in capsys.readouterr().err
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text("{}")
    for args in (["--html", str(results)], ["--markdown", str(results)],
                 ["--html", str(data), "--preamble", str(data)]):
        with pytest.raises(SystemExit) as e:
            main(["report", str(results.parent), *args])
        assert e.value.code == 2 and "is the input file" in capsys.readouterr().err
    assert data.read_bytes() == before and meta.read_bytes() == tag_meta
    assert results.read_text() == "{}"


def test_train_takes_the_training_levers_as_flags(tmp_path, tiny_model_dir, data, capsys):
    """A deep, residual-MLP function tag whose readout is chosen on validation, trained
    with Adafactor, a constant rate and early stopping, from the command line; its file
    holds the concrete readout and it predicts. A bad layer fails before any model loads."""
    common = ["--model", str(tiny_model_dir), "--batch_size", "4", "--progress", "false"]
    main(["train", "--tag", "<SMILES>", "--data", str(data), "--template", "<SMILES> {smiles}",
          "--out", str(tmp_path / "S"), "--num_tokens", "3", "--steps", "2", *common])
    main(["train", "--tag", "<QED>", "--kind", "function", "--head", "regression",
          "--label", "y", "--data", str(data), "--template", "<SMILES> {smiles} <QED>",
          "--load", str(tmp_path / "S"), "--out", str(tmp_path / "Q"), "--num_tokens", "2",
          "--depth", "deep", "--reparam", "residual_mlp", "--readout_layer", "auto",
          "--pool", "auto", "--optimizer", "adafactor", "--schedule", "constant",
          "--lr", "0.1", "--steps", "6", "--eval_every", "1", "--patience", "2",
          "--validation", "0.3", "--test", "none", *common])
    cfg = json.loads((tmp_path / "Q" / "tag.json").read_text())["config"]
    assert cfg["depth"] == "deep" and cfg["reparam"] == "residual_mlp"
    head = {"readout_layer": -1, "pool": "tag", **cfg["head"]}  # defaults are left out
    assert head["readout_layer"] in (-1, 1) and head["pool"] in ("tag", "tag+mean")
    out = tmp_path / "pred.csv"
    main(["predict", "--tags", f"{tmp_path / 'S'},{tmp_path / 'Q'}", "--input", str(data),
          "--output", str(out), "--model", str(tiny_model_dir), "--progress", "false"])
    assert len(list(csv.DictReader(open(out)))) == len(SMILES)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--tag", "<R>", "--kind", "function", "--head", "regression",
              "--label", "y", "--data", str(data), "--template", "<SMILES> {smiles} <R>",
              "--out", str(tmp_path / "R"), "--readout_layer", "middle", *common])
    assert e.value.code == 2 and "--readout_layer: 'middle'" in capsys.readouterr().err


def test_docs_cli_md_is_the_commands_own_help():
    """docs/cli.md is generated from every command's --help, docs/tasks.md's sources from
    the sources' registry: any flag, help text or source changed without `make docs` fails
    here."""
    from pathlib import Path

    from tagllm.cli import COMMANDS, cli_reference, tasks_page
    from tagllm.sources import SOURCES

    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "cli.md").read_text()
    assert cli_reference() == page, "docs/cli.md is stale: run `make docs`"
    tasks = (docs / "tasks.md").read_text()
    assert tasks_page(tasks) == tasks, "docs/tasks.md's sources are stale: run `make docs`"
    flat = "".join(page.split())  # help wraps lines, even inside a spec (at a hyphen)
    for source in SOURCES:  # --data help of train and evaluate lists every source
        assert all(flat.count(spec) >= 2 for spec in source.specs), source.prefix
    assert all(f"## tagllm {name}\n" in page for name in COMMANDS)
    assert "--refit_rows {warm_start,seen}" in page and "usage: tagllm " in page


def test_readme_results_table_is_generated(tmp_path):
    """The README's results table is the newest sweep file's summary (stale: `make docs`),
    and the generator reads the file, not a copy: a changed number shows."""
    from pathlib import Path

    from tagllm.publish import SUMMARY_BEGIN, newest_sweep, readme_page, summary_table

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert SUMMARY_BEGIN in readme
    assert readme_page(readme, root) == readme, "README.md's results table is stale: make docs"
    doc = json.loads(newest_sweep(root).read_text())
    doc["summary"][0]["test"][doc["summary"][0]["trained_minus_untrained"]["metric"]] = 123.5
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    table = summary_table(tmp_path / "sweep.json")
    assert f"| {doc['summary'][0]['task']} | " in table and "| 123.5 |" in table
    assert "123.5" not in readme


def test_command_line_escapes_are_read_and_other_text_kept():
    from tagllm.cli import unescape

    assert unescape("\\n") == "\n" and unescape("a\\tb\\r") == "a\tb\r"
    assert unescape("\\\\n") == "\\n" and unescape("\\u00e9") == "é"
    for typed in ("#", "~", "é\u20ac", "\\x", "\\€", "C#N"):  # as typed
        assert unescape(typed) == typed


@pytest.mark.parametrize("provenance", [
    None, "demo tags", {}, {"data": "moses:train"}, {"data": [{"source": "my.csv"}]},
    {"data": [{"source": "my.csv", "rows": None}], "recipe": "r", "stage": "s",
     "validation": [], "seconds": None, "eval": [{"name": "t", "metrics": None}]},
])
def test_inspect_shows_any_provenance_a_tag_file_may_hold(tmp_path, provenance, capsys):
    """Provenance is free-form (a tag saved outside a recipe, an older tagllm): inspect
    shows what there is and never fails on what is missing or shaped otherwise."""
    from tagllm import TagConfig

    from tiny import tiny_tagged

    m = tiny_tagged()
    m.add_tag(TagConfig("<S>", num_tokens=2))
    m.save_tag("<S>", tmp_path / "S", provenance=provenance)
    main(["inspect", str(tmp_path / "S")])
    out = " ".join(capsys.readouterr().out.split())
    assert "<S> (domain), 2 vectors x 32" in out and "files verified" in out
