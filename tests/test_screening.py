"""Screening a file: `tagllm embed` (features at a tag, to Parquet), predictions to CSV or
Parquet, chunks kept as parts so a rerun resumes, and the chunks shared among processes
(torchrun, gloo on CPU) with the same output as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tagllm import TaggedModel
from tagllm.cli import main
from tagllm.errors import ConfigError, DataError
from tagllm.inference import embed_file, predict_file

from tiny import saved_tiny_tags

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "OCCO", "c1ccncc1", "CC(C)O", "CCOC",
          "C1CCCCC1", "CN(C)C", "CCCCO", "CCCN", "CC=O", "C#N", "CCCl", "CSC", "NCCN"]
TEMPLATE = "<S> {smiles} <Q>"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    d = tmp_path_factory.mktemp("screen")
    saved_tiny_tags(d)
    data = d / "mols.csv"
    data.write_text("smiles,id\n" + "".join(f"{s},m{i}\n" for i, s in enumerate(SMILES * 3)))
    m = TaggedModel.from_pretrained(str(d / "tiny"), tags=[d / "tags"])
    return d, m, data


def read_rows(path) -> list[dict]:
    if str(path).endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_embed_writes_the_features_the_head_reads(tagged, tmp_path):
    d, m, data = tagged
    out = tmp_path / "f.parquet"
    n = embed_file(m, str(data), out, TEMPLATE, chunk_rows=10, progress=False)
    assert n == len(SMILES) * 3
    table = pq.read_table(out)
    assert table.column_names == ["smiles", "id", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert table.column("id").to_pylist() == [f"m{i}" for i in range(n)]  # input order
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    texts = [TEMPLATE.format(smiles=s) for s in SMILES * 3]
    want = np.concatenate([m.tag_features(m.encode([t]), "<Q>").detach().numpy()
                           for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "f.parquet.parts").exists()


def test_embed_layers_and_pools(tagged, tmp_path):
    d, m, data = tagged
    texts = [TEMPLATE.format(smiles=s) for s in SMILES[:4]]
    both = m.features(texts, "<S>", layer=1, pool="tag+mean")
    assert both.shape == (4, 64)
    np.testing.assert_array_equal(both[:, :32], m.features(texts, "<S>", 1, "tag"))
    np.testing.assert_array_equal(both[:, 32:], m.features(texts, "<S>", 1, "mean"))
    assert not np.allclose(m.features(texts, "<S>", 0, "tag"), m.features(texts, "<S>", 2))
    with pytest.raises(ConfigError, match="decoder layers 1 to 2"):
        m.features(texts, "<S>", layer=3)
    with pytest.raises(ConfigError, match="pool 'max'"):
        m.features(texts, "<S>", pool="max")
    # the CLI: a domain tag named with --tag, mean pooling at layer 1
    out = tmp_path / "s.parquet"
    main(["embed", "--tags", str(d / "tags"), "--model", str(d / "tiny"), "--input", str(data),
          "--output", str(out), "--template", TEMPLATE, "--tag", "<S>", "--layer", "1",
          "--pool", "mean", "--progress", "false"])
    got = np.array(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got[:4], m.features(texts, "<S>", 1, "mean"), rtol=1e-4,
                               atol=1e-5)


def test_wrong_arguments_fail_before_the_model_loads(tagged, tmp_path, capsys):
    d, m, data = tagged
    args = ["--tags", str(d / "tags"), "--model", str(tmp_path / "no-such-model"),
            "--input", str(data), "--template", TEMPLATE, "--progress", "false"]
    for cmd, output, msg in [("embed", "f.csv", "write a .parquet file (vectors go to Parquet)"),
                             ("predict", "p.txt", "write a .csv or .parquet file"),
                             ("predict", "p.csv", "--chunk_rows must be at least 1")]:
        extra = ["--chunk_rows", "0"] if "chunk_rows" in msg else []
        with pytest.raises(SystemExit) as e:
            main([cmd, *args, "--output", str(tmp_path / output), *extra])
        assert e.value.code == 2
        assert msg in " ".join(capsys.readouterr().err.split())
    for extra, msg in [(["--input", str(tmp_path / "none.csv")], "none.csv: no such file"),
                       (["--template", "<S> {smile} <Q>"], "uses column 'smile' missing from")]:
        with pytest.raises(SystemExit) as e:  # the file and its columns, before the model
            main(["predict", *args, "--output", str(tmp_path / "p.csv"), *extra])
        assert e.value.code == 2
        assert msg in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ConfigError, match="names no function tag with a head"):
        predict_file(m, str(data), tmp_path / "p.csv", "<S> {smiles}", progress=False)


def test_parquet_in_and_out_give_the_csv_rows(tagged, tmp_path):
    d, m, data = tagged
    pq.write_table(pa.table({"smiles": SMILES, "n": list(range(len(SMILES)))}),
                   tmp_path / "in.parquet")
    predict_file(m, str(tmp_path / "in.parquet"), tmp_path / "a.parquet", TEMPLATE,
                 chunk_rows=5, progress=False)
    predict_file(m, str(data), tmp_path / "b.csv", TEMPLATE, progress=False)
    a, b = read_rows(tmp_path / "a.parquet"), read_rows(tmp_path / "b.csv")[:len(SMILES)]
    assert [r["smiles"] for r in a] == SMILES and [r["n"] for r in a] == \
        [str(i) for i in range(len(SMILES))]  # Parquet columns are read as text
    np.testing.assert_allclose([r["prediction"] for r in a],
                               [float(r["prediction"]) for r in b], rtol=1e-5)


def test_a_failed_run_resumes_where_it_stopped(tagged, tmp_path, monkeypatch):
    """Chunk 3 of 6 fails: the rerun computes only the chunks not done, and its output is
    the one an uninterrupted run writes; a changed input starts over."""
    d, m, data = tagged
    clean = tmp_path / "clean.csv"
    predict_file(m, str(data), clean, TEMPLATE, chunk_rows=9, progress=False)
    out, calls, real, failing = tmp_path / "p.csv", [], TaggedModel.predict, [True]

    def flaky(self, texts, *a, **k):
        calls.append(len(texts))
        if failing[0] and len(calls) == 3:
            raise RuntimeError("worker lost")
        return real(self, texts, *a, **k)

    monkeypatch.setattr(TaggedModel, "predict", flaky)
    with pytest.raises(RuntimeError, match="worker lost"):
        predict_file(m, str(data), out, TEMPLATE, chunk_rows=9, progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "p.csv.parts").glob("part-*.csv"))) == 2
    calls.clear()
    failing[0] = False
    logged = []
    assert predict_file(m, str(data), out, TEMPLATE, chunk_rows=9, progress=False,
                        log=logged.append) == 51
    assert calls == [9, 9, 9, 6]  # chunks 3 to 6 only
    assert "resuming: 2 chunk(s) of an earlier run are done" in logged[0]
    assert out.read_bytes() == clean.read_bytes()
    assert not (tmp_path / "p.csv.parts").exists()
    # parts of another job (here: the input changed) are never mixed in
    monkeypatch.setattr(TaggedModel, "predict", real)
    parts = tmp_path / "q.csv.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not a tagllm parts folder"):
        predict_file(m, str(data), tmp_path / "q.csv", TEMPLATE, progress=False)
    assert (parts / "notes.txt").read_text() == "mine"  # a folder it did not make: untouched


def test_a_changed_setting_starts_over(tagged, tmp_path, monkeypatch):
    """Parts of a 20-row-chunk job are not resumed by a 9-row-chunk one: it starts over."""
    d, m, data = tagged
    first = tmp_path / "first.csv"
    predict_file(m, str(data), first, TEMPLATE, chunk_rows=9, progress=False)
    out, calls, real = tmp_path / "p.csv", [], TaggedModel.predict

    def once(self, texts, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, *a, **k)

    monkeypatch.setattr(TaggedModel, "predict", once)
    with pytest.raises(KeyboardInterrupt):
        predict_file(m, str(data), out, TEMPLATE, chunk_rows=20, progress=False)
    assert len(list((tmp_path / "p.csv.parts").glob("part-*.csv"))) == 1
    monkeypatch.setattr(TaggedModel, "predict", real)
    logged: list[str] = []
    predict_file(m, str(data), out, TEMPLATE, chunk_rows=9, progress=False, log=logged.append)
    assert any("starting over" in s for s in logged), logged
    assert out.read_bytes() == first.read_bytes()


#: the tagllm command, but a process of rank KILL_RANK SIGKILLs itself right after it
#: writes its first part: a worker lost with no clean-up at all
KILL_AFTER_FIRST_PART = textwrap.dedent("""
    import os, signal, sys
    import tagllm.shards as shards
    from tagllm.cli import main

    real = shards.Parts.write

    def write_then_die(self, index, rows):
        real(self, index, rows)
        if self.world.rank == int(os.environ["KILL_RANK"]):
            os.kill(os.getpid(), signal.SIGKILL)

    shards.Parts.write = write_then_die
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_two_processes_write_what_one_writes_and_resume_a_killed_worker(tagged, tmp_path):
    """torchrun with 2 processes: predict (CSV) and embed (Parquet) give one process's rows
    in input order; a worker SIGKILLed mid-run loses nothing: the rerun keeps the parts
    written and gives the same rows, none lost or twice."""
    d, m, data = tagged
    one_p, one_e = tmp_path / "one.csv", tmp_path / "one.parquet"
    predict_file(m, str(data), one_p, TEMPLATE, chunk_rows=4, progress=False)
    embed_file(m, str(data), one_e, TEMPLATE, chunk_rows=4, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2"]

    def args(cmd: str, out) -> list[str]:
        return [cmd, "--tags", str(d / "tags"), "--model", str(d / "tiny"), "--input",
                str(data), "--output", str(out), "--template", TEMPLATE, "--chunk_rows", "4",
                "--progress", "false"]

    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_FIRST_PART)
    killed = subprocess.run([*launch, str(script), *args("predict", tmp_path / "two.csv")],
                            env={**env, "KILL_RANK": "1"}, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode != 0
    assert not (tmp_path / "two.csv").exists()
    assert (tmp_path / "two.csv.parts" / "part-00000001.csv").exists()  # rank 1's first
    for cmd, one, two in [("predict", one_p, tmp_path / "two.csv"),
                          ("embed", one_e, tmp_path / "two.parquet")]:
        r = subprocess.run([*launch, "--module", "tagllm.cli", *args(cmd, two)], env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"to {two} (2 processes)" in " ".join(r.stdout.split()), r.stdout
        if cmd == "predict":
            assert "resuming:" in r.stderr, r.stderr[-2000:]
        a, b = read_rows(one), read_rows(two)
        assert [(r["smiles"], r["id"]) for r in a] == [(r["smiles"], r["id"]) for r in b]
        key = "prediction" if cmd == "predict" else "embedding"
        np.testing.assert_allclose(np.array([r[key] for r in a], dtype=np.float64),
                                   np.array([r[key] for r in b], dtype=np.float64),
                                   rtol=1e-4, atol=1e-5)
        assert not two.with_name(two.name + ".parts").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs, started for these tests and stopped after."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class DiesOnce:
    """Mixed into TaggedPredictor: the first actor to take a chunk SIGKILLs itself (a lost
    worker, no clean-up), once per marker file."""

    marker = ""

    def chunk(self, index, table):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), 9)
        return super().chunk(index, table)


