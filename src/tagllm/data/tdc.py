"""Therapeutics Data Commons tables for the cross-domain tasks, read from local files.

``BindingDB_Patent`` (binding affinity, ``<BA>``): TDC's CSV with columns ``Drug_ID, Drug,
Target_ID, Target, Y, Year``; ``Y`` is the affinity in nM. TDC's domain-generalisation
benchmark (``dti_dg_group``) splits it by patent year: 2013-2018 for training, 2019-2021 for
testing, which is what ``bindingdb:train|test:FILE`` does. The label ``p_affinity`` is TDC's
``convert_to_log`` transform, -log10(Y * 1e-9 + 1e-10) (pKd-like, higher binds tighter).

``DrugComb_CSS`` (drug combination, ``<DC>``): TDC's CSV with columns ``Drug1_ID, Drug1,
Drug2_ID, Drug2, Cell_Line_ID, Y`` (CSS sensitivity score). ``drugcomb:train|test:FILE``
splits 80/20 by a hash of the combination (the drug pair in either order, and the cell
line), so both orders of a pair on a cell line land on the same side.

Column names are lower-cased (``drug``, ``target``, ``drug1``, ``cell_line_id`` …), so
templates read ``{drug}``; every SMILES is checked with RDKit and every sequence letter by
letter. The files cannot be downloaded here (TDC fetches them at run time); for tests and
the demo, :func:`synthetic_bindingdb` and :func:`synthetic_drugcomb` write clearly labelled
synthetic tables in the same formats from real MOSES molecules and real proteins, with
labels from a known formula — never to be reported as the benchmark.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from tagllm.data import DataError, Table, check_number, write_csv
from tagllm.paths import data_cache_dir

BINDINGDB_COLUMNS = ("Drug_ID", "Drug", "Target_ID", "Target", "Y", "Year")
DRUGCOMB_COLUMNS = ("Drug1_ID", "Drug1", "Drug2_ID", "Drug2", "Cell_Line_ID", "Y")
#: TDC's BindingDB_Patent domain-generalisation split by patent year.
TRAIN_YEARS = range(2013, 2019)
TEST_YEARS = range(2019, 2022)
SYNTHETIC = "synthetic"  # the file name that selects the labelled synthetic fixture


def _lower(table: Table) -> Table:
    return Table({k.lower(): v for k, v in table.columns.items()}, table.source, table.rows)


def _hash_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16 ** 12


def p_affinity(y_nm: float) -> float:
    """TDC's ``convert_to_log``: -log10(Y nM * 1e-9 + 1e-10)."""
    return -math.log10(y_nm * 1e-9 + 1e-10)


def bindingdb_split(table: Table, split: str) -> Table:
    """Rows of a BindingDB_Patent table (read with :func:`tagllm.data.read_table`) in the
    year-based ``split``, with the label column ``p_affinity`` added."""
    for c in BINDINGDB_COLUMNS:
        table[c]  # a missing column fails naming the file and the columns it has
    years = range(TRAIN_YEARS.start, TEST_YEARS.stop) if split == "all" else \
        {"train": TRAIN_YEARS, "test": TEST_YEARS}.get(split)
    if years is None:
        raise DataError(f"unknown split {split!r}; use train, test or all")
    keep, py = [], []
    for i, (year, y) in enumerate(zip(table["Year"], table["Y"], strict=True)):
        try:
            yr = int(check_number(year))
            aff = check_number(y)
        except ValueError as e:
            raise DataError(f"{table.where(i)}: {e} (columns Year and Y must be numbers)") \
                from None
        if aff < 0:
            raise DataError(f"{table.where(i)}: Y {aff:g} nM is negative")
        if yr in years:
            keep.append(i)
            py.append(p_affinity(aff))
    out = table.select(keep)
    return _lower(Table({**out.columns, "p_affinity": py}, out.source, out.rows))


def drugcomb_split(table: Table, split: str, test_fraction: float = 0.2) -> Table:
    """Rows of a DrugComb table in the hash-based ``split`` (train/test/all)."""
    for c in DRUGCOMB_COLUMNS:
        table[c]
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}; use train, test or all")
    keep = []
    for i, (d1, d2, cell) in enumerate(zip(table["Drug1"], table["Drug2"],
                                           table["Cell_Line_ID"], strict=True)):
        key = "|".join(sorted([d1.strip(), d2.strip()]) + [cell.strip()])
        in_test = _hash_fraction(key) < test_fraction
        if split == "all" or in_test == (split == "test"):
            keep.append(i)
    return _lower(table.select(keep))


# ----------------------------------------------------------------- synthetic fixtures
def _fixture_path(name: str) -> Path:
    return data_cache_dir() / f"SYNTHETIC-{name}.csv"


