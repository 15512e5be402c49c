"""Hostile inputs: very long, deeply nested and ring-heavy SMILES and a 100,000-residue
protein, through every door rows come in (`tagllm predict`, a recipe's data and eval files,
`tagllm serve`). Each must fail with a clear error naming the file and row (422 naming the
row for serve) within two seconds: rows are checked in cost order (field size, token length,
then chemistry), so RDKit never sees an input whose length is not bounded. Before that order,
RDKit's canonical SMILES writer recursed once per atom and killed the process near 20,000
atoms, and its parser took seconds on ring-heavy strings.

Every case runs in a child process: a crash fails the test instead of killing pytest."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny import saved_tiny_tags, start_server

#: name -> SMILES; each is far beyond max_length 64 tokens of the tiny models
SMILES = {
    "20,000 carbons": "C" * 20_000,
    "200,000 carbons": "C" * 200_000,
    "20,000 nested branches": "C(" * 20_000 + "C" + ")" * 20_000,
    "4,000 three-rings": "C1CC1" * 4_000,
    "2,500 benzene rings": "c1ccccc1" * 2_500,
}
PROTEIN = "M" + "ACDEFGHIKLMNPQRSTVWY" * 5_000  # 100,001 residues
MAX_LENGTH = 64
LIMIT_S = 2.0


def _child(code: str, timeout: float = 300, stdin: str | None = None) -> list[dict]:
    """Run ``code`` in a fresh Python (``stdin`` on its standard input); it prints one JSON
    list as its last line."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, input=stdin,
                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert r.returncode == 0, \
        f"child exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _csv(path: Path, column: str, value: str) -> Path:
    """A CSV with a valid first row and the hostile value in row 2."""
    ok = "CCO" if column == "smiles" else "MKTAYIAK"
    path.write_text(f"{column},y\n{ok},0.5\n{value},0.5\n")
    return path


