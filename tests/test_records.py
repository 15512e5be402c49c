"""The typed records results move in: their JSON form round-trips, results files declare
their format, and files written before the records (format 1) still read."""

from __future__ import annotations

import json

import pytest

from tagllm.errors import DataError
from tagllm.fileio import json_text
from tagllm.records import (
    EVAL_FORMAT,
    RUN_FORMAT,
    EvalResult,
    MethodCost,
    MethodScore,
    PhaseCost,
    RunResults,
    StageCosts,
    StageResult,
)


def head_result() -> EvalResult:
    return EvalResult(
        "head", "test.csv", 3, {"mse": 0.5, "pearson": None}, "<Q>",
        {"training mean": MethodScore({"mse": 0.9, "pearson": None},
                                      {"mse": [-0.6, -0.1], "pearson": None},
                                      MethodCost("mean", 0.01, 1)),
         "Morgan random forest (200 trees)": MethodScore(
             {"mse": 0.4, "pearson": 0.7}, {"mse": [-0.1, 0.3], "pearson": [-0.2, 0.1]},
             MethodCost("rf", 1.5, None, {"chosen": {"max_features": 0.3}})),
         "ablation: <Q> untrained, head fitted": MethodScore(
             {"mse": 0.55, "pearson": 0.6}, {"mse": [-0.1, 0.0], "pearson": [0.0, 0.1]})},
        trainable_parameters=6337, predictions=[0.1, 0.2, 0.3], targets=[0.0, 0.2, 0.5])


def generation_result() -> EvalResult:
    return EvalResult("generation", "flores", 2, {"bleu": 10.0, "chrf": 30.0},
                      methods={"copy the source": MethodScore(
                          {"bleu": 1.0, "chrf": 9.0}, {"bleu": [2.0, 15.0], "chrf": [5, 30]},
                          MethodCost("copy", 0.0))},
                      trainable_parameters=5760, outputs=["a", "b"],
                      examples=[{"input": "x", "output": "a", "reference": "y"}])


def stage_result() -> StageResult:
    costs = StageCosts({"stage q/training": PhaseCost(1.5, 300, 0.8),
                        "stage q": PhaseCost(0.1, 0)}, 300, 12, {"steps": 280}, 1.071)
    return StageResult("q", False, "abc123", 6, [head_result(), generation_result(),
                                                 EvalResult("loss", "v", 4, {"loss": 2.0})],
                       1.9, 0.25, 4, 6, [{"step": 0, "train_loss": None,
                                          "validation_loss": 0.5}],
                       examples_per_process=[24], resumed_from=0, costs=costs)


@pytest.mark.parametrize("make", [head_result, generation_result])
def test_an_evaluation_round_trips_through_json(make):
    r = make()
    data = json.loads(json_text(r.to_json()))  # what a results file holds
    assert EvalResult.from_json(data) == r
    assert data["kind"] == r.kind
    # the layout results files have always had: baselines, intervals, costs by name
    assert set(data["baselines"]) == set(data["intervals"]) == set(r.methods)
    assert set(data["costs"]) == {n for n, s in r.methods.items() if s.cost}


def test_a_stage_and_a_run_round_trip_and_the_run_declares_its_format():
    s = stage_result()
    assert StageResult.from_json(json.loads(json_text(s.to_json()))) == s
    run = RunResults("qed", [s, StageResult("smiles", True, "k2", trained="2026-12-01")],
                     "smollm2", "recipes/qed.yaml", 12.5, {"<Q>": "runs/qed/tags/Q"})
    data = json.loads(json_text(run.to_json()))
    assert data["format"] == RUN_FORMAT
    assert RunResults.from_json(data) == run


