"""Config dataclasses validate and name the bad field."""

from __future__ import annotations

import pytest

from tagllm.config import HeadConfig, TagConfig, TrainConfig, from_dict


def test_tag_name_must_look_like_a_tag():
    with pytest.raises(ValueError, match=r"TagConfig.name: 'SMILES' is not a tag name"):
        TagConfig("SMILES")


def test_unknown_head_kind_is_named():
    with pytest.raises(ValueError, match=r"HeadConfig.kind: unknown head kind 'ranking'"):
        HeadConfig("ranking")


def test_domain_tag_cannot_own_head():
    with pytest.raises(ValueError, match=r"TagConfig.head: only function tags own heads"):
        TagConfig("<X>", kind="domain", head=HeadConfig("regression"))


def test_classification_needs_two_classes():
    with pytest.raises(ValueError, match=r"HeadConfig.num_outputs"):
        HeadConfig("classification", num_outputs=1)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"TrainConfig.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"TrainConfig.lr"):
        TrainConfig(lr=-1.0)


def test_misspelt_key_is_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_token'\] for TagConfig"):
        from_dict(TagConfig, {"name": "<X>", "num_token": 3})


def test_head_from_dict_roundtrip():
    t = TagConfig.from_json({"name": "<Q>", "kind": "function",
                             "head": {"kind": "regression", "num_outputs": 2}})
    assert t.head == HeadConfig("regression", 2, "mse")
    assert TagConfig.from_json(t.to_dict()) == t


def test_store_key_fields_leave_out_defaults_and_non_result_settings():
    assert TrainConfig().result_dict() == {}
    cfg = TrainConfig(lr=5e-4, log_every=3, activation_checkpointing=True, checkpoint_every=7)
    assert cfg.result_dict() == {"lr": 5e-4}


def test_an_evaluation_says_what_it_scores_and_old_rows_are_read_by_what_they_hold():
    from tagllm.config import EvalConfig
    from tagllm.records import EvalResult
    from tagllm.report import method_rows

    assert EvalConfig(source="x.csv", label="y").kind == "head"
    assert EvalConfig(source="x.csv", reference="ref").kind == "generation"
    assert EvalConfig(source="x.csv").kind == "loss"
    old = [{"name": "a", "rows": 3, "tag": "<Q>", "metrics": {"mse": 1.0}},
           {"name": "b", "rows": 3, "metrics": {"bleu": 3.0, "chrf": 20.0}},
           {"name": "c", "rows": 3, "metrics": {"loss": 2.0}}]
    read = [EvalResult.from_json(r) for r in old]
    assert [r.kind for r in read] == ["head", "generation", "loss"]
    assert list(method_rows(read[1])) == ["tags (generation)"]
    assert list(method_rows(read[0])) == ["tags (<Q>)"]
