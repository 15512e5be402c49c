"""Property-based tests: no input file makes tagllm print a traceback.

Hypothesis writes arbitrary and near-valid inputs to the readers of every user file: the
CSV/TSV/.smi/FASTA/SD readers behind ``--data``, the recipe loader, the template renderer
and the tag-folder loader. Each call either succeeds or raises a :class:`TagllmError` (the
CLI prints those in one line) whose message names the file, and the row where a row is at
fault. A few hundred cases per reader; ``HYPOTHESIS_PROFILE=long`` runs more.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagllm import HeadConfig, TagConfig
from tagllm.data import Table
from tagllm.errors import TagllmError
from tagllm.fileio import sha256_file
from tagllm.protocol import load_recipe
from tagllm.serialization import META, TENSORS
from tagllm.sources import load_source

from tiny import tiny_tagged

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# characters that matter to the readers: separators, quotes, line ends, NUL, non-ASCII
FIELD = st.lists(st.sampled_from(list("CNOc1()=#[]+-@.,;\t\"' \r\n\x00é{}>") +
                                 ["CCO", "nan", "inf", "1e400", "-3.5", "ÿ"]),
                 max_size=12).map("".join)
SMILES = st.sampled_from(["CCO", "c1ccccc1", "C1CC", "CC(=O)O", "N#N", "", "X", "[Na+].[Cl-]"])


def _fails_cleanly(call, path: Path) -> None:
    """``call()`` succeeds, or fails with a TagllmError naming ``path``."""
    try:
        call()
    except TagllmError as e:
        assert str(path) in str(e) or path.name in str(e), e


def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-"))


@given(data=st.binary(max_size=400),
       suffix=st.sampled_from([".csv", ".tsv", ".smi", ".fasta", ".sdf", ".csv.gz"]))
def test_any_bytes_as_a_data_file(data, suffix):
    path = _tmpdir() / f"rows{suffix}"
    path.write_bytes(data)
    _fails_cleanly(lambda: load_source(str(path), label="y", text_columns=["smiles"],
                                       progress=False), path)
    _fails_cleanly(lambda: load_source(str(path), skip_invalid=True, progress=False), path)


@given(header=st.lists(st.sampled_from(["smiles", "y", "name", "", "smiles ", "Y"]),
                       min_size=1, max_size=4),
       rows=st.lists(st.tuples(SMILES, FIELD, FIELD), max_size=6),
       sep=st.sampled_from([",", "\t"]), skip=st.booleans())
def test_near_valid_tables(header, rows, sep, skip):
    """Headers with missing/duplicate/blank columns, bad SMILES, non-finite labels, stray
    quotes and NULs: errors name the file and, for a bad row, its row number."""
    path = _tmpdir() / ("rows.tsv" if sep == "\t" else "rows.csv")
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        table, skipped = load_source(str(path), label="y", text_columns=["smiles"],
                                     skip_invalid=skip, progress=False)
    except TagllmError as e:
        assert str(path) in str(e), e
        if " row " in str(e):
            assert re.search(r"row \d+", str(e)), e
        return
    assert all(re.match(rf"{re.escape(str(path))} row \d+: ", s) for s in skipped), skipped
    assert all(isinstance(v, str) for v in table.columns["smiles"])


@given(records=st.lists(st.tuples(st.sampled_from([">p", ">", "", "> x y"]),
                                  st.text(alphabet="ACDEFGHIKLMNPQRSTVWYXBZUO*-acg \n1",
                                          max_size=30)), max_size=5))
def test_fasta_files(records):
    path = _tmpdir() / "p.fasta"
    path.write_text("".join(f"{h}\n{s}\n" for h, s in records))
    _fails_cleanly(lambda: load_source(str(path), progress=False), path)


@given(fields=st.lists(st.tuples(st.sampled_from(["SOL", "y", "", "a b"]), FIELD), max_size=3),
       block=st.sampled_from(["", "junk\n", "\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n"]),
       n=st.integers(0, 3))
def test_sd_files(fields, block, n):
    path = _tmpdir() / "m.sdf"
    record = block + "M  END\n" + "".join(f">  <{k}>\n{v}\n\n" for k, v in fields) + "$$$$\n"
    path.write_text(record * n)
    _fails_cleanly(lambda: load_source(str(path), label="SOL", progress=False), path)


@given(template=st.lists(st.sampled_from(list("{}!:.[]0a sy<>") + ["{smiles}", "{y}", "{0}"]),
                         max_size=12).map("".join))
def test_templates(template):
    table = Table({"smiles": ["CCO", "CCN"], "y": ["1", "2"]}, "t.csv", [1, 2])
    try:
        out = table.render(template)
    except TagllmError as e:
        assert "t.csv" in str(e) and repr(template) in str(e), e
        return
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = ["name", "model", "seed", "out", "train", "tags", "stages", "data", "eval", "kind",
        "num_tokens", "head", "source", "template", "label", "steps", "lr", "batch_size"]


@given(doc=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=5), raw=st.booleans(),
       text=st.text(max_size=60))
def test_recipes(doc, raw, text):
    path = _tmpdir() / "r.yaml"
    path.write_text(text if raw else yaml.safe_dump(doc))
    _fails_cleanly(lambda: load_recipe(path), path)


def _near_valid_recipe(draw_value, where: str) -> dict:
    base = {"name": "r", "model": "smollm2", "out": "runs/x",
            "tags": [{"name": "<S>", "num_tokens": 2},
                     {"name": "<Q>", "kind": "function", "head": {"kind": "regression"}}],
            "stages": [{"name": "s", "tags": ["<S>"],
                        "data": [{"source": "moses:train", "template": "<S> {smiles}"}]},
                       {"name": "q", "tags": ["<Q>"],
                        "data": [{"source": "moses:train", "label": "qed",
                                  "template": "<S> {smiles} <Q>"}],
                        "eval": [{"source": "moses:test", "label": "qed"}]}]}
    node, keys = base, where.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        node[int(keys[-1])] = draw_value
    else:
        node[keys[-1]] = draw_value
    return base


@given(where=st.sampled_from(["name", "model", "seed", "tags.0", "tags.1.head", "tags.0.name",
                              "tags.1.num_tokens", "stages.0.tags", "stages.1.data.0",
                              "stages.1.data.0.template", "stages.1.eval.0.label",
                              "stages.0.data.0.n", "stages.1.train", "stages.0.name"]),
       value=JSON)
def test_recipes_with_one_bad_value(where, value):
    """A valid recipe with one value replaced: loads, or fails naming the file."""
    path = _tmpdir() / "r.yaml"
    path.write_text(yaml.safe_dump(_near_valid_recipe(value, where)))
    _fails_cleanly(lambda: load_recipe(path), path)


@pytest.fixture(scope="module")
def saved_tag(tmp_path_factory):
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    d = m.save_tag("<Q>", tmp_path_factory.mktemp("tag") / "Q", provenance={"stage": 1})
    return m, d


def _copy(d: Path) -> Path:
    out = _tmpdir() / "Q"
    out.mkdir()
    for f in (META, TENSORS):
        (out / f).write_bytes((d / f).read_bytes())
    return out


def _load_into_fresh(m, d: Path) -> None:
    fresh = tiny_tagged("llama")
    fresh.load_tag(d)
    assert fresh.bank.names == ["<Q>"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.lists(st.sampled_from(["config", "head", "kind", "num_outputs", "name",
                                      "num_tokens", "hidden_size", "base_model", "files",
                                      "format_version", "fingerprint", "trained_with", "init"]),
                     min_size=1, max_size=3), value=JSON)
def test_tag_json_with_one_bad_value(saved_tag, path, value):
    m, good = saved_tag
    d = _copy(good)
    meta = json.loads((d / META).read_text())
    node = meta
    for k in path[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    node[path[-1]] = value
    (d / META).write_text(json.dumps(meta))
    _fails_cleanly(lambda: _load_into_fresh(m, d), d)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.sampled_from([META, TENSORS]), cut=st.integers(0, 4000),
       flips=st.lists(st.integers(0, 4000), max_size=4), fix_checksum=st.booleans(),
       junk=st.binary(max_size=40))
def test_corrupt_tag_files(saved_tag, which, cut, flips, fix_checksum, junk):
    """Cut, flipped or padded tag files; with the checksum re-written the tensor file's own
    parser and the shape checks must catch what the checksum no longer does."""
    m, good = saved_tag
    d = _copy(good)
    data = bytearray((d / which).read_bytes())
    for i in flips:
        if data:
            data[i % len(data)] ^= 0x5A
    data = data[:cut] + junk if cut < len(data) else data + junk
    (d / which).write_bytes(bytes(data))
    if which == TENSORS and fix_checksum:
        meta = json.loads((d / META).read_text())
        meta["files"][TENSORS] = sha256_file(d / TENSORS)
        (d / META).write_text(json.dumps(meta))
    _fails_cleanly(lambda: _load_into_fresh(m, d), d)
