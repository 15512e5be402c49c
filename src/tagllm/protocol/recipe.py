"""Recipes: the whole protocol of one experiment as a YAML file, validated into dataclasses.

A recipe declares the base model, the tags, and the stages that train them::

    name: qed
    model: smollm2
    tags:
      - {name: <SMILES>, kind: domain, num_tokens: 10}
      - {name: <QED>, kind: function, head: {kind: regression}}
    stages:
      - name: smiles
        tags: [<SMILES>]
        data: [{source: moses:train, n: 2000, template: "<SMILES> {smiles}"}]
        train: {steps: 40, batch_size: 16}
      - name: qed
        tags: [<QED>]
        data: [{source: moses:train, n: 4000, template: "<SMILES> {smiles} <QED>",
                label: qed}]
        eval: [{source: moses:test, n: 1000, label: qed, baselines: [knn, mean]}]

A stage depends on the stages that train the tags its templates use (``qed`` uses
``<SMILES>``, so it runs after ``smiles`` with ``<SMILES>`` frozen). Every problem — an
unknown or misspelt key, an unknown head kind, a tag that no stage trains, a cycle — is
found here, before any model is loaded, and the message names where it is.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from tagllm.config import (
    TAG_RE,
    DataConfig,
    EvalConfig,
    HeadConfig,
    RowsConfig,
    TagConfig,
    TrainConfig,
)
from tagllm.errors import RecipeError
from tagllm.heads import head_class
from tagllm.sources import label_columns

#: recipe and stage names become folder names (runs/NAME, out/tensorboard/STAGE): one path
#: component, never "..", a separator or a hidden name
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def check_folder_name(what: str, name: object) -> None:
    """ValueError unless ``name`` is a non-empty string that is safe as one folder name."""
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name):
        raise ValueError(f"{what}: {name!r} is not a valid name; it names a folder, so use "
                         "letters, digits, '_', '.' and '-' (starting with a letter or digit, "
                         "at most 100)")


def tags_in(template: str) -> list[str]:
    """Tag names written in a template, in order of appearance."""
    return TAG_RE.findall(template)


def build(cls: type, data: Any, where: str) -> Any:
    """Dataclass ``cls`` from a mapping; unknown or missing keys and invalid values fail
    with ``where`` (e.g. ``stages[1].data[0]``) in the message."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of keys for {cls.__name__}, got "
                          f"{type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    missing = [n for n, f in known.items() if f.default is MISSING
               and f.default_factory is MISSING and n not in data]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {missing}")
    try:
        return cls(**data)
    except RecipeError:
        raise
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


