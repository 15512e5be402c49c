"""TDC loaders on small local files in TDC's formats, and the labelled synthetic fixtures."""

from __future__ import annotations

import math

import pytest

from tagllm.data import DataError, read_table
from tagllm.data.tdc import synthetic_bindingdb, synthetic_drugcomb
from tagllm.sources import load_source

BDB = ("Drug_ID,Drug,Target_ID,Target,Y,Year\n"
       "d1,CCO,t1,MKVLAAGIVG,1.0,2014\n"
       "d2,c1ccccc1O,t1,MKVLAAGIVG,250,2018\n"
       "d1,CCO,t2,MSTNPKPQRK,10000,2019\n"
       "d3,CC(=O)O,t2,MSTNPKPQRK,40,2021\n"
       "d4,CCN,t2,MSTNPKPQRK,7,2011\n")  # before TDC's years: in neither split
DC = ("Drug1_ID,Drug1,Drug2_ID,Drug2,Cell_Line_ID,Y\n"
      + "".join(f"a,CCO,b,CCN,{c},{i}\n" for i, c in enumerate(["MCF7", "A549", "PC-3"]))
      + "".join(f"b,CCN,a,CCO,{c},{i}\n" for i, c in enumerate(["MCF7", "A549", "PC-3"]))
      + "".join(f"c,c1ccccc1,d,CC(C)O,L{i},{i}.5\n" for i in range(20)))


def _file(tmp_path, text, name="BindingDB_Patent.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bindingdb_year_split_and_log_label(tmp_path):
    p = _file(tmp_path, BDB)
    train, _ = load_source(f"bindingdb:train:{p}", label="p_affinity")
    test, _ = load_source(f"bindingdb:test:{p}", label="p_affinity")
    assert train["drug_id"] == ["d1", "d2"] and test["drug_id"] == ["d1", "d3"]
    assert train.rows == [1, 2] and test.rows == [3, 4]  # file rows, for messages
    assert math.isclose(train["p_affinity"][0], -math.log10(1e-9 + 1e-10))
    assert set(train.columns) >= {"drug", "target", "y", "year", "p_affinity"}


@pytest.mark.parametrize("old, new, message", [
    ("Year\n", "Yr\n", r"BindingDB_Patent.csv: missing column 'Year'"),
    ("250,2018", "250,soon", r"BindingDB_Patent.csv row 2: 'soon' is not a number"),
    ("10000,2019", "nan,2019", r"row 3: 'nan' is not a finite number"),
    ("d3,CC(=O)O", "d3,CC(=O", r"row 4: column 'drug': invalid SMILES 'CC\(=O'"),
    ("t2,MSTNPKPQRK,40", "t2,MSTNPKPQRZ1,40", r"row 4: column 'target': unknown amino-acid"),
])
def test_bindingdb_bad_rows_are_named(tmp_path, old, new, message):
    p = _file(tmp_path, BDB.replace(old, new))
    with pytest.raises((DataError, ValueError), match=message):
        load_source(f"bindingdb:test:{p}", label="p_affinity")


def test_bindingdb_spec_and_label_errors(tmp_path):
    p = _file(tmp_path, BDB)
    with pytest.raises(ValueError, match=r"write bindingdb:SPLIT:FILE"):
        load_source("bindingdb:train")
    with pytest.raises(ValueError, match=r"unknown split 'valid'"):
        load_source(f"bindingdb:valid:{p}")
    with pytest.raises(ValueError, match=r"has no label\(s\) \['kd'\]; it provides"):
        load_source(f"bindingdb:train:{p}", label="kd")


def test_drugcomb_split_keeps_both_orders_of_a_combination_together(tmp_path):
    p = _file(tmp_path, DC, "DrugComb_CSS.csv")
    train, _ = load_source(f"drugcomb:train:{p}", label="y")
    test, _ = load_source(f"drugcomb:test:{p}", label="y")
    assert len(train) + len(test) == 26 and len(test) > 0 and len(train) > 0
    for part in (train, test):
        for c in ("MCF7", "A549", "PC-3"):
            n = sum(1 for x in part["cell_line_id"] if x == c)
            assert n in (0, 2)  # (a, b) and (b, a) on a cell line: the same side
    assert "cell_line_id" in train.columns and "drug1" in train.columns


def test_drugcomb_needs_the_cell_line(tmp_path):
    p = _file(tmp_path, DC.replace("Cell_Line_ID", "Cell"), "DrugComb_CSS.csv")
    with pytest.raises(DataError, match=r"DrugComb_CSS.csv: missing column 'Cell_Line_ID'"):
        load_source(f"drugcomb:train:{p}", label="y")


def test_synthetic_fixtures_are_labelled_and_in_tdc_format():
    for path, cols in [(synthetic_bindingdb(), ["Drug_ID", "Drug", "Target_ID", "Target", "Y",
                                                 "Year"]),
                       (synthetic_drugcomb(), ["Drug1_ID", "Drug1", "Drug2_ID", "Drug2",
                                               "Cell_Line_ID", "Y"])]:
        assert path.name.startswith("SYNTHETIC-")
        t = read_table(path)
        assert list(t.columns) == cols and len(t) == 3000
        assert all(v.startswith("SYNTHETIC-") for v in t[cols[0]])
