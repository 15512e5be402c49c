"""Molecules: SMILES validation (RDKit), the MOSES data set shipped by ``molsets``, QED labels.

MOSES files are read from the installed ``molsets`` package (``moses/dataset/data``); the
package itself is never imported. QED labels (RDKit ``QED.qed``, about 1k molecules/s) are
computed once and cached as CSV under ``$TAGLLM_HOME/data``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tagllm.data import DataError, Table, package_dir, write_csv
from tagllm.paths import data_cache_dir

MOSES_SPLITS = ("train", "test", "test_scaffolds")


def _rdkit():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # errors are reported by us, naming the row
    return Chem


#: The longest SMILES tagllm hands to RDKit. RDKit's time grows faster than the length
#: (parsing 20,000 characters of fused aromatic rings takes a second, writing a canonical
#: SMILES for a 10,000-atom chain three) and its canonical writer recurses once per atom,
#: so a chain of about 20,000 atoms overflows the stack and kills the process. Every SMILES
#: a language model's context holds is far shorter.
SMILES_MAX_CHARS = 5_000


def parse_smiles(smiles: str):
    """The RDKit molecule of a SMILES, its length checked before RDKit sees it; ValueError
    for an empty, over-long or unparsable string."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise ValueError("empty SMILES")
    s = smiles.strip()
    if len(s) > SMILES_MAX_CHARS:
        raise ValueError(f"a SMILES of {len(s):,} characters; the longest tagllm parses is "
                         f"{SMILES_MAX_CHARS:,}")
    mol = _rdkit().MolFromSmiles(s)
    if mol is None:
        raise ValueError(f"invalid SMILES {s[:80]!r} (RDKit cannot parse it)")
    return mol


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical SMILES; ValueError for an empty, over-long or unparsable string, or a
    molecule RDKit cannot write."""
    mol = parse_smiles(smiles)
    try:
        return _rdkit().MolToSmiles(mol)
    except (ValueError, RuntimeError) as e:  # e.g. too many ring closures open at once
        raise ValueError(f"RDKit cannot write SMILES {smiles.strip()[:80]!r} ({e})") from None


def check_smiles(smiles: str) -> str:
    """Validator for :func:`tagllm.data.validate_rows`: the SMILES parses (it is not
    canonicalised: that costs more and the row keeps its SMILES as written)."""
    parse_smiles(smiles)
    return smiles.strip()


def moses_dir() -> Path:
    return package_dir("moses", "molsets==0.3.1", "the MOSES molecules") / "dataset" / "data"


def read_moses(split: str) -> list[str]:
    """All SMILES of one MOSES split (train: 1.58M, test: 176k, test_scaffolds: 176k)."""
    if split not in MOSES_SPLITS:
        raise DataError(f"unknown MOSES split {split!r}; known: {MOSES_SPLITS}")
    path = moses_dir() / f"{split}.csv.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip().upper() != "SMILES":
        raise DataError(f"{path}: expected a 'SMILES' header, got {lines[:1]}")
    return [s.strip() for s in lines[1:]]


def shuffled(n_items: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n_items)``: its first n entries are a random sample."""
    return np.random.default_rng(seed).permutation(n_items)


def _cache_dir() -> Path:
    return data_cache_dir()


def qed_values(smiles: Iterable[str], progress: bool = True) -> np.ndarray:
    """QED of each SMILES, cached on disk by the hash of the list."""
    smiles = list(smiles)
    key = hashlib.sha256("\n".join(smiles).encode()).hexdigest()[:20]
    path = _cache_dir() / f"qed-{key}.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        if [r[0] for r in rows] == smiles:
            return np.array([float(r[1]) for r in rows])
    from rdkit.Chem import QED

    from tagllm.progress import track

    Chem = _rdkit()
    out = np.empty(len(smiles))
    for i, s in enumerate(track(smiles, "computing QED labels (cached after)", progress)):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise DataError(f"QED: invalid SMILES {s!r} at position {i}")
        out[i] = QED.qed(mol)
    write_csv(path, ["smiles", "qed"], zip(smiles, (repr(float(x)) for x in out), strict=True))
    return out