def _v3000_chain(atoms: int) -> str:
    """An SD record of a carbon chain of ``atoms`` atoms in the V3000 format (no atom limit
    of V2000's three-digit counts)."""
    lines = ["chain", "  tagllm", "", "  0  0  0     0  0            999 V3000",
             "M  V30 BEGIN CTAB", f"M  V30 COUNTS {atoms} {atoms - 1} 0 0 0",
             "M  V30 BEGIN ATOM"]
    lines += [f"M  V30 {i} C 0 0 0 0" for i in range(1, atoms + 1)]
    lines += ["M  V30 END ATOM", "M  V30 BEGIN BOND"]
    lines += [f"M  V30 {i} 1 {i} {i + 1}" for i in range(1, atoms)]
    lines += ["M  V30 END BOND", "M  V30 END CTAB", "M  END", "$$$$"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A tiny model with tags <S> and <Q> (regression) and one file per hostile case."""
    d = tmp_path_factory.mktemp("hostile")
    saved_tiny_tags(d)
    files = {name: _csv(d / f"smiles-{i}.csv", "smiles", s)
             for i, (name, s) in enumerate(SMILES.items())}
    files["100,001-residue protein"] = _csv(d / "protein.csv", "sequence", PROTEIN)
    (d / "protein.fasta").write_text(f">ok\nMKTAYIAK\n>long\n{PROTEIN}\n")
    files["100,001-residue FASTA record"] = d / "protein.fasta"
    (d / "chain.sdf").write_text(_v3000_chain(25_000))
    files["25,000-atom SD record"] = d / "chain.sdf"
    return d, files


def _where(name: str, path: Path) -> str:
    """What the error must name: the file and the row (the record for FASTA and SD)."""
    if path.suffix == ".fasta":
        return f"{path} row 3"  # the record's header line
    if path.suffix == ".sdf":
        return f"{path} record 1"
    return f"{path} row 2"


def test_predict_refuses_each_hostile_row_in_seconds_naming_file_and_row(hostile):
    d, files = hostile
    cases = {name: (str(path), "<S> {sequence} <Q>" if "protein" in name or "FASTA" in name
                    else "<S> {smiles} <Q>") for name, path in files.items()}
    results = _child(f"""
        import json, time
        from tagllm.errors import TagllmError
        from tagllm.inference import predict_file
        from tagllm.model import TaggedModel
        m = TaggedModel.from_pretrained({str(d / 'tiny')!r}, tags=[{str(d / 'tags')!r}])
        out = []
        for name, (path, template) in {cases!r}.items():
            t = time.perf_counter()
            try:
                predict_file(m, path, path + ".out.csv", template, max_length={MAX_LENGTH},
                             progress=False)
                error = None
            except TagllmError as e:
                error = str(e)
            out.append({{"name": name, "error": error, "s": time.perf_counter() - t}})
        print(json.dumps(out))
    """)
    for r in results:
        path = files[r["name"]]
        assert r["error"] and _where(r["name"], path) in r["error"], r
        assert r["s"] < LIMIT_S, r
        assert not Path(str(path) + ".out.csv").exists()
        assert not list(path.parent.glob(f".{path.name}.out.csv.tmp*")), r  # nothing left


def test_recipe_data_and_eval_files_refuse_hostile_rows_in_seconds(hostile, tmp_path):
    d, files = hostile
    recipes = {}
    for name, path in files.items():
        if path.suffix != ".csv":
            continue
        column = "sequence" if "protein" in name else "smiles"
        for where in ("data", "eval"):
            good = _csv(tmp_path / f"good-{column}.csv", column, "CCO" if column == "smiles"
                        else "MKTAYIAK")
            entry = {"template": f"<S> {{{column}}} <Q>", "label": "y"}
            stage = {"name": "q", "tags": ["<Q>"], "train": {"steps": 1, "max_length": MAX_LENGTH},
                     "data": [{**entry, "source": str(path if where == "data" else good)}],
                     "eval": [{**entry, "source": str(path if where == "eval" else good),
                               "baselines": ["mean"]}]}
            recipe = {"name": "hostile", "model": str(d / "tiny"), "out": str(tmp_path / "out"),
                      "pretrained": {"<S>": str(d / "tags" / "S")},
                      "tags": [{"name": "<Q>", "kind": "function", "num_tokens": 2,
                                "head": {"kind": "regression"}}],
                      "stages": [stage]}
            r = tmp_path / f"{len(recipes)}.yaml"
            r.write_text(yaml.safe_dump(recipe))
            recipes[f"{name} in {where}"] = (str(r), str(path))
    results = _child(f"""
        import json, time
        from tagllm.errors import TagllmError
        from tagllm.protocol import load_recipe, run
        from tagllm.store import TagStore
        out = []
        for name, (recipe, path) in {recipes!r}.items():
            t = time.perf_counter()
            try:
                run(load_recipe(recipe), TagStore({str(tmp_path / 'store')!r}), log=lambda s: None,
                    progress=False)
                error = None
            except TagllmError as e:
                error = str(e)
            out.append({{"name": name, "path": path, "error": error,
                         "s": time.perf_counter() - t}})
        print(json.dumps(out))
    """)
    assert len(results) == 2 * 6
    for r in results:
        assert r["error"] and f"{r['path']} row 2: " in r["error"] and "tokens > max_length" \
            in r["error"], r
        assert r["s"] < LIMIT_S, r


# ----------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def server(hostile):
    """`tagllm serve` with its default limits (1 MB bodies), max_length 64."""
    d, _ = hostile
    url, proc, log = start_server(d, ["--template", "<S> {smiles} <Q>", "--max_length",
                                      str(MAX_LENGTH)])
    yield url, proc, d / "server.log"
    if proc.poll() is None:
        proc.kill()
    log.close()


def test_serve_answers_422_naming_the_row_for_each_hostile_input(server):
    url, proc, log = server
    bodies = {name: {"rows": [{"smiles": "CCO"}, {"smiles": s}]} for name, s in SMILES.items()}
    bodies["100,001-residue protein"] = {"rows": [{"sequence": "MKTAYIAK"},
                                                  {"sequence": PROTEIN}],
                                         "template": "<S> {sequence} <Q>"}
    bodies["200,000 carbons as a text"] = {"inputs": ["<S> CCO <Q>", f"<S> {'C' * 200_000} <Q>"]}
    for name, body in bodies.items():
        t = time.perf_counter()
        r = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
        took = time.perf_counter() - t
        want = "input 1" if "inputs" in body else "request row 2"
        assert r.status_code == 422 and want in r.text and "tokens > max_length" in r.text, \
            (name, r.status_code, r.text[:300])
        assert took < LIMIT_S, (name, took)
    assert proc.poll() is None, log.read_text()


def test_serve_stays_up_for_everyone_while_hostile_requests_are_in_flight(server):
    """Hostile requests in a loop from four clients; meanwhile valid clients get 200 and
    /health answers within a second; the process lives."""
    url, proc, log = server
    stop = threading.Event()
    hostile_codes: list[int] = []

    def attack():
        bodies = [{"rows": [{"smiles": s}]} for s in SMILES.values()]
        i = 0
        while not stop.is_set():
            r = httpx.post(f"{url}/v1/predict", json=bodies[i % len(bodies)], timeout=60)
            hostile_codes.append(r.status_code)
            i += 1

    with ThreadPoolExecutor(4) as pool:
        attackers = [pool.submit(attack) for _ in range(4)]
        try:
            time.sleep(0.5)
            health, valid = [], []
            for _ in range(10):
                t = time.perf_counter()
                assert httpx.get(f"{url}/health", timeout=10).status_code == 200
                health.append(time.perf_counter() - t)
                valid.append(httpx.post(f"{url}/v1/predict", json={"rows": [{"smiles": "CCO"}]},
                                        timeout=60).status_code)
        finally:
            stop.set()
        for a in attackers:
            a.result(timeout=120)
    assert valid == [200] * 10, valid
    assert max(health) < 1.0, health
    assert hostile_codes and set(hostile_codes) == {422}, set(hostile_codes)
    assert proc.poll() is None, log.read_text()


def test_sigterm_stops_the_service_within_seconds_with_requests_in_flight(server):
    """Runs last in this module: it stops the module's server."""
    url, proc, log = server

    def post(body):
        try:
            return httpx.post(f"{url}/v1/predict", json=body, timeout=60).status_code
        except httpx.TransportError:
            return "closed"

    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(post, {"rows": [{"smiles": s}]}) for s in SMILES.values()]
        pending += [pool.submit(post, {"rows": [{"smiles": "CCO"}]}) for _ in range(3)]
        time.sleep(0.05)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.perf_counter() - t
        answers = [p.result(timeout=60) for p in pending]
    assert took < 5.0, (took, log.read_text()[-2000:])
    assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM), code
    assert set(answers) <= {200, 422, 503, "closed"}, answers


