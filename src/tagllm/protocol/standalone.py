"""The protocol's parts on their own: one stage from flags (``tagllm train``) and saved tags
evaluated on a data source (``tagllm evaluate``).

``train_one`` is a one-stage recipe run through :func:`~tagllm.protocol.run.run`, so it has
the tag store (a second identical call trains nothing), checkpoints and resume, and the
same validation as every recipe. ``evaluate_saved`` reads and checks every tag file and
every source before it loads a model, then evaluates through the same runner as
``tagllm run``, with the same baselines under the same names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagllm.backbones import DEFAULT_MODEL, load_tokenizer
from tagllm.config import DataConfig, EvalConfig, HeadConfig, TagConfig, TrainConfig
from tagllm.data import check_number, read_table
from tagllm.errors import ConfigError, TagllmError, UnknownTagError, did_you_mean
from tagllm.evaluation.baselines import baseline_keys
from tagllm.hub import tag_folders
from tagllm.model import TaggedModel
from tagllm.protocol.inputs import HeldOut, length_limit, read_rows, report_skipped
from tagllm.protocol.recipe import Recipe, StageConfig, check, tags_in
from tagllm.protocol.run import run
from tagllm.records import EvalResult, JSONObject, StageResult
from tagllm.scoring import evaluate
from tagllm.serialization import META, read_tag, values_digest
from tagllm.shipped import SHIPPED
from tagllm.store import TagStore, tag_key
from tagllm.tags import counting_tokenizer

Log = Callable[[str], None]


def tag_dirs(spec: str | Sequence[str | Path] | None) -> list[Path]:
    """Tag folders from comma-separated paths; a folder of tag folders stands for all of
    them, and a Hub repository id (``ORG/NAME``) for the tags it holds."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec or [])
    return [d for part in parts if str(part).strip() for d in tag_folders(str(part).strip())]


def with_trained_with(dirs: Sequence[Path], note: Log | None = None) -> list[Path]:
    """``dirs`` and, before them, the tags they were trained with that are not among them,
    found by their values among the shipped tags and in the tag store (a tag file records
    the digest of every tag it was trained beside). So ``--tags tags/LogS`` also loads the
    shipped ``<SMILES>`` that ``<LogS>`` was trained on. A tag not found is left for the
    template check to name; one found is reported through ``note``."""
    out = list(dirs)
    metas = [read_tag(d)[0] for d in out]
    have = {m["name"] for m in metas}
    pending = [(n, dig, m["name"]) for m in metas
               for n, dig in (m.get("trained_with") or {}).items() if n not in have]
    while pending:
        name, digest, user = pending.pop(0)
        if name in have:
            continue
        have.add(name)
        found = _find_tag(name, digest)
        if found is None:
            if note is not None:
                note(f"{user} was trained with a {name} (digest {digest}) that is neither "
                     f"given, shipped nor in the tag store {TagStore().root}: add its tag "
                     "folder to --tags")
            continue
        out.insert(0, found)  # a domain tag before the function tags that read it
        if note is not None:
            note(f"{name}: {found}, the one {user} was trained with")
        meta = read_tag(found)[0]
        pending += [(n, dig, name) for n, dig in (meta.get("trained_with") or {}).items()]
    return out


def _tag_candidates() -> Iterator[Path]:
    """The shipped tag folders (each once: short names share folders), then the tag
    store's."""
    yield from dict.fromkeys(p for entry in SHIPPED.values() for p in entry.paths())
    root = TagStore().root
    if root.is_dir():
        yield from sorted(p for p in root.iterdir() if (p / META).is_file())


def _find_tag(name: str, digest: str) -> Path | None:
    """The first candidate folder holding tag ``name`` with these values."""
    for d in _tag_candidates():
        try:
            meta = json.loads((d / META).read_text())
            if not isinstance(meta, dict) or meta.get("name") != name:
                continue
            if values_digest(read_tag(d)[1]) == digest:
                return d
        except (OSError, ValueError, KeyError, TagllmError):
            continue  # a damaged store entry is not a candidate
    return None