def moses_table(split: str, n: int | None, seed: int, labels: bool = True,
                exclude: Iterable[str] = (), progress: bool = True) -> Table:
    """A seeded sample of a MOSES split with columns ``smiles`` (and ``qed``).

    ``exclude``: SMILES (any form) that must not appear, compared canonically, e.g. the
    test set when sampling training molecules.
    """
    all_smiles = read_moses(split)
    excluded = set()
    for s in exclude:
        try:
            excluded.add(canonical_smiles(s))
        except ValueError as e:
            raise DataError(f"a held-out molecule: {e}") from None
    chosen: list[str] = []
    rows: list[int] = []
    order = range(len(all_smiles)) if n is None else shuffled(len(all_smiles), seed)
    for i in order:
        s = all_smiles[int(i)]
        if excluded and canonical_smiles(s) in excluded:
            continue
        chosen.append(s)
        rows.append(int(i) + 1)
        if n is not None and len(chosen) == n:
            break
    cols: dict[str, list] = {"smiles": chosen}
    if labels:
        cols["qed"] = qed_values(chosen, progress=progress).tolist()
    return Table(cols, f"moses:{split}", rows)


# ----------------------------------------------------------------- NCI molecules, Lipinski
NCI_LABELS = ("lipinski", "qed")


def nci_file() -> Path:
    """RDKit's shipped ``Data/NCI/first_5K.smi`` (5,000 NCI compounds, SMILES and NSC id)."""
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


def lipinski_pass(mol) -> int:
    """1 if the molecule breaks none of Lipinski's four rules of five (molecular weight
    <= 500, Crippen logP <= 5, H-bond donors <= 5, H-bond acceptors <= 10), else 0."""
    from rdkit.Chem import Crippen, Descriptors, Lipinski

    return int(Descriptors.MolWt(mol) <= 500 and Crippen.MolLogP(mol) <= 5
               and Lipinski.NumHDonors(mol) <= 5 and Lipinski.NumHAcceptors(mol) <= 10)


def in_test_split(canonical: str) -> bool:
    """The fixed 80/20 split of the molecule sources (NCI, B3DB): a hash of the canonical
    SMILES, so a molecule is on the same side whatever file or order it comes in."""
    return int(hashlib.sha256(canonical.encode()).hexdigest(), 16) % 5 == 0


def nci_table(split: str, labels: Iterable[str] = ()) -> tuple[Table, list[str]]:
    """NCI molecules with a fixed 80/20 split by canonical SMILES (duplicates collapse to
    their first row), columns ``smiles``, ``name`` and the requested labels; plus the rows
    the file itself holds that RDKit cannot parse (reported, never used)."""
    from rdkit.Chem import QED

    labels = list(labels)
    bad = [x for x in labels if x not in NCI_LABELS]
    if bad:
        raise DataError(f"nci:{split} has no label(s) {bad}; it provides {list(NCI_LABELS)}")
    if split not in ("train", "test", "all"):
        raise DataError(f"nci:{split}: unknown split; use nci:train, nci:test or nci:all")
    path = nci_file()
    Chem = _rdkit()
    cols: dict[str, list] = {"smiles": [], "name": [], **{x: [] for x in labels}}
    rows: list[int] = []
    skipped: list[str] = []
    seen: set[str] = set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            mol = Chem.MolFromSmiles(parts[0]) if parts else None
            if mol is None:
                skipped.append(f"{path} row {lineno}: invalid SMILES "
                               f"{(parts or [''])[0][:80]!r} (RDKit cannot parse it)")
                continue
            canon = Chem.MolToSmiles(mol)
            if canon in seen:
                continue
            seen.add(canon)
            if split != "all" and in_test_split(canon) != (split == "test"):
                continue
            cols["smiles"].append(parts[0])
            cols["name"].append(parts[1] if len(parts) > 1 else str(lineno))
            rows.append(lineno)
            for x in labels:
                cols[x].append(lipinski_pass(mol) if x == "lipinski" else QED.qed(mol))
    return Table(cols, f"nci:{split}", rows), skipped