# ----------------------------------------------------------------- the validators, fuzzed
_UNITS = st.sampled_from(["C", "c1ccccc1", "C1CC1", "C(", "N", "O", "Cl", "[nH]", "=", "#",
                          "1", "%12", "(", ")", "c", "C2", "[C@@H]", "Br"])


@st.composite
def smiles_like(draw) -> str:
    """Long, nested, ring-heavy SMILES-like strings (most are not valid SMILES)."""
    unit = "".join(draw(st.lists(_UNITS, min_size=1, max_size=4)))
    body = unit * draw(st.integers(1, 40_000))
    nest = draw(st.integers(0, 30_000))
    return ("C(" * nest + body + ")" * nest)[:draw(st.integers(1, 400_000))]


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(smiles_like(), min_size=4, max_size=4))
def test_smiles_validators_never_crash_or_hang(batch):
    """check_smiles and canonical_smiles on generated strings, in a child process: each
    either returns or raises ValueError, within two seconds."""
    results = _child("""
        import json, sys, time
        from tagllm.data.smiles import canonical_smiles, check_smiles
        out = []
        for s in json.loads(sys.stdin.read()):
            for f in (check_smiles, canonical_smiles):
                t = time.perf_counter()
                try:
                    f(s)
                except ValueError:
                    pass
                out.append(time.perf_counter() - t)
        print(json.dumps([{"s": max(out)}]))
    """, timeout=120, stdin=json.dumps(batch))
    assert results[0]["s"] < LIMIT_S, results


