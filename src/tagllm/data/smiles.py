"""Molecules: SMILES validation (RDKit), the MOSES data set shipped by ``molsets``, QED labels.

MOSES files are read from the installed ``molsets`` package (``moses/dataset/data``); the
package itself is never imported. QED labels (RDKit ``QED.qed``, about 1k molecules/s) are
computed once and cached as CSV under ``$TAGLLM_HOME/data``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tagllm.data import DataError, Table

MOSES_SPLITS = ("train", "test", "test_scaffolds")


def _rdkit():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # errors are reported by us, naming the row
    return Chem


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical SMILES; ValueError for an empty or unparsable string."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise ValueError("empty SMILES")
    mol = _rdkit().MolFromSmiles(smiles.strip())
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles.strip()[:80]!r} (RDKit cannot parse it)")
    return _rdkit().MolToSmiles(mol)


def check_smiles(smiles: str) -> str:
    """Validator for :func:`tagllm.data.validate_rows`: keeps the SMILES as written."""
    canonical_smiles(smiles)
    return smiles.strip()


def moses_dir() -> Path:
    spec = importlib.util.find_spec("moses")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MOSES data not found; install it with "
                                "`pip install --no-deps molsets==0.3.1`")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data"


def read_moses(split: str) -> list[str]:
    """All SMILES of one MOSES split (train: 1.58M, test: 176k, test_scaffolds: 176k)."""
    if split not in MOSES_SPLITS:
        raise ValueError(f"unknown MOSES split {split!r}; known: {MOSES_SPLITS}")
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
    from tagllm.backbones import tagllm_home

    return tagllm_home() / "data"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smiles", "qed"])
        w.writerows(zip(smiles, (repr(float(x)) for x in out), strict=True))
    os.replace(tmp, path)
    return out


def moses_table(split: str, n: int | None, seed: int, labels: bool = True,
                exclude: Iterable[str] = (), progress: bool = True) -> Table:
    """A seeded sample of a MOSES split with columns ``smiles`` (and ``qed``).

    ``exclude``: SMILES (any form) that must not appear, compared canonically, e.g. the
    test set when sampling training molecules.
    """
    all_smiles = read_moses(split)
    excluded = {canonical_smiles(s) for s in exclude}
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
