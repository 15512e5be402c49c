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
from typing import Any, Literal

from tagllm.config import HeadConfig, TagConfig, TrainConfig

TAG_IN_TEMPLATE = re.compile(r"<[A-Za-z][A-Za-z0-9_.\-]*>")
BASELINES = ("knn", "mean", "copy", "prompt")
TooLong = Literal["error", "skip"]


def _too_long(value: str) -> None:
    if value not in ("error", "skip"):
        raise ValueError(f"too_long: {value!r} is not 'error' or 'skip' (inputs are never "
                         "truncated silently)")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the key."""


def tags_in(template: str) -> list[str]:
    """Tag names written in a template, in order of appearance."""
    return TAG_IN_TEMPLATE.findall(template)


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


@dataclass(kw_only=True)
class RowsConfig:
    """Where the rows of a data or evaluation entry come from, and how they are checked."""

    source: str = field(metadata={"help": "CSV/TSV/.smi/FASTA file, or a built-in: "
                                          "moses:train|test|test_scaffolds, proteins:train|test, "
                                          "nci:train|test, bindingdb:SPLIT:FILE, "
                                          "drugcomb:SPLIT:FILE, bible:LANG[-LANG]:SPLIT, "
                                          "flores:SRC-TGT:SPLIT:DIR"})
    label: str | list[str] | None = field(default=None, metadata={
        "help": "target column(s) of the head: one, a list (multi-output regression), or a "
                "source's group name (proteins:*: descriptors)"})
    n: int | None = field(default=None, metadata={"help": "seeded random sample size"})
    seed: int | None = field(default=None, metadata={"help": "sample seed (recipe seed)"})
    skip_invalid: bool = field(default=False,
                               metadata={"help": "drop invalid rows (listed) instead of failing"})
    too_long: TooLong = field(default="error", metadata={
        "help": "inputs longer than the stage's max_length: error, or skip (counted, logged)"})
    context: int = field(default=0, metadata={
        "help": "in-context examples before each input: k labelled rows of the training "
                "data, each written as the template followed by its label"})

    def __post_init__(self) -> None:
        _too_long(self.too_long)
        if not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"context: must be an int >= 0, got {self.context!r}")
        if self.context and not self.label:
            raise ValueError("context: in-context examples need a label to show")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("source: must be a non-empty string")
        if self.label is not None and not (
                (isinstance(self.label, str) and self.label.strip()) or (
                isinstance(self.label, list) and self.label
                and all(isinstance(c, str) and c.strip() for c in self.label))):
            raise ValueError(f"label: a column name or a non-empty list of them, got "
                             f"{self.label!r}")
        if self.n is not None and (not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"n: must be a positive int, got {self.n!r}")


@dataclass(kw_only=True)
class DataConfig(RowsConfig):
    """One data stream of a stage: its rows and how each becomes an input."""

    template: str = field(metadata={"help": "input text per row, {column} placeholders"})
    weight: float = field(default=1.0,
                          metadata={"help": "share of each batch when a stage mixes parts"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.template, str) or "{" not in self.template:
            raise ValueError(f"template: {self.template!r} has no {{column}} placeholder")
        if not (isinstance(self.weight, int | float) and self.weight > 0):
            raise ValueError(f"weight: must be > 0, got {self.weight!r}")


@dataclass(kw_only=True)
class EvalConfig(RowsConfig):
    """A held-out evaluation after a stage: head metrics, or next-token loss without label."""

    template: str | None = field(default=None,
                                 metadata={"help": "default: the stage's data template"})
    baselines: list[str] = field(default_factory=list,
                                 metadata={"help": f"reference models: {list(BASELINES)}"})
    ablation: bool = field(default=False, metadata={
        "help": "also evaluate the untrained function tag: with its closed-form head, or "
                "generating (reference)"})
    name: str | None = field(default=None, metadata={"help": "row label in the results"})
    reference: str | None = field(default=None, metadata={
        "help": "column of reference texts: generate greedily from the template and score "
                "with BLEU and chrF (translation)"})
    source_column: str = field(default="source", metadata={
        "help": "the column the copy-the-source baseline copies"})
    prompt: str | None = field(default=None, metadata={
        "help": "plain-text prompt template without tags for the prompt baseline, e.g. "
                "\"{src}: {source}\\n{tgt}:\""})
    max_new_tokens: int = field(default=128, metadata={"help": "generation length limit"})
    spm_model: str | None = field(default=None, metadata={
        "help": "local SentencePiece model file: also report spBLEU"})

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines: unknown {bad}; known: {list(BASELINES)}")
        text = [b for b in self.baselines if b in ("copy", "prompt")]
        if self.reference and self.label:
            raise ValueError("give label (a head's target) or reference (generated text), "
                             "not both")
        if text and not self.reference:
            raise ValueError(f"baselines {text} need reference (a generation evaluation)")
        if self.baselines and not text and not self.label:
            raise ValueError("baselines need a label")
        if self.reference and [b for b in self.baselines if b in ("knn", "mean")]:
            raise ValueError("baselines knn and mean need a label, not a reference")
        if "prompt" in self.baselines and not self.prompt:
            raise ValueError("the prompt baseline needs prompt: a plain-text template")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")


@dataclass
class StageConfig:
    """One training job: the tags it trains (jointly when several), their data, settings."""

    name: str = field(metadata={"help": "stage name, unique in the recipe"})
    tags: list[str] = field(metadata={"help": "tags trained here (all others frozen)"})
    data: list[DataConfig] = field(metadata={"help": "training data; several are mixed"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: list[EvalConfig] = field(default_factory=list)
    after: list[str] = field(default_factory=list,
                             metadata={"help": "stages to run first besides those implied "
                                               "by the templates"})

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
    data.setdefault("name", Path(source).stem if source != "<memory>" else "recipe")
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
    declared = r.tag
    all_trained = {t for st in r.stages for t in st.tags}
    trained_by: dict[str, str] = {}
    for s in r.stages:
        where = f"{src}: stage {s.name!r}"
        if not s.tags:
            raise RecipeError(f"{where}: tags is empty; name the tags this stage trains")
        if not s.data:
            raise RecipeError(f"{where}: data is empty")
        for t in s.tags:
            if t not in declared:
                raise RecipeError(f"{where} trains {t}, which is not declared under tags "
                                  f"(declared: {names})")
            if t in r.pretrained:
                raise RecipeError(f"{where} trains {t}, which is also given under pretrained")
            if t in trained_by:
                raise RecipeError(f"{where} trains {t}, which stage {trained_by[t]!r} trains "
                                  "already; a tag is trained by one stage")
            trained_by[t] = s.name
    for s in r.stages:
        where = f"{src}: stage {s.name!r}"
        for t in s.uses():
            if t not in all_trained and t not in r.pretrained:
                raise RecipeError(f"{where} uses {t}, which no stage trains and no pretrained "
                                  f"entry provides (missing dependency); trained tags: "
                                  f"{sorted(all_trained)}")
        for a in s.after:
            if a not in snames:
                raise RecipeError(f"{where}: after names unknown stage {a!r}")
        heads = [t for t in s.tags if declared[t].head is not None
                 and declared[t].head.kind != "lm"]
        for j, d in enumerate(s.data):
            in_tpl = [t for t in tags_in(d.template) if t in heads]
            if d.label and not in_tpl:
                raise RecipeError(f"{where}.data[{j}]: label {d.label!r} given but the template "
                                  f"{d.template!r} has no tag with a head trained here")
            if in_tpl and not d.label:
                raise RecipeError(f"{where}.data[{j}]: {in_tpl[0]} has a "
                                  f"{declared[in_tpl[0]].head.kind} head: set label")
            if in_tpl:
                _check_outputs(declared[in_tpl[-1]], d, f"{where}.data[{j}]")
        fed = {t for d in s.data for t in tags_in(d.template)}
        for t in s.tags:
            if t not in fed:
                raise RecipeError(f"{where} trains {t}, but no data template contains it")
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
                _check_outputs(declared[tag], e, f"{where}.eval[{j}]")
    for t in names:
        if t not in trained_by and t not in r.pretrained:
            raise RecipeError(f"{src}: tag {t} is declared but no stage trains it")
    r.order()


def _check_outputs(tag: TagConfig, rows: RowsConfig, where: str) -> None:
    """A regression head has one output per label column; a classification head one
    label column of class indices."""
    from tagllm.sources import label_columns

    cols = label_columns(rows.source, rows.label)
    head = tag.head
    if head.kind == "regression" and len(cols) != head.num_outputs:
        raise RecipeError(f"{where}: label names {len(cols)} column(s) {cols} but {tag.name}'s "
                          f"regression head has num_outputs {head.num_outputs}")
    if head.kind == "classification" and len(cols) != 1:
        raise RecipeError(f"{where}: a classification head takes one label column of class "
                          f"indices, got {cols}")


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