# ----------------------------------------------------------------- fields and files
def test_a_field_over_the_read_limit_fails_naming_the_row(tmp_path):
    from tagllm.data import MAX_FIELD_CHARS
    from tagllm.errors import DataError
    from tagllm.sources import load_source

    big = "C" * (MAX_FIELD_CHARS + 1)
    cases = {"big.csv": f"smiles,y\nCCO,1\n{big},2\n", "big.smi": f"CCO a\n{big} b\n",
             "big.fasta": f">a\nMKT\n>b\n{big[:600_000]}\n{big[:600_000]}\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        t = time.perf_counter()
        with pytest.raises(DataError, match=r"(row|line) [23]\b.*longest tagllm reads is "
                                            r"1,000,000"):
            load_source(str(tmp_path / name))
        assert time.perf_counter() - t < LIMIT_S


def test_a_smiles_over_the_parse_limit_never_reaches_rdkit(tmp_path):
    from tagllm.data.smiles import SMILES_MAX_CHARS, canonical_smiles, check_smiles

    s = "C" * (SMILES_MAX_CHARS + 1)
    for f in (check_smiles, canonical_smiles):
        with pytest.raises(ValueError, match="the longest tagllm parses is 5,000"):
            f(s)
    assert check_smiles(" " + "C" * SMILES_MAX_CHARS + " ") == "C" * SMILES_MAX_CHARS


@pytest.mark.slow
def test_sigterm_leaves_no_temporary_file_and_stale_ones_are_removed(hostile, tmp_path):
    """`tagllm predict` stopped by SIGTERM mid-file leaves no temporary file (its finished
    chunks stay whole, as parts for the rerun); one that a killed process left (old or new
    name) goes with the next write, or `tagllm gc`."""
    from tagllm.fileio import hold, remove_stale, temp_name

    d, _ = hostile
    data = tmp_path / "many.csv"
    data.write_text("smiles\n" + "CCO\nc1ccccc1\nCC(=O)O\n" * 20_000)
    out = tmp_path / "pred.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagllm.cli", "predict", "--tags", str(d / "tags"), "--model",
         str(d / "tiny"), "--input", str(data), "--output", str(out), "--template",
         "<S> {smiles} <Q>", "--batch_size", "8", "--progress", "false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    parts = tmp_path / "pred.csv.parts"
    while not list(parts.glob("part-*.csv")):  # mid-file: a chunk done, more to come
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM, proc.stdout.read()
    assert not out.exists() and not list(tmp_path.glob(".pred.csv*"))
    left = sorted(p.name for p in parts.iterdir())
    assert left[0] == "job.json" and all(re.fullmatch(r"part-\d{8}\.csv", n)
                                         for n in left[1:]), left  # whole parts only
    shutil.rmtree(parts)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [tmp_path / temp_name("pred.csv").replace(str(os.getpid()), dead),
             tmp_path / (temp_name("pred.csv").replace(str(os.getpid()), dead) + "-x1")]
    stale[0].write_text("half")
    stale[1].mkdir()  # a folder's temporary copy
    small = tmp_path / "small.csv"
    small.write_text("smiles\nCCO\n")
    r = subprocess.run(
        [sys.executable, "-m", "tagllm.cli", "predict", "--tags", str(d / "tags"), "--model",
         str(d / "tiny"), "--input", str(small), "--output", str(out), "--template",
         "<S> {smiles} <Q>", "--progress", "false"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and not any(p.exists() for p in stale)
    sub = tmp_path / "store" / "x"  # `tagllm gc` (through remove_stale) looks below too
    sub.mkdir(parents=True)
    for p in stale:
        (sub / p.name).write_text("half")
    mine = sub / temp_name("other.csv")  # this process is alive: its file is kept
    mine.write_text("in progress")
    # a live writer whose process id looks gone (another container on this host): its lock
    # keeps its file
    held = sub / temp_name("held.csv").replace(str(os.getpid()), dead)
    held.write_text("in progress")
    fd = hold(held)
    try:
        assert sorted(x.name for x in remove_stale(tmp_path / "store", recursive=True)) == \
            sorted(p.name for p in stale)
    finally:
        os.close(fd)
    assert mine.exists() and held.exists() and not any((sub / p.name).exists()
                                                       for p in stale)
    # a replaced folder's old version whose target is missing (killed between the two
    # renames) is put back, not removed
    old = sub / temp_name("tags", "old").replace(str(os.getpid()), dead)
    old.mkdir()
    (old / "tag.json").write_text("{}")
    remove_stale(sub)
    assert (sub / "tags" / "tag.json").exists() and not old.exists()


def test_templates_take_plain_column_names_only(hostile):
    """A format spec would let a 200-byte request build gigabytes; attribute access reads
    Python internals: both fail before anything is rendered."""
    from tagllm.data import Table
    from tagllm.errors import DataError
    from tagllm.model import TaggedModel
    from tagllm.serve import ServeConfig, predict_inputs

    t = Table({"smiles": ["CCO"], "w": ["1000000000"]})
    for bad in ("<S> {smiles:>1000000000} <Q>", "<S> {smiles:>{w}} <Q>", "<S> {smiles!r} <Q>",
                "<S> {smiles.__class__} <Q>", "<S> {smiles[0]} <Q>", "<S> {} <Q>"):
        with pytest.raises(DataError, match="is not a plain {column}"):
            t.render(bad)
    assert t.render("<S> {smiles} {{literal}} <Q>") == ["<S> CCO {literal} <Q>"]
    d, _ = hostile
    m = TaggedModel.from_pretrained(str(d / "tiny"), tags=[str(d / "tags")])
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="is not a plain {column}"):
        predict_inputs(m, ServeConfig(max_length=MAX_LENGTH), None, [{"smiles": "CCO"}] * 256,
                       "<S> {smiles:>1000000000} <Q>", None)
    assert time.perf_counter() - t0 < LIMIT_S


def test_molecules_outside_the_template_are_bounded_too(hostile, tmp_path):
    """A SMILES column the template does not use is still checked by name: its length is
    bounded (in tokens) before RDKit sees it."""
    from tagllm.errors import InputTooLongError
    from tagllm.model import TaggedModel
    from tagllm.sources import load_source

    d, _ = hostile
    m = TaggedModel.from_pretrained(str(d / "tiny"), tags=[str(d / "tags")])
    path = tmp_path / "extra.csv"
    path.write_text(f"smiles,x\nCCO,C\n{'C1CC1' * 1000},C\n")
    limit = m.tagtok.length_limit("<S> {x} <Q>", MAX_LENGTH)
    t0 = time.perf_counter()
    with pytest.raises(InputTooLongError, match=r"extra.csv row 2: column 'smiles': 5,00\d "
                                                r"tokens > max_length 64"):
        load_source(str(path), limit=limit)
    assert time.perf_counter() - t0 < LIMIT_S


def test_sd_records_without_a_readable_atom_count_never_reach_rdkit(tmp_path):
    """An atom count RDKit reads but a strict parser would not (lower case, continued
    lines) must not bypass the bound; an unreadable one is refused."""
    from tagllm.data.measured import read_sdf
    from tagllm.errors import DataError

    record = _v3000_chain(25_000)
    cases = {"lower": record.replace("M  V30 COUNTS", "M  V30 counts"),
             "continued": record.replace("M  V30 COUNTS 25000", "M  V30 COUNTS -\nM  V30 25000"),
             "unreadable": record.replace("M  V30 COUNTS 25000", "M  V30 COUNTS x"),
             "title": record.replace("chain", "M  V30 COUNTS 1 0 0 0 0", 1),
             "split": record.replace("M  V30 COUNTS 25000", "M  V30 COUNTS 2-\nM  V30 5000")}
    from tagllm.data.measured import _atom_count
    assert _atom_count(cases["title"].split("M  END")[0]) == 25_000  # not the title's 1
    assert _atom_count(cases["split"].split("M  END")[0]) == 25_000  # RDKit's join, not 2
    for name, text in cases.items():
        path = tmp_path / f"{name}.sdf"
        path.write_text(text)
        results = _child(f"""
            import json, time
            from tagllm.data.measured import read_sdf
            from tagllm.errors import DataError
            t = time.perf_counter()
            try:
                read_sdf({str(path)!r})
                error = None
            except DataError as e:
                error = str(e)
            print(json.dumps([{{"error": error, "s": time.perf_counter() - t}}]))
        """)
        r = results[0]
        assert r["error"] and "record 1" in r["error"] and any(
            why in r["error"] for why in ("25,000 atoms", "no readable atom count",
                                          "a structure of 1,2")), (name, r)
        assert r["s"] < LIMIT_S, (name, r)
    ok = tmp_path / "ok.sdf"
    ok.write_text(_v3000_chain(12))
    assert read_sdf(ok)[0]["smiles"] == ["C" * 12]
    with pytest.raises(DataError, match="no readable atom count"):
        read_sdf(tmp_path / "unreadable.sdf")


def test_predict_skip_invalid_goes_on_past_a_chunk_of_only_long_rows(hostile, tmp_path):
    """Rows stream in chunks of 32 x batch_size: a last chunk whose every row is too long
    is skipped like any other long row, not an error for the whole file."""
    from tagllm.inference import predict_file
    from tagllm.model import TaggedModel

    d, _ = hostile
    m = TaggedModel.from_pretrained(str(d / "tiny"), tags=[str(d / "tags")])
    path = tmp_path / "chunks.csv"
    path.write_text("smiles\n" + "CCO\n" * 32 + "C" * 5_000 + "\n")
    skipped: list[str] = []
    n = predict_file(m, str(path), tmp_path / "out.csv", "<S> {smiles} <Q>", batch_size=1,
                     max_length=MAX_LENGTH, skip_invalid=True, progress=False,
                     on_skipped=skipped.extend)
    assert n == 32 and len(skipped) == 1 and "row 33" in skipped[0]


def test_a_write_the_file_system_refuses_is_a_clear_error_and_leaves_nothing(hostile,
                                                                          tmp_path):
    """A file-size limit (what a full disk looks like to the writer): one line naming the
    output, exit 2, no traceback, no partial or temporary file, and the earlier output
    left as it was."""
    import resource

    d, _ = hostile
    data = tmp_path / "many.csv"
    data.write_text("smiles\n" + "CCO\nc1ccccc1\n" * 2_000)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "pred.csv"
    out.write_text("earlier predictions\n")
    cmd = [sys.executable, "-m", "tagllm.cli", "predict", "--tags", str(d / "tags"),
           "--model", str(d / "tiny"), "--input", str(data), "--output", str(out),
           "--template", "<S> {smiles} <Q>", "--progress", "false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=lambda:
                       resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "File too large" in r.stderr, r.stderr
    assert f"cannot write {out}" in r.stderr.replace("\n", ""), r.stderr
    assert out.read_text() == "earlier predictions\n"
    # the finished chunks are kept, whole, for the rerun; nothing temporary is left
    assert sorted(p.name for p in folder.iterdir()) == ["pred.csv", "pred.csv.parts"]
    kept = sorted(p.name for p in (folder / "pred.csv.parts").iterdir())
    assert kept == ["job.json", "part-00000000.csv", "part-00000001.csv", "part-00000002.csv",
                    "part-00000003.csv"], kept
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming: 4 chunk(s) of an earlier run are done" in again.stderr, again.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["pred.csv"]
    assert out.read_text().count("\n") == 4_001