def test_format_1_rows_read_by_what_they_hold():
    old_stage = {"stage": "q", "cached": False, "key": "k", "steps_run": 3, "best_step": 2,
                 "eval": [{"name": "a", "rows": 2, "tag": "<Q>", "metrics": {"mse": 1.0},
                           "baselines": {"m": {"mse": 2.0}}}]}
    s = StageResult.from_json(old_stage)
    assert s.kept_step == 2  # written before kept_step: the best step was kept
    ev = s.eval[0]
    assert ev.kind == "head" and ev.methods == {"m": MethodScore({"mse": 2.0})}


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "evaluation: an evaluation row is a JSON object"),
    ({"name": "a", "rows": 2}, "evaluation: no 'metrics'"),
    ({"name": "a", "rows": "2", "metrics": {}}, "'rows' is str, not int"),
    ({"name": "a", "rows": 2, "metrics": {}, "kind": "vibes"}, "kind 'vibes' is not head"),
    ({"name": "a", "rows": 2, "metrics": {}, "baselines": [1]}, "are JSON objects"),
    ({"name": "a", "rows": 2, "metrics": {}, "baselines": {"m": [1]}}, "metrics are a JSON"),
    ({"name": "a", "rows": 2, "metrics": {"mse": "x"}}, "metrics are a JSON"),
    ({"name": "a", "rows": 2, "metrics": {}, "baselines": {"m": {}},
      "intervals": {"m": "x"}}, "an interval is"),
    ({"name": "a", "rows": 2, "metrics": {}, "baselines": {"m": {}}, "costs": {"m": [1]}},
     "a cost is a JSON object"),
    ({"name": "a", "rows": 2, "metrics": {}, "baselines": {"m": {}},
      "costs": {"m": {"seconds": "x"}}}, "not a results record"),
    ({"name": "a", "rows": 2, "metrics": {}, "predictions": 3}, "'predictions' is a list"),
])
def test_a_damaged_row_is_a_clear_error(bad, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        EvalResult.from_json(bad)


@pytest.mark.parametrize("stage, message", [
    ({"stage": "q", "cached": False, "curve": "abc"}, "'curve' is a list"),
    ({"stage": "q", "cached": False, "costs": {"phases": {"p": {"tokens": 1}}}},
     "not a results record"),
    ({"stage": 3, "cached": False}, "'stage' is int, not str"),
])
def test_a_damaged_stage_is_a_clear_error(stage, message):
    with pytest.raises(DataError, match=message):
        StageResult.from_json(stage)
    with pytest.raises(DataError, match="'tags' is a JSON object"):
        RunResults.from_json({"recipe": "r", "stages": [], "tags": [1, 2]})


def test_a_damaged_stored_evaluation_is_measured_again(tmp_path):
    from tagllm.store import TagStore

    store = TagStore(tmp_path)
    store.write_evals("k", [head_result()])
    assert store.read_evals("k") == [head_result()]
    for damage in ('[{"name": "a", "rows": 2, "metrics": {}, "baselines": {"m": {}}, '
                   '"costs": {"m": [1]}}]', '{"a": 1}', "[1]", "{"):
        (tmp_path / ".evals" / "k.json").write_text(damage)
        assert store.read_evals("k") is None, damage


def test_the_report_reads_files_by_their_declared_format(tmp_path):
    from tagllm.publish import load

    run = tmp_path / "results.json"
    run.write_text(json_text(RunResults("qed", [stage_result()]).to_json()))
    kind, doc = load(run)
    assert kind == "run" and isinstance(doc, RunResults) and doc.stages == [stage_result()]
    ev = tmp_path / "ev.json"
    ev.write_text(json_text({"format": EVAL_FORMAT, **head_result().to_json()}))
    kind, doc = load(ev)
    assert kind == "eval" and doc == head_result()
    legacy = {k: v for k, v in head_result().to_json().items() if k != "kind"}
    ev.write_text(json_text(legacy))  # format 1: no format, no kind
    assert load(ev) == ("eval", head_result())
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps({"format": "tagllm.run/3", "recipe": "x", "stages": []}))
    with pytest.raises(DataError, match="format 'tagllm.run/3' is not one this tagllm reads"):
        load(newer)
