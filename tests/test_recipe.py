"""Recipe validation: every mistake fails before any model loads, naming where it is."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tagllm.protocol import RecipeError, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "r",
    "model": "unused",
    "tags": [{"name": "<A>"}, {"name": "<B>"},
             {"name": "<Q>", "kind": "function", "head": {"kind": "regression"}}],
    "stages": [
        {"name": "q", "tags": ["<Q>"],
         "data": [{"source": "x.csv", "template": "<A> {s} <B> {t} <Q>", "label": "y"}]},
        {"name": "a", "tags": ["<A>"], "data": [{"source": "x.csv", "template": "<A> {s}"}]},
        {"name": "b", "tags": ["<B>"], "data": [{"source": "x.csv", "template": "<B> {t}"}],
         "train": {"lr": 5e-4}},
    ],
}


def recipe(**changes):
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = d
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return d


DELETE = object()


def test_dependency_order_follows_templates_not_file_order():
    r = recipe_from_dict(recipe())
    order = [s.name for s in r.order()]
    assert order.index("q") > order.index("a") and order.index("q") > order.index("b")
    assert r.stages[0].uses() == ["<A>", "<B>"]
    assert r.stages[2].train.lr == 5e-4 and r.stages[2].train.seed == 0  # recipe seed


def test_recipe_train_defaults_apply_to_every_stage():
    r = recipe_from_dict({**recipe(), "seed": 7, "train": {"batch_size": 4}})
    assert {s.train.batch_size for s in r.stages} == {4}
    assert {s.train.seed for s in r.stages} == {7}


def test_shipped_qed_recipe_is_valid():
    r = load_recipe(ROOT / "recipes" / "qed.yaml")
    assert [s.name for s in r.order()] == ["smiles", "qed"]
    assert r.stages[1].eval[0].template == "<SMILES> {smiles} <QED>"


@pytest.mark.parametrize("changes, message", [
    ({"stages__1__tags": ["<Z>"]}, r"stage 'a' trains <Z>, which is not declared"),
    ({"stages__1": DELETE}, r"stage 'q' uses <A>, which no stage trains .*missing dependency"),
    ({"stages__1__data__0__template": "<A> {s} <Q>", "stages__1__data__0__label": "y",
      "stages__0__data__0__template": "<A> {s} <B> {t} <Q>", "stages__1__tags": ["<A>"]},
     r"label 'y' given but the template"),
    ({"stages__1__after": ["q"]}, r"cycle: .*a needs \['q'\]"),
    ({"tags__2__head": {"kind": "regresion"}}, r"tags\[2\] \(<Q>\)\.head: .*unknown head kind"),
    ({"stages__0__data__0__templat": "x"}, r"stages\[0\] \(q\)\.data\[0\]: unknown key\(s\) "
                                           r"\['templat'\]"),
    ({"stages__2__train": {"lr": 1e-3, "stesp": 3}}, r"stages\[2\] \(b\)\.train: unknown key"),
    ({"stages__2__train": {"steps": 0}}, r"stages\[2\] \(b\)\.train: .*steps"),
    ({"modle": "x"}, r"unknown top-level key\(s\) \['modle'\]"),
    ({"stages__0__data__0__label": None}, r"<Q> has a regression head: set label"),
    ({"stages__2__tags": ["<A>"]}, r"trains <A>, which stage 'a' trains already"),
    ({"stages__0__data__0": {"source": "x.csv"}}, r"missing required key\(s\) \['template'\]"),
    ({"stages__0__eval": [{"source": "t.csv", "label": "y", "baselines": ["svm"]}]},
     r"eval\[0\]: baselines: unknown \['svm'\]"),
    ({"tags__0__name": "SMILES"}, r"is not a tag name like <SMILES>"),
    ({"stages__1__name": "../../../x"}, r"stages\[1\].*'\.\./\.\./\.\./x' is not a valid name"),
    ({"stages__1__name": "a/b"}, r"it names a folder"),
    ({"stages__1__name": ".hidden"}, r"it names a folder"),
    ({"name": "../escape"}, r"name: '\.\./escape' is not a valid name"),
    ({"stages__0__data__0__label": ["y", "z"]},
     r"data\[0\]: label names 2 column\(s\) \['y', 'z'\] but <Q>'s regression head has "
     r"num_outputs 1"),
    ({"stages__0__data__0__label": []}, r"label: a column name or a non-empty list"),
    ({"tags__2__head": {"kind": "classification", "num_outputs": 2},
      "stages__0__data__0__label": ["y", "z"]},
     r"a classification head takes one label column of class indices"),
    ({"tags__2__head": {"kind": "regression", "pool": "auto"},
      "stages__0__train": {"validation": 0, "select": "last"}},
     r"stage 'q': <Q>'s readout is 'auto'.*validation > 0"),
    ({"tags__2__reparam_size": 32}, r"reparam_size: is the residual MLP's width"),
])
def test_bad_recipes_fail_naming_the_problem(changes, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(recipe(**changes), "r.yaml")


def test_a_cycle_between_two_stages_is_named(tmp_path):
    d = recipe()
    d["stages"][1]["data"][0]["template"] = "<A> {s} <B>"  # a uses <B>, b uses <A>
    d["stages"][2]["data"][0]["template"] = "<B> {t} <A>"
    with pytest.raises(RecipeError, match=r"cycle: a needs \['b'\]; b needs \['a'\]"):
        recipe_from_dict(d, "r.yaml")


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(p)
    p.write_text(yaml.safe_dump(recipe()))
    assert load_recipe(p).source == str(p)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_run_name_cannot_take_the_tracker_outside_its_folder(tmp_path):
    """Even a name that skipped the recipe's checks cannot make TensorBoard write outside
    out/tensorboard; a recipe file's name with spaces still gives a valid default name."""
    from tagllm.errors import ConfigError
    from tagllm.tracking import Tracker

    pytest.importorskip("tensorboard")
    with pytest.raises(ConfigError, match="not one folder name"):
        Tracker("tensorboard", tmp_path / "tb", "../../x")
    assert not (tmp_path.parent / "x").exists()
    d = recipe()
    d.pop("name")
    assert recipe_from_dict(d, str(tmp_path / "my QED run.yaml")).name == "my-QED-run"