def _molecule_features(smiles: list[str]) -> np.ndarray:
    from rdkit import Chem
    from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

    out = []
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        out.append([Crippen.MolLogP(m), Descriptors.TPSA(m) / 20,
                    rdMolDescriptors.CalcNumAromaticRings(m)])
    x = np.array(out)
    return (x - x.mean(0)) / x.std(0)


def synthetic_bindingdb(n_pairs: int = 3000, n_targets: int = 40, n_drugs: int = 600,
                        max_residues: int = 160) -> Path:
    """A SYNTHETIC table in BindingDB_Patent's format: real MOSES molecules and real
    proteins (pyhmmer's, at most ``max_residues`` long), with affinities from a fixed
    formula of their properties (molecule logP, polar surface area and aromatic rings
    interacting with the protein's hydrophobicity and charge) plus noise, and years spread
    over 2013-2021. Written once to ``$TAGLLM_HOME/data``. Not a benchmark."""
    path = _fixture_path(f"BindingDB_Patent-{n_pairs}-{n_targets}-{n_drugs}-{max_residues}")
    if path.is_file():
        return path
    from tagllm.data.proteins import descriptor_values, protein_splits
    from tagllm.data.smiles import read_moses

    rng = np.random.default_rng(0)
    prot = protein_splits()[0]
    short = [i for i, s in enumerate(prot["sequence"]) if len(s) <= max_residues]
    targets = [short[int(i)] for i in rng.permutation(len(short))[:n_targets]]
    seqs = [prot["sequence"][i] for i in targets]
    pf = descriptor_values(seqs, ["hydrophobicity", "charge_per_residue"])
    pf = (pf - pf.mean(0)) / pf.std(0)
    moses = read_moses("test")
    drugs = [moses[int(i)] for i in rng.permutation(len(moses))[:n_drugs]]
    mf = _molecule_features(drugs)
    target_bias = rng.normal(0, 0.6, n_targets)
    rows, seen = [], set()
    while len(rows) < n_pairs:
        d, t = int(rng.integers(n_drugs)), int(rng.integers(n_targets))
        if (d, t) in seen:
            continue
        seen.add((d, t))
        p = (6.5 + target_bias[t] + 0.5 * mf[d, 0] * pf[t, 0] - 0.4 * mf[d, 1] * pf[t, 1]
             + 0.3 * mf[d, 2] + rng.normal(0, 0.3))
        y_nm = 10 ** (9 - p)
        rows.append([f"SYNTHETIC-drug-{d}", drugs[d], f"SYNTHETIC-{prot['id'][targets[t]]}",
                     seqs[t], f"{y_nm:.6g}", int(rng.integers(2013, 2022))])
    return write_csv(path, list(BINDINGDB_COLUMNS), rows)


#: Cell line names of the NCI-60 panel, used as labels of the synthetic fixture.
CELL_LINES = ("MCF7", "A549", "HCT116", "PC-3", "SK-MEL-5", "OVCAR-3", "K-562", "U251")


def synthetic_drugcomb(n_rows: int = 3000, n_drugs: int = 120) -> Path:
    """A SYNTHETIC table in DrugComb_CSS's format: pairs of real MOSES molecules on eight
    cell lines, with a CSS score from a fixed formula in which each cell line weighs the
    drugs' properties differently (so the cell line matters) plus noise. Written once to
    ``$TAGLLM_HOME/data``. Not a benchmark."""
    path = _fixture_path(f"DrugComb_CSS-{n_rows}-{n_drugs}")
    if path.is_file():
        return path
    from tagllm.data.smiles import read_moses

    rng = np.random.default_rng(1)
    moses = read_moses("test")
    drugs = [moses[int(i)] for i in rng.permutation(len(moses))[:n_drugs]]
    mf = _molecule_features(drugs)
    weights = rng.normal(0, 1, (len(CELL_LINES), mf.shape[1]))
    base = rng.normal(0, 4, len(CELL_LINES))
    rows, seen = [], set()
    while len(rows) < n_rows:
        a, b = sorted(int(x) for x in rng.choice(n_drugs, 2, replace=False))
        c = int(rng.integers(len(CELL_LINES)))
        if (a, b, c) in seen:
            continue
        seen.add((a, b, c))
        css = 15 + base[c] + 4 * (mf[a] + mf[b]) @ weights[c] + rng.normal(0, 2)
        rows.append([f"SYNTHETIC-drug-{a}", drugs[a], f"SYNTHETIC-drug-{b}", drugs[b],
                     CELL_LINES[c], f"{css:.4f}"])
    return write_csv(path, list(DRUGCOMB_COLUMNS), rows)