@pytest.mark.slow
def test_ray_workers_write_what_one_process_writes_and_retry_a_lost_worker(
        tagged, tmp_path, ray_cluster):
    """--engine ray on 2 workers: one process's output in input order; an actor killed
    mid-run is restarted and its chunk retried: no row lost or twice."""
    from ray import cloudpickle

    from tagllm.inference import Screen
    from tagllm.scale import TaggedPredictor, ray_screen

    d, m, data = tagged
    one = tmp_path / "one.csv"
    predict_file(m, str(data), one, TEMPLATE, chunk_rows=4, progress=False)
    tags = [d / "tags" / "S", d / "tags" / "Q"]
    screen = Screen("predict", TEMPLATE)
    logged: list[str] = []
    n = ray_screen(tags, str(d / "tiny"), screen, str(data), tmp_path / "two.csv", workers=2,
                   chunk_rows=4, progress=False, log=logged.append)
    assert n == len(SMILES) * 3 and "Ray: 2 worker(s), 1 CPU and 0 GPU each" in logged
    with pytest.raises(ConfigError, match="3 workers of 1 CPU each need 3 CPUs; the Ray "
                                          "cluster has 2"):
        ray_screen(tags, str(d / "tiny"), screen, str(data), tmp_path / "x.csv", workers=3,
                   cpus_per_worker=1)
    with pytest.raises(ConfigError, match="names no function tag with a head"):  # from an
        ray_screen(tags, str(d / "tiny"), Screen("predict", "<S> {smiles}"), str(data),
                   tmp_path / "y.csv", workers=1)  # actor, as itself
    assert (tmp_path / "two.csv").read_bytes() == one.read_bytes()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "died"
    killer = type("Killer", (DiesOnce, TaggedPredictor), {"marker": str(marker)})
    n = ray_screen(tags, str(d / "tiny"), screen, str(data), tmp_path / "three.csv",
                   workers=2, chunk_rows=4, progress=False, predictor=killer)
    assert marker.exists()  # an actor did die
    assert (tmp_path / "three.csv").read_bytes() == one.read_bytes()


