"""Proteins: the near-duplicate-free split and the <Descriptor> targets (peptides)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tagllm.data import parse_labels
from tagllm.data.proteins import (
    DESCRIPTORS,
    descriptor_values,
    group_split,
    near_duplicate_groups,
)
from tagllm.data.proteins import protein_splits as _protein_splits
from tagllm.sources import load_source

AA = "ACDEFGHIKLMNPQRSTVWY"


def _random_protein(rng, n=300):
    return "M" + "".join(rng.choice(list(AA), n - 1))


def _mutate(rng, s, rate):
    return "".join(rng.choice(list(AA)) if rng.random() < rate else c for c in s)


def test_near_duplicates_share_a_group_and_unrelated_proteins_do_not():
    rng = np.random.default_rng(0)
    family = [_random_protein(rng)]
    family += [_mutate(rng, family[0], 0.05) for _ in range(3)]  # ~95 % identical
    family.append(family[0][20:250])  # a fragment of the same protein
    others = [_random_protein(rng) for _ in range(30)]
    groups = near_duplicate_groups(family + others)
    assert len({groups[i] for i in range(5)}) == 1 and groups[0] == 0  # its first member
    assert len(set(groups[5:])) == 30 and groups[0] not in groups[5:]
    train, test = group_split(groups, 0.2, seed=1)
    side = {i: "test" for i in test} | {i: "train" for i in train}
    assert len({side[i] for i in range(5)}) == 1  # the family never straddles the split
    assert sorted(train + test) == list(range(35))


_SPLIT_IN_A_PROCESS = """
import hashlib
from tagllm.data.proteins import protein_splits
table, train, test = protein_splits()
print(hashlib.sha256("\\n".join(table["id"][i] for i in test).encode()).hexdigest())
"""


def test_the_split_is_the_same_in_every_process():
    # Python salts string hashes per process: a split that followed set-iteration order
    # put different proteins in the test set of each process (found when an evaluation in
    # a second process scored proteins the tags had trained on).
    def test_ids(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _SPLIT_IN_A_PROCESS], env=env,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    first = test_ids("1")
    assert len(first) == 64 and test_ids("2") == first == test_ids("3")


def test_real_split_has_no_near_duplicate_across_it():
    table, train, test = _protein_splits()
    assert not set(train) & set(test) and len(train) + len(test) == len(table)
    assert 0.09 < len(test) / len(table) < 0.11
    seqs = table["sequence"]
    groups = near_duplicate_groups(seqs)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    # the check that defines the groups, recomputed for every cross pair sharing a 5-mer
    test_kmers = {}
    for j in test:
        for i in range(len(seqs[j]) - 4):
            test_kmers.setdefault(seqs[j][i:i + 5], set()).add(j)
    for i in train:
        a = {seqs[i][k:k + 5] for k in range(len(seqs[i]) - 4)}
        hits: dict[int, int] = {}
        for km in a:
            for j in test_kmers.get(km, ()):
                hits[j] = hits.get(j, 0) + 1
        for j, c in hits.items():
            b = len({seqs[j][k:k + 5] for k in range(len(seqs[j]) - 4)})
            assert c < 0.1 * min(len(a), b), (table["id"][i], table["id"][j])


def test_descriptors_are_standardised_with_training_statistics():
    tr, _ = load_source("proteins:train", label="descriptors")
    te, _ = load_source("proteins:test", label="descriptors")
    y, yt = parse_labels(tr, list(DESCRIPTORS)), parse_labels(te, list(DESCRIPTORS))
    assert y.shape == (len(tr), len(DESCRIPTORS))
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-9)
    assert np.abs(yt.mean(0)).max() < 0.5  # same statistics, not the test set's own
    raw = descriptor_values(tr["sequence"][:1], ["isoelectric_point", "hydrophobicity"])
    assert 2 < raw[0, 0] < 13 and -4.5 < raw[0, 1] < 4.5
    one, _ = load_source("proteins:test", label=["isoelectric_point"], n=5)
    assert set(one.columns) == {"id", "sequence", "homology", "isoelectric_point"}


def test_unknown_descriptor_is_named():
    with pytest.raises(ValueError, match=r"proteins:train has no label\(s\) \['pI'\]; it "
                                         r"provides 'descriptors'"):
        load_source("proteins:train", label=["pI"])
    with pytest.raises(ValueError, match=r"unknown protein descriptor\(s\) \['x'\]"):
        descriptor_values(["MKV"], ["x"])
