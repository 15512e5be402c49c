"""The tags that ship with tagllm: intact, packaged, found by short name wherever a tag folder
is accepted (after local paths), a mistyped name answered with the closest one, and each
the tag its recipe trains today (slow: the store key of the recipe's stage)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from tagllm.errors import TagFileError
from tagllm.hub import resolve_tag_dir, tag_folders
from tagllm.protocol.standalone import recorded_model, tag_dirs
from tagllm.serialization import read_tag
from tagllm.shipped import SHIPPED, SHIPPED_DIR

from tiny import saved_tiny_tags

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_tags_are_intact_and_packaged(name):
    """Every folder reads back verified (checksum, shapes, finite values), records the base
    model its entry names, and every file matches the package-data globs of pyproject.toml
    (so a wheel carries it)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["tagllm"]
    entry = SHIPPED[name]
    for d in entry.paths():
        meta, tensors = read_tag(d)
        assert meta["base_model"]["name"] == entry.model
        assert tensors  # the vectors are there
        for f in d.iterdir():
            rel = str(f.relative_to(SHIPPED_DIR.parent))
            assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
    assert recorded_model(entry.paths()) == entry.model


def test_short_names_resolve_case_blind_and_a_local_folder_wins(tmp_path, monkeypatch):
    assert tag_dirs("smiles") == SHIPPED["smiles"].paths()
    assert tag_dirs("SMILES,protein") == [*SHIPPED["smiles"].paths(),
                                          *SHIPPED["protein"].paths()]
    assert resolve_tag_dir("Protein") == SHIPPED["protein"].paths()[0]
    saved_tiny_tags(tmp_path, {})  # tmp_path/tags/{S,Q}
    (tmp_path / "tags").rename(tmp_path / "smiles")
    monkeypatch.chdir(tmp_path)
    assert tag_folders("smiles") == [Path("smiles/Q"), Path("smiles/S")]


def test_a_mistyped_short_name_names_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TagFileError, match="smils: no such tag folder.*did you mean 'smiles'"):
        tag_dirs("smils")
    with pytest.raises(TagFileError, match="shipped: " + ", ".join(SHIPPED)):
        tag_folders("qwerty")


@pytest.mark.slow
@pytest.mark.parametrize("name,recipe,stage", [("smiles", "qed", "smiles"),
                                               ("protein", "descriptor", "protein"),
                                               ("qed", "qed", "qed"),
                                               ("translate", "translate", "translate")])
def test_a_shipped_tag_is_what_its_recipe_trains_today(name, recipe, stage, tmp_path):
    """The recipe's stage, planned now on the real model and data, has the shipped tag's
    store key: the same data, settings, code-relevant config and base model. When this
    fails, retrain the stage and copy the new folder from the store."""
    from tagllm import TaggedModel
    from tagllm.protocol.plan import plan
    from tagllm.protocol.recipe import load_recipe
    from tagllm.store import TagStore

    r = load_recipe(ROOT / "recipes" / f"{recipe}.yaml")
    m = TaggedModel.from_pretrained(r.model, tags=[name])  # verified against the model
    plans = plan(r, TaggedModel.from_pretrained(r.model), TagStore(tmp_path), log=lambda s: 0,
                 progress=False)
    keys = next(p.tag_keys for p in plans if p.stage.name == stage)
    meta = next(meta for meta in (read_tag(d)[0] for d in SHIPPED[name].paths())
                if meta["name"] in keys)  # the folder of the tag the stage trains
    assert meta["provenance"]["key"] == keys[meta["name"]]
    assert meta["name"] in m.bank