@pytest.mark.slow
def test_tagged_predictor_in_a_ray_data_pipeline(tagged, tmp_path, ray_cluster):
    """read_csv -> map_batches(TaggedPredictor) -> write_parquet: the predictions of
    `tagllm predict`."""
    from tagllm.scale import TaggedPredictor

    d, m, data = tagged
    one = read_rows(_predict(m, data, tmp_path / "one.csv"))
    ds = ray_cluster.data.read_csv(str(data)).map_batches(
        TaggedPredictor, fn_constructor_kwargs={"tags": str(d / "tags"), "template": TEMPLATE,
                                                "model": str(d / "tiny"), "device": "cpu"},
        batch_size=7, batch_format="pyarrow", concurrency=2,
        num_cpus=0.5)  # half a CPU each, so that the read tasks find one
    ds.write_parquet(str(tmp_path / "scored"))
    got = pq.read_table(tmp_path / "scored").to_pylist()
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in one)
    want = {r["id"]: float(r["prediction"]) for r in one}
    for r in got:
        assert abs(r["prediction"] - want[r["id"]]) <= 1e-4 * max(1, abs(want[r["id"]]))


def _predict(m, data, out):
    predict_file(m, str(data), out, TEMPLATE, progress=False)
    return out


def test_int8_predicts_what_float32_predicts(tagged, tmp_path):
    """--dtype int8: the decoder's 14 linear layers quantised; predictions follow float32's
    closely; the fingerprint stays the float32 weights'."""
    d, _, data = tagged
    args = ["predict", "--tags", str(d / "tags"), "--model", str(d / "tiny"), "--input",
            str(data), "--template", TEMPLATE, "--progress", "false"]
    main([*args, "--output", str(tmp_path / "f.csv")])
    main([*args, "--output", str(tmp_path / "q.csv"), "--dtype", "int8"])
    f = np.array([float(r["prediction"]) for r in read_rows(tmp_path / "f.csv")])
    q = np.array([float(r["prediction"]) for r in read_rows(tmp_path / "q.csv")])
    assert not np.array_equal(f, q)  # quantised for real
    assert np.corrcoef(f, q)[0, 1] > 0.99 and np.abs(f - q).max() < 0.1 * np.abs(f).max()
    from tagllm.inference import load_tagged

    m = load_tagged([d / "tags" / "S", d / "tags" / "Q"], str(d / "tiny"), "float32")
    fingerprint = m.fingerprint
    assert m.quantize_int8() == 14 and m.weights_dtype == "int8"
    assert m.fingerprint == fingerprint  # the float32 weights' (tag files are checked on it)
    with pytest.raises(ConfigError, match="int8 needs the float32 model"):
        load_tagged([d / "tags" / "S"], str(d / "tiny"), "bfloat16").quantize_int8()