@dataclass
class StageConfig:
    """One training job: the tags it trains (jointly when several), their data, settings."""

    name: str = field(metadata={"help": "stage name, unique in the recipe; letters, digits, "
                                        "_ . - (it names a folder)"})
    tags: list[str] = field(metadata={"help": "tags trained here (all others frozen)"})
    data: list[DataConfig] = field(metadata={"help": "training data; several are mixed"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: list[EvalConfig] = field(default_factory=list)
    after: list[str] = field(default_factory=list,
                             metadata={"help": "stages to run first besides those implied "
                                               "by the templates"})

    def __post_init__(self) -> None:
        check_folder_name("name", self.name)
        for key in ("tags", "after"):
            bad = [x for x in getattr(self, key) if not isinstance(x, str)]
            if bad:
                raise ValueError(f"{key}: expected names (strings), got {bad[0]!r}")

    def uses(self) -> list[str]:
        """Tags in this stage's templates that it does not train: its dependencies."""
        out: list[str] = []
        for t in [d.template for d in self.data] + [e.template or "" for e in self.eval]:
            out += [x for x in tags_in(t) if x not in self.tags and x not in out]
        return out


@dataclass
class Recipe:
    """A whole experiment: base model, tags, stages (and where results go)."""

    name: str
    tags: list[TagConfig]
    stages: list[StageConfig]
    model: str = "smollm2"
    seed: int = 0
    out: str = ""
    pretrained: dict[str, str] = field(default_factory=dict)
    exclude_eval_molecules: bool = True
    source: str = "<memory>"

    def __post_init__(self) -> None:
        for key, typ in (("name", str), ("model", str), ("out", str), ("seed", int),
                         ("exclude_eval_molecules", bool)):
            value = getattr(self, key)
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"{key}: expected a {typ.__name__}, got {value!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        check_folder_name("name", self.name)
        if not isinstance(self.pretrained, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.pretrained.items()):
            raise ValueError(f"pretrained: expected a mapping of tag names to tag folders, "
                              f"got {self.pretrained!r}")

    @property
    def tag(self) -> dict[str, TagConfig]:
        return {t.name: t for t in self.tags}

    def trainer(self) -> dict[str, StageConfig]:
        """Which stage trains each tag."""
        return {t: s for s in self.stages for t in s.tags}

    def order(self) -> list[StageConfig]:
        """Stages in dependency order (Kahn's algorithm; ties keep the file's order)."""
        by_name = {s.name: s for s in self.stages}
        trainer = self.trainer()
        deps = {s.name: {trainer[t].name for t in s.uses() if t in trainer} | set(s.after)
                for s in self.stages}
        done: list[str] = []
        while len(done) < len(self.stages):
            ready = [s.name for s in self.stages
                     if s.name not in done and deps[s.name] <= set(done)]
            if not ready:
                left = [n for n in by_name if n not in done]
                cyc = [n for n in left if _reaches(deps, n, n)]
                raise RecipeError(f"{self.source}: the stages {cyc} depend on each other in a "
                                  "cycle: " + "; ".join(f"{n} needs {sorted(deps[n])}"
                                                        for n in cyc))
            done.append(ready[0])
        return [by_name[n] for n in done]


def _reaches(deps: dict[str, set[str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` by one or more dependency edges."""
    seen: set[str] = set()
    todo = list(deps[start])
    while todo:
        n = todo.pop()
        if n == goal:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(deps.get(n, ()))
    return False


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def recipe_from_dict(data: Any, source: str = "<memory>") -> Recipe:
    """Validate a parsed recipe. Raises :class:`RecipeError` naming the bad key."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, model, tags, stages")
    data = dict(data)
    known = {f.name for f in fields(Recipe)} - {"source"} | {"train"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"{source}: unknown top-level key(s) {unknown}; known keys: "
                          f"{sorted(known)}")
    seed = data.get("seed", 0)
    defaults = data.pop("train", None) or {}
    if not isinstance(defaults, dict):
        raise RecipeError(f"{source}: train: expected a mapping of training settings")
    tags = []
    for i, t in enumerate(_list(data.get("tags"), f"{source}: tags")):
        where = f"{source}: tags[{i}]" + (f" ({t.get('name')})" if isinstance(t, dict) else "")
        if isinstance(t, dict) and isinstance(t.get("head"), dict):
            t = {**t, "head": build(HeadConfig, t["head"], f"{where}.head")}
        tags.append(build(TagConfig, t, where))
    stages = []
    for i, s in enumerate(_list(data.get("stages"), f"{source}: stages")):
        where = f"{source}: stages[{i}]" + (f" ({s.get('name')})" if isinstance(s, dict) else "")
        if not isinstance(s, dict):
            raise RecipeError(f"{where}: expected a mapping")
        s = dict(s)
        s["data"] = [build(DataConfig, d, f"{where}.data[{j}]")
                     for j, d in enumerate(_list(s.get("data"), f"{where}.data"))]
        s["eval"] = [build(EvalConfig, e, f"{where}.eval[{j}]")
                     for j, e in enumerate(_list(s.get("eval"), f"{where}.eval"))]
        train = s.get("train") or {}
        if not isinstance(train, dict):
            raise RecipeError(f"{where}.train: expected a mapping")
        s["train"] = build(TrainConfig, {"seed": seed, **defaults, **train}, f"{where}.train")
        s["tags"] = _list(s.get("tags"), f"{where}.tags")
        s["after"] = _list(s.get("after"), f"{where}.after")
        stages.append(build(StageConfig, s, where))
    data["tags"], data["stages"] = tags, stages
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(source).stem).strip(".-_")[:100]
    data.setdefault("name", stem if source != "<memory>" and stem else "recipe")
    recipe = build(Recipe, {**data, "source": source}, source)
    if not recipe.out:
        recipe.out = f"runs/{recipe.name}"
    check(recipe)
    return recipe


def check(r: Recipe) -> None:
    """Cross-entry rules: names unique, every used tag trained once or pretrained, heads fed
    labels, no cycle."""
    src = r.source
    if not r.stages:
        raise RecipeError(f"{src}: no stages")
    names = [t.name for t in r.tags]
    for n in {n for n in names if names.count(n) > 1}:
        raise RecipeError(f"{src}: tag {n} is declared twice")
    snames = [s.name for s in r.stages]
    for n in {n for n in snames if snames.count(n) > 1}:
        raise RecipeError(f"{src}: stage name {n!r} is used twice")
    trained_by = _trainers(r)
    for s in r.stages:
        _check_stage(r, s, set(trained_by), snames)
    for t in names:
        if t not in trained_by and t not in r.pretrained:
            raise RecipeError(f"{src}: tag {t} is declared but no stage trains it")
    r.order()


def _trainers(r: Recipe) -> dict[str, str]:
    """The stage that trains each tag; a stage trains declared tags, each only once."""
    trained_by: dict[str, str] = {}
    for s in r.stages:
        where = f"{r.source}: stage {s.name!r}"
        if not s.tags:
            raise RecipeError(f"{where}: tags is empty; name the tags this stage trains")
        if not s.data:
            raise RecipeError(f"{where}: data is empty")
        for t in s.tags:
            if t not in r.tag:
                raise RecipeError(f"{where} trains {t}, which is not declared under tags "
                                  f"(declared: {[x.name for x in r.tags]})")
            if t in r.pretrained:
                raise RecipeError(f"{where} trains {t}, which is also given under pretrained")
            if t in trained_by:
                raise RecipeError(f"{where} trains {t}, which stage {trained_by[t]!r} trains "
                                  "already; a tag is trained by one stage")
            trained_by[t] = s.name
    return trained_by


def _check_stage(r: Recipe, s: StageConfig, all_trained: set[str], snames: list[str]) -> None:
    """A stage's dependencies exist, its labelled entries feed the heads it trains, and
    every tag it trains gets data."""
    where = f"{r.source}: stage {s.name!r}"
    for t in s.uses():
        if t not in all_trained and t not in r.pretrained:
            raise RecipeError(f"{where} uses {t}, which no stage trains and no pretrained "
                              f"entry provides (missing dependency); trained tags: "
                              f"{sorted(all_trained)}")
    for a in s.after:
        if a not in snames:
            raise RecipeError(f"{where}: after names unknown stage {a!r}")
    heads = [t for t in s.tags if r.tag[t].head is not None and r.tag[t].head.supervised]
    for j, d in enumerate(s.data):
        in_tpl = [t for t in tags_in(d.template) if t in heads]
        if d.label and not in_tpl:
            raise RecipeError(f"{where}.data[{j}]: label {d.label!r} given but the template "
                              f"{d.template!r} has no tag with a head trained here")
        if in_tpl and not d.label:
            raise RecipeError(f"{where}.data[{j}]: {in_tpl[0]} has a "
                              f"{r.tag[in_tpl[0]].head.kind} head: set label")
        if in_tpl:
            _check_outputs(r.tag[in_tpl[-1]], d, f"{where}.data[{j}]")
    fed = {t for d in s.data for t in tags_in(d.template)}
    for t in s.tags:
        if t not in fed:
            raise RecipeError(f"{where} trains {t}, but no data template contains it")
        if t in heads and r.tag[t].head.auto and not (s.train.validation > 0
                                                      and s.train.warm_start_head):
            raise RecipeError(f"{where}: {t}'s readout is 'auto', chosen on validation rows "
                              "with closed-form fits: set train.validation > 0 and keep "
                              "warm_start_head")
    _check_evals(r, s, heads, where)


def _check_evals(r: Recipe, s: StageConfig, heads: list[str], where: str) -> None:
    """Each evaluation has a template (the stage's one by default), and a label only with
    a head this stage trains, fitting its outputs."""
    for j, e in enumerate(s.eval):
        if e.template is None:
            if len(s.data) != 1:
                raise RecipeError(f"{where}.eval[{j}]: set template (the stage has "
                                  "several data entries)")
            e.template = s.data[0].template
        if e.label and not any(t in heads for t in tags_in(e.template)):
            raise RecipeError(f"{where}.eval[{j}]: a label needs a template with a tag "
                              "whose head this stage trains")
        if e.label:
            tag = [t for t in tags_in(e.template) if t in heads][-1]
            _check_outputs(r.tag[tag], e, f"{where}.eval[{j}]")


def _check_outputs(tag: TagConfig, rows: RowsConfig, where: str) -> None:
    """The label columns fit the head (its kind says how: one per regression output, one
    column of class indices for classification)."""
    cols = label_columns(rows.source, rows.label)
    problem = head_class(tag.head.kind).label_columns_error(tag.head.num_outputs, cols,
                                                            tag.name)
    if problem:
        raise RecipeError(f"{where}: {problem}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({e})") from e
    return recipe_from_dict(data, str(p))