def recorded_template(dirs: Sequence[Path], tag: str | None = None) -> str | None:
    """The template the function tag among ``dirs`` (``tag``, else the only one with a
    regression or classification head) was trained on, as its tag file records it; None
    when there is no such tag, several, no single recorded template, or one trained with
    in-context examples (which a template alone does not reproduce)."""
    metas = [m for m in (read_tag(d)[0] for d in dirs)
             if (m["config"].get("head") or {}).get("kind") in ("regression", "classification")
             and (tag is None or m["name"] == tag)]
    if len(metas) != 1:
        return None
    stage = (metas[0].get("provenance") or {}).get("stage")
    parts = stage.get("data") if isinstance(stage, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts) or any(
            p.get("context") for p in parts):  # in-context examples: more than a template
        return None
    templates = {p.get("template") for p in parts} - {None}
    template = templates.pop() if len(templates) == 1 else None
    return template if isinstance(template, str) else None


def read_tag_configs(dirs: Sequence[Path]) -> dict[str, TagConfig]:
    """Each tag folder's config by tag name, its files verified (no model needed)."""
    out = {}
    for d in dirs:
        meta, _ = read_tag(d)
        out[meta["name"]] = TagConfig.from_json(meta["config"])
    return out


def recorded_model(dirs: Sequence[Path], given: str | None = None) -> str:
    """The base model to load for the tags in ``dirs``: ``given`` if set, else the one
    their tag files record (they must agree), else the default model when there are no
    tags. Their files are verified; loading then checks the model's fingerprint."""
    if given:
        return given
    names = {}
    for d in dirs:
        meta, _ = read_tag(d)
        names.setdefault(str(meta.get("base_model", {}).get("name") or ""), []).append(d.name)
    if not names:
        return DEFAULT_MODEL
    if "" in names or len(names) > 1:
        raise ConfigError("the tag files do not agree on one base model ("
                          + "; ".join(f"{n or 'none recorded'}: {', '.join(t)}"
                                      for n, t in names.items()) + "): pass --model")
    return next(iter(names))


def single_stage_recipe(tag: TagConfig, data: DataConfig, train: TrainConfig, model: str,
                        load: Sequence[Path] = (), evals: Sequence[EvalConfig] = ()) -> Recipe:
    """The recipe of one stage that trains ``tag`` on ``data``, the tags in ``load``
    frozen, and evaluates it on ``evals``; validated like any recipe."""
    pretrained = {read_tag(d)[0]["name"]: str(d) for d in load}  # verified, no model yet
    recipe = Recipe(name="tagllm-train", tags=[tag], model=model, seed=train.seed,
                    stages=[StageConfig(tag.name.strip("<>"), [tag.name], [data], train,
                                        eval=list(evals))],
                    pretrained=pretrained, source="tagllm train")
    check(recipe)
    return recipe


#: the baselines ``tagllm train`` compares a head against on its test rows
OWN_DATA_BASELINES = ["rf", "mean"]


@dataclass
class OwnData:
    """What ``tagllm train`` fills in for a user's own file: each field as given, or the
    default it chose, and one line per choice (printed before any model loads)."""

    data: str
    template: str
    kind: str
    head: str
    num_outputs: int
    load: list[Path]
    out: Path
    test: str | None
    notes: list[str] = field(default_factory=list)


#: the fewest test rows ``tagllm train --test auto`` scores (a smaller split is refused)
MIN_TEST_ROWS = 10


