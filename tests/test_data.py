"""Readers and validation: every bad row is named (file, row, reason); MOSES and QED."""

from __future__ import annotations

import numpy as np
import pytest

from tagllm.data import DataError, parse_labels, read_table
from tagllm.data.smiles import canonical_smiles, moses_table, qed_values
from tagllm.sources import load_source


def _csv(tmp_path, text: str, name: str = "d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_invalid_smiles_names_file_and_row(tmp_path):
    p = _csv(tmp_path, "smiles,y\nCCO,1\nC1CC,2\nCCN,3\n")
    with pytest.raises(DataError, match=r"d.csv row 2: column 'smiles': invalid SMILES 'C1CC'"):
        load_source(str(p), label="y")


def test_skip_invalid_drops_and_reports(tmp_path):
    p = _csv(tmp_path, "smiles,y\nCCO,1\nC1CC,2\nCCN,nan\nc1ccccc1,4\n")
    table, skipped = load_source(str(p), label="y", skip_invalid=True)
    assert table["smiles"] == ["CCO", "c1ccccc1"]
    assert table.rows == [1, 4]
    assert len(skipped) == 2 and "row 2" in skipped[0] and "row 3" in skipped[1]
    np.testing.assert_array_equal(parse_labels(table, "y"), [1.0, 4.0])


@pytest.mark.parametrize("value,reason", [("nan", "not a finite number"),
                                          ("inf", "not a finite number"),
                                          ("abc", "not a number"), ("", "not a number")])
def test_bad_labels_name_the_row(tmp_path, value, reason):
    p = _csv(tmp_path, f"smiles,y\nCCO,1\nCCN,{value}\n")
    with pytest.raises(DataError, match=rf"row 2: column 'y': .*{reason}"):
        load_source(str(p), label="y")


def test_missing_column_is_named(tmp_path):
    p = _csv(tmp_path, "smi,y\nCCO,1\n")
    with pytest.raises(DataError, match=r"missing column 'qed'"):
        load_source(str(p), label="qed")


def test_empty_smiles_is_rejected(tmp_path):
    p = _csv(tmp_path, "smiles\nCCO\n  \n")
    with pytest.raises(DataError, match=r"row 2: column 'smiles': empty SMILES"):
        load_source(str(p))


def test_smi_and_tsv_files(tmp_path):
    p = _csv(tmp_path, "CCO ethanol\nc1ccccc1\tbenzene\n", "m.smi")
    t = read_table(p)
    assert t["smiles"] == ["CCO", "c1ccccc1"] and t["name"] == ["ethanol", "benzene"]
    p = _csv(tmp_path, "smiles\tlabel\nCCO\t0.5\n", "m.tsv")
    assert read_table(p)["label"] == ["0.5"]


def test_template_with_unknown_column(tmp_path):
    t = read_table(_csv(tmp_path, "smiles\nCCO\n"))
    assert t.render("<SMILES> {smiles} <QED>") == ["<SMILES> CCO <QED>"]
    with pytest.raises(DataError, match=r"uses column 'drug' missing"):
        t.render("{drug}")


def test_moses_sample_is_seeded_disjoint_and_qed_cached():
    test = moses_table("test", 20, seed=0)
    again = moses_table("test", 20, seed=0)
    assert test["smiles"] == again["smiles"] and test["qed"] == again["qed"]
    train = moses_table("train", 30, seed=0, exclude=test["smiles"])
    assert len(train) == 30 and not set(train["smiles"]) & set(test["smiles"])
    assert all(0.0 < q < 1.0 for q in test["qed"])
    assert test.source == "moses:test" and test.rows[0] >= 1


def test_moses_exclusion_is_canonical():
    """Excluded molecules written in another atom order are still kept out."""
    from rdkit import Chem

    from tagllm.data.smiles import canonical_smiles

    first = moses_table("train", 5, seed=3, labels=False)["smiles"]
    rewritten = [Chem.MolToSmiles(Chem.MolFromSmiles(s), doRandom=True, canonical=False)
                 for s in first]
    again = moses_table("train", 5, seed=3, labels=False, exclude=rewritten)["smiles"]
    assert len(again) == 5
    assert not {canonical_smiles(s) for s in again} & {canonical_smiles(s) for s in first}


def test_qed_values_match_rdkit():
    from rdkit import Chem
    from rdkit.Chem import QED

    smiles = ["CCO", "CC(=O)Oc1ccccc1C(=O)O"]
    np.testing.assert_allclose(qed_values(smiles, progress=False),
                               [QED.qed(Chem.MolFromSmiles(s)) for s in smiles])


# ----------------------------------------------------------------- one test per rule
def test_unknown_amino_acid_names_file_record_and_residue(tmp_path):
    p = _csv(tmp_path, ">a\nMKVLA\n>b\nMKJ1A\n", "p.fasta")
    with pytest.raises(DataError, match=r"p.fasta row 3: column 'sequence': unknown amino-acid "
                                        r"letter\(s\) \['1', 'J'\] \(first at residue 3\)"):
        load_source(str(p))
    table, skipped = load_source(str(p), skip_invalid=True)
    assert table["id"] == ["a"] and len(skipped) == 1 and "row 3" in skipped[0]


def test_protein_column_in_a_csv_is_checked(tmp_path):
    p = _csv(tmp_path, "protein,y\nMKVL,1\nMK*VL,2\n")
    with pytest.raises(DataError, match=r"d.csv row 2: column 'protein': unknown amino-acid"):
        load_source(str(p), label="y")


def test_whitespace_only_text_is_rejected(tmp_path):
    p = _csv(tmp_path, "text,y\nhello,1\n   ,2\n")
    with pytest.raises(DataError, match=r"d.csv row 2: column 'text': empty or whitespace-only"):
        load_source(str(p), label="y", text_columns=["text"])


def test_duplicate_fasta_id_names_both_lines(tmp_path):
    p = _csv(tmp_path, ">a\nMKV\n>b\nMKL\n>a\nMKI\n", "p.fasta")
    with pytest.raises(DataError, match=r"p.fasta line 5: duplicate id 'a' \(first at line 1\)"):
        load_source(str(p))


def test_duplicate_csv_id_names_both_rows(tmp_path):
    p = _csv(tmp_path, "id,smiles,y\nm1,CCO,1\nm2,CCN,2\nm1,CCC,3\n")
    with pytest.raises(DataError, match=r"d.csv row 3: duplicate id 'm1' \(first at row 1\)"):
        load_source(str(p), label="y")
    table, skipped = load_source(str(p), label="y", skip_invalid=True)
    assert table["id"] == ["m1", "m2"] and "duplicate id 'm1'" in skipped[0]


def test_a_field_longer_than_csvs_default_limit_reads(tmp_path):
    """csv's default limit is 131,072 characters per field; a protein or a long text may be
    longer: it reads, and the length checks decide what to do with it."""
    from tagllm.data import read_table

    path = tmp_path / "big.csv"
    path.write_text("smiles,y\n" + "C" * 200_000 + ",1\n")
    assert len(read_table(path)["smiles"][0]) == 200_000


@pytest.mark.parametrize("gz", [False, True])
def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path, gz):
    import gzip

    from tagllm.data import read_table
    from tagllm.errors import DataError

    raw = "smiles,name\nCCO,ethanol\nCCN,caf\xe9\n".encode("latin-1")
    path = tmp_path / ("latin1.csv.gz" if gz else "latin1.csv")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"latin1\.csv(\.gz)?: line 3 is not UTF-8 text "
                                        r"\(byte 0xe9 in 'CCN,caf.'\); save the file as UTF-8"):
        read_table(path)


