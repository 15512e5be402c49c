"""Typed records of what evaluation and training produce, and their JSON form.

An evaluation gives one :class:`EvalResult` (the tags' metrics and every other method's
:class:`MethodScore`); a stage of ``tagllm run`` one :class:`StageResult` (its training, its
cost account and its evaluations). They move between modules as these records and become
JSON only where they are written: a stored tag's provenance, ``results.json``, ``tagllm
evaluate --json_out``. The JSON layout is the one results files have always had, so rows
stored before these records read back; a results file declares its format
(``"format": "tagllm.run/2"``, ``"tagllm.eval/2"``), and a file without one is format 1,
the same layout without the ``kind`` of each evaluation (read by what the row holds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Literal, Union

from tagllm.errors import DataError

#: a JSON value and a JSON object, as :mod:`json` reads and writes them
JSONValue = Union[str, int, float, bool, None, list["JSONValue"], "JSONObject"]
JSONObject = dict[str, JSONValue]
Metrics = dict[str, "float | None"]  # metric name -> value (None: undefined, e.g. NaN)
Interval = dict[str, "list[float] | None"]  # metric name -> [low, high], 95%

RUN_FORMAT = "tagllm.run/2"
EVAL_FORMAT = "tagllm.eval/2"
Kind = Literal["head", "generation", "loss"]


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """A value of the wrong shape deep in a results file: one clear error naming where."""
    try:
        yield
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise DataError(f"{where}: not a results record this tagllm reads "
                        f"({type(e).__name__}: {e})") from None


def _metrics(value: JSONValue, where: str) -> Metrics:
    """Metric name -> number or None, checked."""
    if not isinstance(value, dict) or not all(
            isinstance(v, int | float | None) and not isinstance(v, bool)
            for v in value.values()):
        raise DataError(f"{where}: metrics are a JSON object of numbers (or null)")
    return value


def _interval(value: JSONValue, where: str) -> Interval | None:
    """Metric name -> [low, high] or None, checked."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            v is None or (isinstance(v, list) and len(v) == 2
                          and all(isinstance(x, int | float) for x in v))
            for v in value.values()):
        raise DataError(f"{where}: an interval is a JSON object of [low, high] pairs")
    return value


def _get(data: JSONObject, key: str, where: str, types: type | tuple[type, ...]
         ) -> JSONValue:
    if key not in data:
        raise DataError(f"{where}: no {key!r}")
    value = data[key]
    if not isinstance(value, types):
        raise DataError(f"{where}: {key!r} is {type(value).__name__}, not "
                        f"{getattr(types, '__name__', types)}")
    return value


@dataclass
class MethodCost:
    """What fitting and predicting with a baseline cost: its registry ``key``, ``seconds``,
    ``trainable_parameters`` (None: non-parametric) and what it chose while fitting
    (``details``: e.g. the penalty, the epoch kept)."""

    key: str
    seconds: float
    trainable_parameters: int | None = None
    details: JSONObject = field(default_factory=dict)

    def to_json(self) -> JSONObject:
        return {"key": self.key, "seconds": self.seconds,
                "trainable_parameters": self.trainable_parameters, **self.details}

    @classmethod
    def from_json(cls, data: JSONValue, where: str = "cost") -> MethodCost:
        if not isinstance(data, dict):
            raise DataError(f"{where}: a cost is a JSON object")
        rest = {k: v for k, v in data.items()
                if k not in ("key", "seconds", "trainable_parameters")}
        with _reading(where):
            return cls(str(data.get("key", "")), float(data.get("seconds") or 0.0),
                       data.get("trainable_parameters"), rest)


@dataclass
class MethodScore:
    """Another method's scores on an evaluation's rows (a baseline, or the tags before
    training): its ``metrics``, the paired bootstrap ``interval`` of the tags minus it
    (metric -> [low, high]) and its ``cost`` (None for the untrained-tag ablation, which
    runs the tags' own parameters)."""

    metrics: Metrics
    interval: Interval | None = None
    cost: MethodCost | None = None