def own_data(tag: str, data: str, template: str | None, label: str | list[str] | None,
             kind: str | None,
             head: str, num_outputs: int | None, load: str | None, out: str | None,
             test: str | None, model: str) -> OwnData:
    """Defaults for training a tag on a file with as few flags as possible, all decided from
    the flags and the data's columns and labels, before any model loads:

    - ``kind``: function with a label, else domain; ``head`` ``auto``: classification for a
      label of only 0 and 1 (missing values aside), else regression; ``num_outputs``: the
      classes (the largest label + 1), or the label columns;
    - ``template``: for a file with one SMILES column ``<SMILES> {smiles} TAG`` (one protein
      ``sequence`` column: ``<Protein> {sequence} TAG``); a domain tag: ``TAG {column}``;
      several input columns: refused, ask for ``--template``;
    - ``load``: the shipped domain tags the template names (``smiles``, ``protein``) when
      they were trained for ``model``;
    - ``test`` ``auto``: a file's head is trained on ``split:train:FILE`` and scored once on
      ``split:test:FILE`` (80/20 by molecule or sequence) beside the random forest and the
      untrained tag; refused when that split holds fewer than :data:`MIN_TEST_ROWS` rows
      (or one class); ``none``: no test; else a source to test on;
    - ``out``: ``tags/NAME`` (refused when that folder holds anything but this tag).
    """
    from tagllm.shipped import SHIPPED
    from tagllm.sources import BUILTIN_PREFIXES, label_columns, unknown_source_error

    if (unknown := unknown_source_error(data)) is not None:
        raise unknown
    notes: list[str] = []
    is_file = not data.startswith(BUILTIN_PREFIXES)
    kind = kind or ("function" if label else "domain")
    if label and kind != "function":
        raise ConfigError("--label trains a head: it needs --kind function")
    labels = label_columns(data, label)
    table = _peek(data, labels) if template is None or (
        labels and (head == "auto" or num_outputs is None)) else None
    if template is None:
        template = _template(tag, data, kind, table, labels, is_file)
        notes.append(f"template {template!r}")
    values = _label_values(table, labels[0]) if table is not None and len(labels) == 1 else []
    if head == "auto":
        head = "none"
        if labels:
            head = "classification" if set(values) == {0.0, 1.0} else "regression"
            notes.append(f"head {head} on {', '.join(labels)} (--head to choose)")
    if num_outputs is None:
        num_outputs = max(len(labels), 1)
        if head == "classification":
            num_outputs = int(max(values)) + 1 if values and all(
                v == int(v) and v >= 0 for v in values) else 2
    dirs = tag_dirs(load) if load is not None else []
    if load is None:
        ours = [e for e in SHIPPED.values() if e.model == model]
        for t in [t for t in tags_in(template) if t != tag]:
            entry = next((e for e in ours if any(read_tag(p)[0]["name"] == t
                                                 for p in e.paths())), None)
            if entry is None:
                raise ConfigError(f"the template uses {t}: load its tag folder with --load "
                                  f"(shipped tags for {model}: "
                                  f"{', '.join(e.name for e in ours) or 'none'})")
            dirs += entry.paths()
            notes.append(f"{t}: the shipped tag {entry.name!r}, frozen")
    if test == "auto":
        test = None
        if is_file and head not in ("none", "lm"):
            data, test = f"split:train:{data}", f"split:test:{data}"
            n = _check_test_split(test, labels, head)
            notes.append(f"trained on {data}, scored once on {test} ({n} rows: 20% by a hash "
                         "of each row's molecules, else sequences, else text; --test none "
                         "trains on every row)")
    elif test == "none":
        test = None
    out_dir = Path(out) if out else Path("tags") / tag.strip("<>")
    if not out:
        if out_dir.exists() and _tag_name(out_dir) != tag:
            raise ConfigError(f"{out_dir} exists and is not the tag {tag}; give --out")
        notes.append(f"out {out_dir}")
    return OwnData(data, template, kind, head, num_outputs, dirs, out_dir, test, notes)


def _peek(data: str, labels: list[str]):
    """The rows the defaults look at: a CSV/TSV/.smi file as read (no row checks: training
    checks them), an SD or FASTA file through its reader, a built-in source's first rows."""
    from tagllm.sources import BUILTIN_PREFIXES, has_own_reader, load_source

    if data.startswith(BUILTIN_PREFIXES):
        return load_source(data, 1000, label=labels or None, skip_invalid=True,
                           progress=False)[0]
    if has_own_reader(data):
        return load_source(data, label=labels or None, skip_invalid=True, progress=False)[0]
    return read_table(data)