@pytest.mark.parametrize("gz", [False, True])
def test_a_csv_saved_by_excel_reads(tmp_path, gz):
    """Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF: the first
    column is still `smiles`, not `\\ufeffsmiles`."""
    import gzip

    raw = "\ufeffsmiles,y\r\nCCO,1\r\nc1ccccc1,2\r\n".encode()
    path = tmp_path / ("excel.csv.gz" if gz else "excel.csv")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    table, _ = load_source(str(path), label="y")
    assert table["smiles"] == ["CCO", "c1ccccc1"] and table["y"] == [1.0, 2.0]


def test_every_text_format_reads_with_a_byte_order_mark_and_crlf(tmp_path):
    """Windows tools write TSV, .smi, FASTA and SD files the same way as Excel's CSV."""
    from rdkit import Chem

    bom = "\ufeff"
    mol = Chem.MolFromSmiles("CCO")
    mol.SetProp("_Name", "ethanol")
    mol.SetProp("y", "1.5")
    sd = Chem.MolToMolBlock(mol) + ">  <y>\n1.5\n\n$$$$\n"
    files = {"t.tsv": "smiles\ty\nCCO\t1\n", "m.smi": "CCO m1\nc1ccccc1 m2\n",
             "p.fasta": ">p0\nMKTAYIAK\n>p1\nMKVLA\n", "m.sdf": sd}
    want = {"t.tsv": {"smiles": ["CCO"], "y": ["1"]},
            "m.smi": {"smiles": ["CCO", "c1ccccc1"], "name": ["m1", "m2"]},
            "p.fasta": {"id": ["p0", "p1"], "sequence": ["MKTAYIAK", "MKVLA"]},
            "m.sdf": {"smiles": ["CCO"], "y": ["1.5"]}}
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes((bom + text.replace("\n", "\r\n")).encode())
        table, _ = load_source(str(path))
        assert {c: table[c] for c in table.columns} == want[name], name