def test_hostile_outputs_inputs_and_parts_folders(tagged, tmp_path):
    """An output that is a folder, a Parquet input with a column name twice or a column of
    bytes, a parts folder that is a symbolic link: each a clear error, nothing deleted."""
    from tagllm.data import read_table
    from tagllm.shards import input_identity

    d, m, data = tagged
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        predict_file(m, str(data), tmp_path / "out.csv", TEMPLATE, progress=False)
    twice = pa.Table.from_arrays([pa.array(["CCO"]), pa.array(["CCN"])], ["smiles", "smiles"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(DataError, match=r"\['smiles'\] appear more than once"):
        read_table(tmp_path / "twice.parquet")
    pq.write_table(pa.table({"smiles": ["CCO"], "blob": [b"\x00"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"\['blob'\] hold lists, structs or bytes"):
        read_table(tmp_path / "b.parquet")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tmp_path / "p.csv.parts").symlink_to(elsewhere)
    with pytest.raises(DataError, match="is a symbolic link"):
        predict_file(m, str(data), tmp_path / "p.csv", TEMPLATE, progress=False)
    assert (elsewhere / "keep.txt").read_text() == "mine"
    # a built-in source that reads a user's file is identified by that file too
    ident = input_identity(f"split:train:{data}")
    assert ident["files"][0]["path"] == str(data.resolve())


def test_export_writes_the_input_embeddings_generate_feeds_the_model(tagged, tmp_path):
    """vLLM prompt embeddings: per prompt, the (T, H) embeddings TaggedModel.embed gives
    its ids (BOS included), the tags' vectors at their places; a deep tag refused."""
    from safetensors import safe_open

    from tagllm import TagConfig
    from tagllm.export import prompt_embeds

    d, m, data = tagged
    out = tmp_path / "p.safetensors"
    main(["export", "--tags", str(d / "tags"), "--model", str(d / "tiny"), "--input",
          str(data), "--template", TEMPLATE, "--output", str(out)])
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["format"] == "tagllm.vllm-prompt-embeds/1"
        assert len(f.keys()) == len(SMILES) * 3
        got = f.get_tensor("prompt_1")
    text = TEMPLATE.format(smiles=SMILES[1])
    ids = m.tagtok.encode(text).ids
    assert ids[0] == m.tokenizer.bos_token_id and got.shape == (len(ids), 32)
    want = m.embed(m.encode([text]).input_ids)[0]
    assert torch.equal(got, want)
    s_rows = [i for i, t in enumerate(ids) if t >= m.bank.vocab_rows][:3]  # <S>'s 3 vectors
    assert torch.equal(got[s_rows], m.bank.snapshot("<S>"))
    deep = TaggedModel.from_pretrained(str(d / "tiny"))
    deep.add_tag(TagConfig("<D>", num_tokens=2, depth="deep"))
    with pytest.raises(ConfigError, match=r"prompt 0 uses the deep tag\(s\) \['<D>'\]"):
        prompt_embeds(deep, ["<D> CCO"])
    with pytest.raises(SystemExit):
        main(["export", "--tags", str(d / "tags"), "--output", str(tmp_path / "x.pt"),
              "--prompt", "<S> CCO"])