def _template(tag: str, data: str, kind: str, table, labels: list[str], is_file: bool) -> str:
    """``<SMILES> {col} TAG`` / ``<Protein> {col} TAG`` for the one input column, ``TAG
    {col}`` for a domain tag; several or no input columns: ask for --template."""
    from tagllm.sources import PROTEIN_COLUMNS, SMILES_COLUMNS

    if not is_file:
        raise ConfigError(f"--template: {data} is a built-in source; give the input text, "
                          f"e.g. --template '<SMILES> {{smiles}} {tag}'")
    cols = list(table.columns)
    mols = [c for c in cols if c.lower() in SMILES_COLUMNS]
    seqs = [c for c in cols if c.lower() in PROTEIN_COLUMNS]
    example = f"--template '<SMILES> {{{(mols or seqs or cols)[0]}}} {tag}'"
    if len(mols) + len(seqs) > 1:
        raise ConfigError(f"--template: {data} has several input columns ({mols + seqs}); "
                          f"give the input text with each, e.g. {example}")
    if kind == "domain":
        text = (mols or seqs or [c for c in cols if c not in labels and c.lower() != "id"])
        if len(text) != 1:
            raise ConfigError(f"--template: which column of {data} ({cols}) is the text? "
                              f"e.g. --template '{tag} {{{cols[0]}}}'")
        return f"{tag} {{{text[0]}}}"
    if not (mols or seqs):
        raise ConfigError(f"--template: {data} has no SMILES or sequence column (columns: "
                          f"{cols}); give the input text, e.g. {example}")
    return f"<SMILES> {{{mols[0]}}} {tag}" if mols else f"<Protein> {{{seqs[0]}}} {tag}"


def _label_values(table, column: str) -> list[float]:
    """The finite numbers of a label column (empty, missing and non-numeric cells left out:
    training names those rows)."""
    out = []
    for v in table[column]:
        try:
            out.append(check_number(v))
        except ValueError:
            continue
    return out


def _check_test_split(spec: str, labels: list[str], head: str) -> int:
    """The rows of a ``split:test:`` file (checked as training will check them), refused
    when too few to score, or of one class only."""
    from tagllm.sources import load_source

    rows, _ = load_source(spec, label=labels, skip_invalid=True, progress=False)
    path = spec.split(":", 2)[2]
    if len(rows) < MIN_TEST_ROWS:
        raise ConfigError(f"{path}: its test split ({spec}) holds {len(rows)} valid row(s), "
                          f"fewer than {MIN_TEST_ROWS} to score; use a larger file, "
                          "--test SOURCE, or --test none")
    if head == "classification" and len(set(rows[labels[0]])) < 2:
        raise ConfigError(f"{path}: every row of its test split ({spec}) has the same class; "
                          "use --test SOURCE or --test none")
    return len(rows)


def _tag_name(folder: Path) -> str | None:
    try:
        return read_tag(folder)[0]["name"]
    except TagllmError:
        return None


def train_one(tag: TagConfig, data: DataConfig, train: TrainConfig, model: str,
              load: Sequence[Path], out: str | Path, store: TagStore, progress: bool = True,
              log: Log = print, evals: Sequence[EvalConfig] = ()) -> tuple[Path, StageResult]:
    """Train one tag (or find it in the store), evaluate it on ``evals`` and copy it to the
    folder ``out``; returns the folder and the stage's summary."""
    recipe = single_stage_recipe(tag, data, train, model, load, evals)
    summary = run(recipe, store, log=log, progress=progress, export_to_out=False)
    stage = summary.stages[0]
    return store.export(tag_key(stage.key, tag.name), out), stage