@dataclass
class EvalResult:
    """One evaluation of tags on a data source (:func:`tagllm.scoring.evaluate`).

    ``kind``: ``head`` (a function tag's head scored by its metrics; ``tag``,
    ``predictions`` and ``targets`` set), ``generation`` (greedy outputs against references;
    ``outputs`` and three ``examples``) or ``loss`` (next-token loss). ``methods``: every
    other method by name, in the order they ran (the baselines, then the untrained-tag
    ablation, whose names start with ``ablation: ``)."""

    kind: Kind
    name: str
    rows: int
    metrics: Metrics
    tag: str | None = None
    methods: dict[str, MethodScore] = field(default_factory=dict)
    trainable_parameters: int | None = None
    predictions: list | None = None
    targets: list | None = None
    outputs: list[str] | None = None
    examples: list[dict[str, str]] | None = None
    command: str | None = None  # the command line that regenerates it (tagllm evaluate)

    @property
    def label(self) -> str:
        """The tags' name in a table of methods."""
        return {"head": f"tags ({self.tag})", "generation": "tags (generation)",
                "loss": "tags (validation loss)"}[self.kind]

    def add(self, name: str, metrics: Metrics, interval: Interval | None = None) -> None:
        """Another method's scores (kept after those already there)."""
        self.methods[name] = MethodScore(metrics, interval)

    def to_json(self) -> JSONObject:
        """The row as results files hold it: ``baselines`` (name -> metrics), ``intervals``
        (name -> metric -> [low, high]), ``costs`` (name -> cost); optional parts only when
        set."""
        out: JSONObject = {"kind": self.kind, "name": self.name, "rows": self.rows,
                           "metrics": dict(self.metrics)}
        for key in ("tag", "trainable_parameters", "predictions", "targets", "outputs",
                    "examples", "command"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.methods:
            out["baselines"] = {n: dict(s.metrics) for n, s in self.methods.items()}
            out["intervals"] = {n: dict(s.interval) for n, s in self.methods.items()
                                if s.interval is not None}
            costs = {n: s.cost.to_json() for n, s in self.methods.items() if s.cost}
            if costs:
                out["costs"] = costs
        return out

    @classmethod
    def from_json(cls, data: JSONValue, where: str = "evaluation") -> EvalResult:
        """A row as :meth:`to_json` writes it, or as results files of format 1 hold it (no
        ``kind``: a row with a ``tag`` is a head's, one with BLEU a generation's)."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: an evaluation row is a JSON object")
        metrics = _metrics(_get(data, "metrics", where, dict), where)
        kind = data.get("kind") or ("head" if data.get("tag") else "generation"
                                    if "bleu" in metrics else "loss")
        if kind not in ("head", "generation", "loss"):
            raise DataError(f"{where}: kind {kind!r} is not head, generation or loss")
        baselines = data.get("baselines") or {}
        intervals = data.get("intervals") or {}
        costs = data.get("costs") or {}
        if not all(isinstance(x, dict) for x in (baselines, intervals, costs)):
            raise DataError(f"{where}: baselines, intervals and costs are JSON objects")
        methods = {n: MethodScore(_metrics(m, f"{where} {n}"),
                                  _interval(intervals.get(n), f"{where} {n}"),
                                  MethodCost.from_json(costs[n], f"{where} {n}")
                                  if n in costs else None)
                   for n, m in baselines.items()}
        for key in ("predictions", "targets", "outputs", "examples"):
            if not isinstance(data.get(key), list | None):
                raise DataError(f"{where}: {key!r} is a list")
        with _reading(where):
            return cls(kind, str(_get(data, "name", where, str)),
                       int(_get(data, "rows", where, int)), metrics, data.get("tag"), methods,
                       data.get("trainable_parameters"), data.get("predictions"),
                       data.get("targets"), data.get("outputs"), data.get("examples"),
                       data.get("command"))


@dataclass
class PhaseCost:
    """One phase of a stage (training, evaluation, baselines …): wall ``seconds``, forward
    ``tokens`` and the process's peak resident memory by its end (GB, when measured)."""

    seconds: float
    tokens: int
    peak_gb: float | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"seconds": self.seconds, "tokens": self.tokens}
        if self.peak_gb is not None:
            out["peak_gb"] = self.peak_gb
        return out