def test_a_mistyped_source_name_names_the_closest_built_in_ones(tmp_path, monkeypatch):
    from tagllm.sources import BUILTIN_PREFIXES, SOURCES, load_source, stream_source

    with pytest.raises(DataError, match=r"mosse:train: no such file, and 'mosse' is not a "
                                        r"built-in source; did you mean 'moses:'\?"):
        load_source("mosse:train")
    with pytest.raises(DataError, match="did you mean 'b3db:'"):
        next(stream_source("b3bd:test", 10))
    with pytest.raises(DataError) as e:
        load_source("zzz:1")
    assert "did you mean" not in str(e.value) and "solubility:train" in str(e.value)
    (tmp_path / "runs:a.csv").write_text("smiles\nCCO\n")  # a real file named NAME:…
    monkeypatch.chdir(tmp_path)
    assert len(load_source("runs:a.csv")[0]) == 1
    assert BUILTIN_PREFIXES == tuple(f"{s.prefix}:" for s in SOURCES)


def test_a_mistyped_column_or_tag_names_the_closest_one(tmp_path):
    from tagllm.data import Table
    from tagllm.errors import UnknownTagError

    (tmp_path / "own.csv").write_text("smiles,logS\nCCO,1.0\n")
    t = Table({"smiles": ["CCO"], "logS": [1.0]}, "own.csv")
    with pytest.raises(DataError, match=r"uses column 'smile' .*did you mean 'smiles'\?"):
        t.render("<SMILES> {smile}")
    with pytest.raises(DataError, match=r"missing column 'logs'.*did you mean 'logS'\?"):
        t["logs"]
    with pytest.raises(DataError, match=r"missing column 'LogS'.*did you mean 'logS'\?"):
        read_table(str(tmp_path / "own.csv"), ["LogS"])
    with pytest.raises(DataError) as e:
        t["weight"]
    assert "did you mean" not in str(e.value)
    from tagllm import TagConfig

    from tiny import tiny_tagged

    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<QED>", kind="function"))
    with pytest.raises(UnknownTagError, match=r"unknown tag <QDE>.*did you mean '<QED>'\?"):
        m.bank.require("<QDE>")


def test_split_source_is_a_fixed_80_20_split_by_molecule(tmp_path):
    """split:train|test:FILE: disjoint, together every row, about a fifth in test, and a
    molecule lands on the same side written another way, in another row order or file."""
    mols = [*("C" * k for k in range(1, 41)), *("C" * k + "O" for k in range(1, 41)),
            *("C" * k + "N" for k in range(1, 41))]
    p = _csv(tmp_path, "smiles,y\n" + "".join(f"{s},{i}\n" for i, s in enumerate(mols)))
    train, _ = load_source(f"split:train:{p}", label="y")
    test, _ = load_source(f"split:test:{p}", label="y")
    assert sorted(train["smiles"] + test["smiles"]) == sorted(mols)
    assert not set(train["smiles"]) & set(test["smiles"])
    assert 0.1 < len(test) / len(mols) < 0.3
    assert sorted(train.rows + test.rows) == list(range(1, len(mols) + 1))  # file rows kept
    other = [f"{'O' + s[:-1] if s.endswith('O') else s}" for s in reversed(mols)]  # OCC = CCO
    q = _csv(tmp_path, "smiles\n" + "".join(f"{s}\n" for s in other), "other.csv")
    test2, _ = load_source(f"split:test:{q}")
    assert sorted(canonical_smiles(s) for s in test2["smiles"]) == \
        sorted(canonical_smiles(s) for s in test["smiles"])


def test_split_source_of_sequences_and_its_errors(tmp_path):
    seqs = ["".join("ACDEFGHIKLMNPQRSTVWY"[(i * 7 + j) % 20] for j in range(30 + i))
            for i in range(50)]
    p = _csv(tmp_path, "sequence,y\n" + "".join(f"{s},{i}\n" for i, s in enumerate(seqs)))
    parts = [load_source(f"split:{s}:{p}", label="y")[0]["sequence"] for s in ("train", "test")]
    assert sorted(parts[0] + parts[1]) == sorted(seqs) and parts[1]
    assert not set(parts[0]) & set(parts[1])
    with pytest.raises(DataError, match="write split:train:FILE or split:test:FILE"):
        load_source(f"split:val:{p}")
    with pytest.raises(DataError, match="split: takes a file; b3db:train has its own"):
        load_source("split:train:b3db:train")
    with pytest.raises(DataError, match="no such file|not found|No such"):
        load_source(f"split:test:{tmp_path / 'missing.csv'}")


def test_split_of_text_rows_ignores_ids_numbers_and_which_columns_are_labels(tmp_path):
    """Rows of text are split by their text alone: a text repeated under other ids stays on
    one side, and naming a column as a label never moves a row."""
    p = _csv(tmp_path, "id,text,y,z\n" + "".join(f"{i},word{i % 30},{i * 0.5},{i % 2}\n"
                                                for i in range(120)))
    test = load_source(f"split:test:{p}")[0]
    assert test.rows == load_source(f"split:test:{p}", label="y")[0].rows == \
        load_source(f"split:test:{p}", label=["y", "z"])[0].rows
    train = load_source(f"split:train:{p}", label="z")[0]
    assert test["text"] and not set(train["text"]) & set(test["text"])
    assert len(train) + len(test) == 120