def _function_tag(configs: dict[str, TagConfig], spec: EvalConfig, tag: str | None) -> str:
    """The tag whose head predicts ``spec``'s labels, checked against the tag files."""
    found = [t for t in tags_in(spec.template) if t in configs
             and configs[t].head is not None and configs[t].head.supervised]
    tag = tag or (found[-1] if found else None)
    if tag is None or tag not in configs or configs[tag].head is None \
            or not configs[tag].head.supervised:
        raise ConfigError(f"--label needs a function tag with a regression or classification "
                          f"head in the template {spec.template!r} (or --tag); loaded: "
                          f"{sorted(configs)}")
    return tag


def evaluate_entries(data: str, label: str | list[str] | None, template: str, n: int | None,
                     settings: JSONObject, baseline_train: str | None = None,
                     baseline_examples: int = 3000, label_baselines: list[str] | None = None
                     ) -> tuple[EvalConfig, DataConfig | None]:
    """``tagllm evaluate``'s flags as the entries a recipe would hold: the evaluation (the
    other fields of an :class:`EvalConfig` in ``settings``, with every baseline that its
    kind and flags allow) and the baselines' training rows (seed 0 unless given)."""
    settings = {**settings, "seed": settings.get("seed") or 0}
    reference, prompt = settings.get("reference"), settings.get("prompt")
    if (label is None) == (reference is None):
        raise ConfigError("give --label (a head's target) or --reference (generated text)")
    if baseline_train and not label:
        raise ConfigError("--baseline_train trains the label baselines: it needs --label")
    if label_baselines and not (label and baseline_train):
        raise ConfigError("--baselines chooses label baselines: it needs --label and "
                          "--baseline_train")
    cheap = baseline_keys("label", with_model=False)  # the model-based ones when named
    baselines = ((label_baselines or cheap if baseline_train else []) if label
                 else ["copy", *(["prompt"] if prompt else [])])
    spec = EvalConfig(source=data, label=label, template=template, n=n, baselines=baselines,
                      **settings)
    base = DataConfig(source=baseline_train, template=template, label=label,
                      n=baseline_examples, seed=spec.seed, skip_invalid=spec.skip_invalid) \
        if baseline_train else None
    return spec, base


def evaluate_saved(tags: Sequence[Path], spec: EvalConfig, model: str,
                   baseline_rows: DataConfig | None = None, tag: str | None = None,
                   batch_size: int = 32, max_length: int = 512, progress: bool = True,
                   log: Log = print, dtype: torch.dtype = torch.float32) -> EvalResult:
    """Evaluate saved tags on ``spec``'s rows (the result row of
    :func:`~tagllm.scoring.evaluate`), every file and source checked first;
    the base model loads in ``dtype``."""
    configs = read_tag_configs(tags)
    unknown = [t for t in tags_in(spec.template) if t not in configs]
    if unknown:
        raise UnknownTagError(f"unknown tag {unknown[0]} in the template {spec.template!r}; "
                              f"known tags: {', '.join(sorted(configs)) or 'none'}"
                              f"{did_you_mean(unknown[0], configs)}")
    head: HeadConfig | None = None
    if spec.label:
        tag = _function_tag(configs, spec, tag)
        head = configs[tag].head
    seed = spec.seed or 0
    counter = counting_tokenizer(load_tokenizer(model), list(configs.values()))
    test = read_rows(spec, seed, None, progress, log, head,
                     length_limit(spec, counter, max_length, log))
    train = None
    if baseline_rows is not None:
        held = HeldOut()
        held.add(test)  # as in a recipe: no test molecule, sequence or input in training
        # the baselines' rows keep every row, whatever its length, as before: only the
        # 5,000-character bound of a SMILES guards RDKit there
        train = read_rows(baseline_rows, seed, held, progress, log, head)
    report_skipped("evaluate", [test] + ([train] if train else []), log)
    m = TaggedModel.from_pretrained(model, tags=tags, dtype=dtype)
    return evaluate(m, spec, test, train, name=spec.name or spec.source, tag=tag,
                    max_length=max_length, batch_size=batch_size, progress=progress, log=log)