@dataclass
class StageCosts:
    """A stage's cost account: each phase's cost, the forward tokens of the tags' own work
    (``forward_tokens``; the baselines' apart), those it could not avoid (``unavoidable``,
    by kind) and their ``ratio`` (None for a stage that generates)."""

    phases: dict[str, PhaseCost]
    forward_tokens: int
    baseline_tokens: int
    unavoidable: dict[str, int]
    ratio: float | None

    def to_json(self) -> JSONObject:
        return {"phases": {k: v.to_json() for k, v in self.phases.items()},
                "forward_tokens": self.forward_tokens, "baseline_tokens": self.baseline_tokens,
                "unavoidable": dict(self.unavoidable), "ratio": self.ratio}

    @classmethod
    def from_json(cls, data: JSONObject, where: str = "costs") -> StageCosts:
        with _reading(where):
            phases = {k: PhaseCost(float(v["seconds"]), int(v["tokens"]), v.get("peak_gb"))
                      for k, v in (data.get("phases") or {}).items()}
            return cls(phases, int(data.get("forward_tokens", 0)),
                       int(data.get("baseline_tokens", 0)),
                       {k: int(v) for k, v in (data.get("unavoidable") or {}).items()},
                       data.get("ratio"))


@dataclass
class StageResult:
    """One stage of ``tagllm run``: trained here (``cached`` False, with its ``costs``) or
    found in the tag store (``trained``: when), its training (``steps_run`` by this run,
    ``seconds``, ``final_loss``, the validation ``curve`` and the step it kept) and its
    evaluations. A dry run's stages hold only the plan (``reason``)."""

    stage: str
    cached: bool
    key: str
    steps_run: int = 0
    eval: list[EvalResult] = field(default_factory=list)
    seconds: float | None = None
    final_loss: float | None = None
    best_step: int | None = None
    kept_step: int | None = None
    #: validation points: {"step", "train_loss" (mean since the previous), "validation_loss"}
    curve: list[JSONObject] = field(default_factory=list)
    trained: str | None = None
    reason: str | None = None
    examples_per_process: list[int] | None = None
    resumed_from: int | None = None
    refit: JSONObject | None = None
    costs: StageCosts | None = None

    def to_json(self) -> JSONObject:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("eval", "costs")}
        out["eval"] = [e.to_json() for e in self.eval]
        if self.costs is not None:
            out["costs"] = self.costs.to_json()
        return out

    @classmethod
    def from_json(cls, data: JSONValue, where: str = "stage") -> StageResult:
        """A stage as :meth:`to_json` writes it (results written before ``kept_step`` was
        recorded keep the best step)."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: a stage is a JSON object")
        name = str(_get(data, "stage", where, str))
        evals = data.get("eval") or []
        if not isinstance(evals, list):
            raise DataError(f"{where}: 'eval' is not a list")
        curve = data.get("curve") or []
        if not (isinstance(curve, list) and all(isinstance(c, dict) for c in curve)):
            raise DataError(f"{where}: 'curve' is a list of JSON objects")
        known = {f.name for f in fields(cls)} - {"stage", "eval", "costs", "kept_step", "key",
                                                 "curve", "cached"}
        costs = data.get("costs")
        with _reading(where):
            return cls(stage=name, key=str(data.get("key") or ""), curve=curve,
                       cached=bool(data.get("cached", False)),
                       eval=[EvalResult.from_json(e, f"{where} {name} eval[{i}]")
                             for i, e in enumerate(evals)],
                       kept_step=data.get("kept_step", data.get("best_step")),
                       costs=StageCosts.from_json(costs, f"{where} {name} costs")
                       if isinstance(costs, dict) else None,
                       **{k: data[k] for k in known if k in data})


@dataclass
class RunResults:
    """A run's ``results.json``: the recipe, its model, every stage, the run's wall time
    and where its tags were exported."""

    recipe: str
    stages: list[StageResult]
    model: str | None = None
    recipe_file: str | None = None
    seconds: float | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> JSONObject:
        return {"format": RUN_FORMAT, "recipe": self.recipe, "recipe_file": self.recipe_file,
                "model": self.model, "stages": [s.to_json() for s in self.stages],
                "seconds": self.seconds, "tags": dict(self.tags)}

    @classmethod
    def from_json(cls, data: JSONObject, where: str = "results.json") -> RunResults:
        stages = _get(data, "stages", where, list)
        tags = data.get("tags") or {}
        if not isinstance(tags, dict):
            raise DataError(f"{where}: 'tags' is a JSON object (tag -> folder)")
        return cls(str(_get(data, "recipe", where, str)),
                   [StageResult.from_json(s, f"{where}: stages[{i}]")
                    for i, s in enumerate(stages)],
                   data.get("model"), data.get("recipe_file"),
                   data.get("seconds"), dict(tags))

