"""The measured data sets shipped in PyPI packages (KIBA, B3DB, solubility) and the SD-file
reader: sizes, splits, labels, and errors that name the file and the record."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tagllm.data.measured import read_sdf
from tagllm.errors import DataError
from tagllm.sources import load_source

ETHANOL = """ethanol
  made by hand

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.5000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    2.2500    1.2990    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  2  3  1  0
M  END
"""
# carbon with five bonds: RDKit refuses the structure
PENTAVALENT = """bad carbon

  6  5  0  0  0  0  0  0  0  0999 V2000
""" + "".join(f"    {x:.4f}    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0\n"
              for x in range(6)) + "".join(f"  1  {j}  1  0\n" for j in range(2, 7)) + "M  END\n"


def record(mol: str, **fields: str) -> str:
    return mol + "".join(f">  <{k}>  (1)\n{v}\n\n" for k, v in fields.items()) + "$$$$\n"


def test_sdf_reader_reads_fields_and_names_a_bad_record(tmp_path):
    path = tmp_path / "m.sdf"
    path.write_text(record(ETHANOL, ID="1", SOL="-0.5", NOTE="two\nlines")
                    + record(PENTAVALENT, ID="2", SOL="-1.0")
                    + record(ETHANOL.replace("ethanol", "again"), ID="3", SOL="0.25"))
    with pytest.raises(DataError, match=r"m\.sdf record 2 \('bad carbon'\): RDKit cannot "
                                        r"read its structure \(use --skip_invalid"):
        read_sdf(path)
    table, skipped = read_sdf(path, skip_invalid=True)
    assert table["smiles"] == ["CCO", "CCO"] and table.rows == [1, 3]
    assert table["SOL"] == ["-0.5", "0.25"] and table["ID"] == ["1", "3"]
    assert table["NOTE"] == ["two\nlines", ""]  # a field a record lacks is empty
    assert len(skipped) == 1 and "record 2" in skipped[0]
    # through load_source: the label checked as a number, the row named by its record
    gz = tmp_path / "m.sdf.gz"
    with gzip.open(gz, "wt") as f:
        f.write(record(ETHANOL, SOL="-0.5") + record(ETHANOL, SOL="nan"))
    with pytest.raises(DataError, match=r"m\.sdf\.gz row 2: column 'SOL': 'nan' is not a "
                                        "finite number"):
        load_source(str(gz), label="SOL")
    # what `tagllm predict` streams: the SD reader's rows, not the file read as a CSV
    from tagllm.sources import stream_source

    chunks = list(stream_source(str(path), chunk_rows=1, skip_invalid=True))
    assert len(chunks) == 1 and chunks[0][1]["smiles"] == ["CCO", "CCO"]


@pytest.mark.parametrize("text, why", [
    ("", "no records"),
    ("just a title\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\n$$$$\n", "no 'M  END' line"),
])
def test_sdf_reader_refuses_files_without_structures(tmp_path, text, why):
    path = tmp_path / "x.sdf"
    path.write_text(text)
    with pytest.raises(DataError, match=why):
        read_sdf(path)
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(DataError, match="not UTF-8"):
        read_sdf(path)


def test_kiba_sample_is_read_with_its_own_split():
    train, _ = load_source("kiba:train", label="kiba", progress=False)
    test, _ = load_source("kiba:test", label="kiba", progress=False)
    assert (len(train), len(test)) == (3000, 1000)
    assert {"smiles", "sequence", "kiba"} <= set(train.columns)
    y = np.asarray(test["kiba"], dtype=float)
    assert 7 < y.min() and y.max() < 17
    # the package's split is cold on both sides: no ligand, no protein shared
    assert not set(train["ligand_id"]) & set(test["ligand_id"])
    assert not set(train["sequence"]) & set(test["sequence"])
    with pytest.raises(DataError, match="kiba:dev: unknown split; use kiba:train, kiba:val"):
        load_source("kiba:dev")
    with pytest.raises(DataError, match=r"has no label\(s\) \['pkd'\]; it provides \['kiba'\]"):
        load_source("kiba:test", label="pkd")


def test_b3db_split_is_disjoint_and_unparsable_rows_are_reported():
    train, skipped = load_source("b3db:train", label="bbb", progress=False)
    test, _ = load_source("b3db:test", label="bbb", progress=False)
    assert len(train) + len(test) == 7807 - 2  # two SMILES RDKit cannot parse
    assert len(skipped) == 2 and all("invalid SMILES" in s and "row " in s for s in skipped)
    assert len(test) == 1546  # the hash split: 19.8 % (a fixed function of the molecule)
    assert not set(train["smiles"]) & set(test["smiles"])
    assert set(np.asarray(train["bbb"], dtype=float)) == {0.0, 1.0}


def test_solubility_has_its_measured_logs():
    train, _ = load_source("solubility:train", label="logS", progress=False)
    test, _ = load_source("solubility:test", label="logS", progress=False)
    assert (len(train), len(test)) == (1025, 257)
    assert train["smiles"][0] == "CCCCC" and train["logS"][0] == pytest.approx(-3.18)
    assert train.where(0).startswith("solubility:train (") and train.where(0).endswith("row 1")


def test_drug_target_rows_get_a_pair_forest_and_no_knn():
    """Rows with a molecule and a protein: the forest reads both (fingerprint beside
    composition), k-NN has no distance for the pair and says so."""
    from types import SimpleNamespace

    from tagllm.evaluation.baselines import BASELINES, PAIR, Task, pair_features

    table, _ = load_source("kiba:val", label="kiba", n=60, progress=False)
    y = np.asarray(table["kiba"], dtype=float)
    train = SimpleNamespace(table=table.select(range(40)), texts=[""] * 40, targets=y[:40])
    test = SimpleNamespace(table=table.select(range(40, 60)), texts=[""] * 20, targets=y[40:])
    assert BASELINES["knn"](Task()).unavailable(train, test) == \
        f"no k-NN distance for {PAIR!r} inputs"
    rf = BASELINES["rf"](Task())
    assert rf.unavailable(train, test) is None
    assert rf.name(train, test) == "Morgan + composition random forest (200 trees)"
    rf.fit(train)
    pred = rf.predict(test)
    assert pred.shape == (20,) and y[:40].min() <= pred.min() <= pred.max() <= y[:40].max()
    feats = pair_features(list(zip(table["smiles"][:2], table["sequence"][:2], strict=True)))
    assert feats.shape == (2, 2048 + 21)
