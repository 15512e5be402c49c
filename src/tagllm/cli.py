"""The ``tagllm`` command line, made from typed functions (jsonargparse).

Every flag has a type, a default and help taken from the docstrings below (``tagllm train``
takes every field of :class:`~tagllm.config.TrainConfig` as a flag, with its help). A
command only parses, calls the library and prints: the work is in :mod:`tagllm.protocol`,
:mod:`tagllm.inference` and :mod:`tagllm.evaluation`. An error a user can cause
(:class:`~tagllm.errors.TagllmError`) prints one line and exits with status 2; anything else
is a bug in tagllm and prints its traceback.
"""

from __future__ import annotations

import errno
import importlib.util
import inspect as _inspect
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from tagllm.config import (
    HEAD_TRAINING,
    DataConfig,
    EvalConfig,
    HeadConfig,
    TagConfig,
    TrainConfig,
    head_training,
)
from tagllm.data import check_output
from tagllm.errors import ConfigError, DataError, MissingPackageError, TagllmError
from tagllm.evaluation.baselines import baseline_keys
from tagllm.fileio import (
    WRITE_ERRNOS,
    atomic_write_text,
    clean_stale,
    find_stale,
    json_text,
)
from tagllm.paths import tagllm_home
from tagllm.records import EVAL_FORMAT
from tagllm.shipped import SHIPPED
from tagllm.sources import sources_summary, sources_table

console = Console(emoji=False)
err = Console(stderr=True, emoji=False)
BUG = ("this is a bug in tagllm, not in your input: please report it with the traceback "
       "above and the command you ran")


Dtype = typing.Literal["float32", "bfloat16"]
#: forward-only commands also take int8 (the decoder's linear layers quantised, CPU only)
ForwardDtype = typing.Literal["float32", "bfloat16", "int8"]
Pool = typing.Literal["tag", "mean", "tag+mean"]
Engine = typing.Literal["processes", "ray"]


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _log(msg: str) -> None:
    err.print(f"[dim]{msg}[/dim]", highlight=False)


def _report_skipped(skipped: list[str]) -> None:
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} invalid row(s):[/yellow]")
        for msg in skipped[:20]:
            err.print(f"  {msg}", highlight=False)
        if len(skipped) > 20:
            err.print(f"  ... and {len(skipped) - 20} more")


def with_fields(cls: type, skip: tuple[str, ...] = (), head_defaults: dict | None = None
                ) -> Callable:
    """Give a command every field of dataclass ``cls`` (but ``skip``) as a keyword flag,
    typed, with the field's default and its ``help`` metadata: one source for both. A field
    in ``head_defaults`` defaults to None instead (not given), its help naming both
    defaults: the field's, and the one for a tag with a head."""
    hints = typing.get_type_hints(cls)
    extra = [f for f in fields(cls) if f.name not in skip]
    heads = head_defaults or {}

    def hint(f) -> Any:
        return hints[f.name] | None if f.name in heads else hints[f.name]

    def help_text(f) -> str:
        text = f.metadata.get("help", "")
        if f.name in heads:
            text += f" (default {f.default}; a tag with a head: {heads[f.name]})"
        return text

    def wrap(fn: Callable) -> Callable:
        sig = _inspect.signature(fn)
        own = typing.get_type_hints(fn)
        params = [p.replace(annotation=own.get(p.name, p.annotation))
                  for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
        params += [_inspect.Parameter(f.name, _inspect.Parameter.KEYWORD_ONLY,
                                      default=None if f.name in heads else f.default,
                                      annotation=hint(f))
                   for f in extra]
        fn.__signature__ = sig.replace(parameters=params)
        fn.__annotations__ = {**own, **{f.name: hint(f) for f in extra}}
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "".join(
            f"\n        {f.name}: {help_text(f)}." for f in extra)
        return fn

    return wrap


def run(recipe: str, dry_run: bool = False, store: str | None = None, progress: bool = True,
        fsdp: bool | None = None, track: Literal["tensorboard", "none"] = "tensorboard") -> None:
    """Run a recipe: train the missing stages in dependency order, reuse the stored ones.

    Usage: tagllm run RECIPE.yaml [--dry_run] [--store DIR] [--fsdp]

    Each stage trains on a fresh tag bank over the frozen base, with the tags it uses
    loaded frozen from the tag store. A stage whose key (base model, tag configs, training
    settings, data fingerprint, dependencies' keys, seed) is already stored is not trained
    again. An interrupted stage (Ctrl-C, SIGTERM, or killed) resumes from its last
    checkpoint when the same command runs again. The tags and results.json are exported
    to the recipe's out folder. Under `torchrun` or `accelerate launch` with N processes,
    each process takes 1/N of every batch and the tag gradients are summed across them;
    evaluation is split across the processes too. With --fsdp (or an accelerate FSDP
    config) the base model's blocks are also sharded, for models too big for one GPU.

    Args:
        recipe: the YAML recipe file (see recipes/).
        dry_run: print the plan (what is cached, what would train and why) and stop.
        store: the tag store folder (default $TAGLLM_STORE or $TAGLLM_HOME/store).
        progress: show progress bars.
        fsdp: under a multi-process launch, shard the frozen base model's transformer blocks
            across the processes (FSDP2); default: on when `accelerate launch` has an FSDP
            configuration (ACCELERATE_USE_FSDP) or TAGLLM_FSDP=1.
        track: where each trained stage's losses, learning rates, validation losses and
            metrics also go: TensorBoard event files under OUT/tensorboard/STAGE (view with
            `tensorboard --logdir OUT/tensorboard`), or none.
    """
    from tagllm.distributed import world
    from tagllm.protocol import load_recipe, run
    from tagllm.report import cost_table, stage_tables
    from tagllm.store import TagStore

    r = load_recipe(recipe)  # every recipe error surfaces here, before any model loads
    summary = run(r, TagStore(store), dry_run=dry_run, log=_log, progress=progress,
                  show=console.print, fsdp=fsdp, track=track)
    if dry_run or not world().is_main:  # under a multi-process launch, one process reports
        return
    for table in stage_tables(summary.stages):
        console.print(table)
    costs = cost_table(summary.stages)
    if costs is not None:
        console.print(costs)
    trained = [s.stage for s in summary.stages if not s.cached]
    console.print(f"trained {len(trained)} stage(s) ({summary.steps_run} steps), reused "
                  f"{len(summary.stages) - len(trained)}; tags in {Path(r.out) / 'tags'}, "
                  f"results in {Path(r.out) / 'results.json'}; {summary.seconds:.0f} s")


def list_tags(store: str | None = None, verify: bool = False) -> None:
    """Show the tag store as a table: name, kind, p, base model, metric, key, date.

    Args:
        store: the tag store folder (default $TAGLLM_STORE or $TAGLLM_HOME/store).
        verify: also verify every entry's files (schema, checksum, shapes).
    """
    from tagllm.report import store_table
    from tagllm.store import TagStore

    st = TagStore(store)
    rows = st.entries()
    console.print(store_table(st.root, rows, st.problems(rows) if verify else None))


def push(tagdir: str, repo_id: str, private: bool = False, token: str | None = None,
         message: str | None = None) -> None:
    """Share tags on the Hugging Face Hub: the files unchanged, with a model card.

    Usage: tagllm push TAGDIR ORG/NAME [--private]

    TAGDIR is a tag folder or a folder of tag folders (a recipe's OUT/tags: a function tag
    and the domain tags it was trained with, which it needs). Every file is verified before
    the repository is created. The generated README.md has the Hub's YAML metadata
    (base_model, library_name: tagllm, tags, metrics) and, per tag, its training data and
    the scores in its provenance. Load it anywhere a tag folder goes: `--tags ORG/NAME` or
    `TaggedModel.from_pretrained(MODEL, tags=["ORG/NAME"])` (downloaded into the Hugging
    Face cache; with HF_HUB_OFFLINE=1 read from it), verified on every load.

    Args:
        tagdir: the tag folder, or a folder of tag folders.
        repo_id: the Hub repository, ORG/NAME (created when missing).
        private: create the repository private.
        token: a Hub token (default: HF_TOKEN or the one `hf auth login` saved).
        message: the commit message (default: tagllm's version and the tag names).
    """
    from tagllm.hub import push as push_tags

    console.print(f"pushed: {push_tags(tagdir, repo_id, private, token, message)}")


def serve(tags: str, model: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          template: str | None = None, max_batch: int = 64, max_wait_ms: float = 5.0,
          max_pending: int = 256, max_inputs: int = 256, max_body_bytes: int = 1_000_000,
          max_length: int = 512, max_new_tokens: int = 256, timeout_s: float = 60.0,
          token: str | None = None, dtype: Dtype = "float32") -> None:
    """Serve loaded tags over HTTP (JSON): predictions and generation for other programs.

    Usage: tagllm serve --tags runs/qed/tags [--port 8000] [--token TOKEN]

    POST /v1/predict {"inputs": ["<SMILES> CCO <QED>"]} or {"rows": [{"smiles": "CCO"}],
    "template": "<SMILES> {smiles} <QED>"} -> {"tag", "columns", "predictions"};
    POST /v1/generate {"prompts": [...], "max_new_tokens": 32} -> {"outputs"};
    GET /v1/tags; GET /health. Requests are checked as the CLI checks its inputs, off the
    event loop and in cost order (too big a body or too many inputs: 413; unknown tag, too
    long, then invalid SMILES or amino acid: 422 with the message); concurrent requests
    share forward passes (micro-batching); past --max_pending waiting requests the answer
    is 503, past --timeout_s 504. Ctrl-C / SIGTERM finish the requests in flight
    (for at most 5 s).

    Args:
        tags: TAGS_HELP.
        model: base model (default: the one the tag files record).
        host: address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: TCP port.
        template: renders rows requests that bring no template (default: the template the
            function tag was trained with, as its tag file records it).
        max_batch: inputs per forward pass.
        max_wait_ms: how long a batch waits for more requests.
        max_pending: requests waiting or running at once; more get 503.
        max_inputs: inputs in one request; more get 413.
        max_body_bytes: largest request body; larger get 413.
        max_length: longest input in tokens; longer get 422 (never truncated).
        max_new_tokens: the most a generate request may ask for.
        timeout_s: seconds a request may take (checks, queue and model); later: 504.
        token: require "Authorization: Bearer TOKEN" (default: $TAGLLM_SERVE_TOKEN; unset:
            no authentication).
        dtype: the base model's weights: float32, or bfloat16 (half the memory).
    """
    from tagllm.model import TaggedModel
    from tagllm.protocol.standalone import recorded_model
    from tagllm.serve import ServeConfig, token_from_env
    from tagllm.serve import serve as run_service

    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise MissingPackageError(f"tagllm serve needs {module}: pip install 'tagllm[serve]'")
    dirs, template = _tag_dirs(tags, template)  # every tag file checked before the model
    cfg = ServeConfig(host=host, port=port, template=template, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_pending=max_pending, max_inputs=max_inputs,
                      max_body_bytes=max_body_bytes, max_length=max_length,
                      max_new_tokens=max_new_tokens, timeout_s=timeout_s,
                      token=token_from_env(token))
    m = TaggedModel.from_pretrained(recorded_model(dirs, model), tags=dirs,
                                    dtype=_torch_dtype(dtype))
    console.print(f"serving {', '.join(m.bank.names)} on http://{host}:{port}"
                  + (" (token required)" if cfg.token else ""))
    run_service(m, cfg)


def gc(store: str | None = None, dry_run: bool = False) -> None:
    """Remove the stored tags that no recipe references any more.

    Usage: tagllm gc [--dry-run] [--store DIR]

    A recipe's index remembers the tags of each stage's last run and those they were
    trained on; an entry outside every index (an earlier configuration, a stage since
    changed, an older store format) is removed. Entries whose stage another process is
    training are left alone, and so are unfinished stages' checkpoints (`.work`), which the
    next run resumes. Tags exported to a recipe's out folder are copies and stay. The
    temporary files and folders that killed processes of this machine left in the store
    and under $TAGLLM_HOME (half-written files, prefix caches) are removed too.

    Args:
        store: the tag store folder (default $TAGLLM_STORE or $TAGLLM_HOME/store).
        dry_run: list what would be removed, remove nothing.
    """
    from rich.table import Table as RichTable

    from tagllm.store import TagStore

    st = TagStore(store)
    rows = st.unreferenced()
    table = RichTable(title=f"tag store {st.root}: {len(rows)} unreferenced of "
                            f"{len(st.entries())} tag(s)"
                            + (" (dry run: nothing removed)" if dry_run else ""))
    for col in ("name", "recipe/stage", "key", "created", "bytes"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.name), f"{r.recipe}/{r.stage}", r.key, str(r.created or ""),
                      f"{r.bytes or 0:,}")
        if not dry_run:
            st.remove(r.key)
    console.print(table)
    total = sum(r.bytes or 0 for r in rows)
    console.print(f"{'would remove' if dry_run else 'removed'} {len(rows)} tag(s), "
                  f"{total / 1e6:.2f} MB")
    roots = [st.root, tagllm_home()]
    if st.root.resolve().is_relative_to(tagllm_home().resolve()):
        roots = roots[1:]  # the store lies inside: one walk covers both
    stale = [x for r in roots for x in find_stale(r, recursive=True)]  # deepest first
    if not dry_run:
        stale = clean_stale(stale)  # what was done (another process may be quicker)
    for p, target, put_back in sorted(stale):
        done = ("put back" if put_back else "removed") if not dry_run else \
            ("would put back" if put_back else "would remove")
        console.print(f"{done} {p}" + (f" as {target}" if put_back else "")
                      + " (left by a killed process)", highlight=False, soft_wrap=True)


@with_fields(TrainConfig, skip=("log_every", "checkpoint_every"), head_defaults=HEAD_TRAINING)
def train(tag: str, data: str, template: str | None = None, out: str | None = None,
          label: str | None = None,
          kind: Literal["domain", "function"] | None = None,
          head: str = "auto", num_outputs: int | None = None, num_tokens: int = 10,
          reparam: Literal["none", "residual_mlp"] = "none",
          depth: Literal["input", "deep"] = "input",
          readout_layer: str = "-1", pool: Literal["tag", "tag+mean", "auto"] = "tag",
          load: str | None = None, test: str = "auto", model: str = "smollm2",
          n_examples: int | None = None, skip_invalid: bool = False, store: str | None = None,
          progress: bool = True, **settings) -> None:
    """Train one tag (one stage) with every other tag and the base model frozen.

    A one-stage recipe run through the tag store: an identical second call trains nothing,
    and an interrupted one resumes from its checkpoint. On your own file of molecules (or
    protein sequences) with a measured label, the file, the label and the tag's name are
    enough; the defaults chosen are printed first:
      tagllm train --data my.csv --label logS --tag '<LogS>'
    trains <LogS> with a regression head (classification for a label of 0 and 1) on
    "<SMILES> {smiles} <LogS>" with the shipped <SMILES> tag frozen, on 80% of the
    molecules, and scores it once on the other 20% beside a random forest and the untrained
    tag. Stage 1, then stage 2, on a built-in source:
      tagllm train --tag '<SMILES>' --data moses:train --n_examples 2000
        --template '<SMILES> {smiles}' --out tags/SMILES
      tagllm train --tag '<QED>' --label qed
        --data moses:train --template '<SMILES> {smiles} <QED>' --load tags/SMILES --out tags/QED

    Args:
        tag: the new tag's name, e.g. <SMILES>.
        data: a CSV/TSV/.smi, FASTA or SD file, or a built-in source: SOURCES_LIST.
        template: the input text per row, with {column} placeholders (default for a file:
            <SMILES> {smiles} TAG, or <Protein> {sequence} TAG; a domain tag: TAG {column}).
        out: the tag folder to write (atomically; default tags/NAME).
        label: the label column(s), comma-separated: the head's targets.
        kind: domain or function (default: function with a label, else domain).
        head: head of a function tag: auto (with a label: classification for labels of
            only 0 and 1, else regression; without: none), none (next-token loss),
            regression or classification.
        num_outputs: regression outputs or number of classes (default: the label columns,
            or 2 classes).
        num_tokens: p, the number of vectors of the tag.
        reparam: residual_mlp trains the vectors as P + MLP(P) (saved as plain vectors).
        depth: deep also learns offsets at the tag's positions in every later layer.
        readout_layer: the layer the head reads: -1 (the last), k, or auto (chosen on the
            validation rows).
        pool: what the head reads there: tag, tag+mean (with the mean over the text
            tokens), or auto.
        load: tags to load, frozen (default: the shipped domain tags the template names,
            for this model): TAGS_HELP.
        test: where a head is scored once after training, beside a random forest, the
            training mean and the untrained tag: auto (a file: trained on split:train:FILE,
            scored on split:test:FILE, 80/20 by molecule; a built-in source: none), none,
            or a source.
        model: base model: embedded short name (smollm2, gemma3), Hugging Face id or folder.
        n_examples: use a seeded random sample of this many rows.
        skip_invalid: drop invalid rows (reported) instead of stopping at the first one.
        store: the tag store folder (default $TAGLLM_STORE or $TAGLLM_HOME/store).
        progress: show progress bars.
    """
    from tagllm.protocol.standalone import OWN_DATA_BASELINES, own_data, train_one
    from tagllm.report import stage_tables
    from tagllm.store import TagStore

    layer = readout_layer if readout_layer == "auto" else _int_flag("readout_layer",
                                                                    readout_layer)
    labels = _labels(label)
    own = own_data(tag, data, template, labels, kind, head, num_outputs, load, out, test,
                   model)
    for note in own.notes:
        _log(f"default: {note}")
    cfg = TagConfig(tag, kind=own.kind, num_tokens=num_tokens, reparam=reparam, depth=depth,
                    head=None if own.head == "none" else HeadConfig(
                        own.head, own.num_outputs, readout_layer=layer, pool=pool))
    head_labels = labels if own.head != "none" else None
    rows = DataConfig(source=own.data, template=own.template, n=n_examples,
                      skip_invalid=skip_invalid, label=head_labels)
    evals = [EvalConfig(source=own.test, label=head_labels, template=own.template,
                        skip_invalid=skip_invalid, ablation=cfg.head is not None,
                        baselines=OWN_DATA_BASELINES if head_labels else [])] \
        if own.test else []
    given = {k: v for k, v in settings.items() if v is not None}
    chosen = head_training(given) if cfg.head is not None and cfg.head.kind != "lm" else {}
    if chosen:
        _log("default: for a tag with a head, " + ", ".join(f"{k} {v}" for k, v in
                                                          chosen.items()))
    path, stage = train_one(cfg, rows, TrainConfig(**{**chosen, **given}), model, own.load,
                            own.out, TagStore(store), progress, _log, evals)
    for table in stage_tables([stage]) if evals else []:
        console.print(table)
    how = "found in the tag store" if stage.cached else f"{stage.steps_run} steps"
    kept = "" if stage.best_step is None else \
        f", kept step {stage.best_step} by validation loss" \
        if stage.kept_step in (None, stage.best_step) else \
        f", kept the last step {stage.kept_step} (lowest validation loss at step " \
        f"{stage.best_step})"
    console.print(f"wrote {path} ({how}; final loss {stage.final_loss:.4f}{kept}, "
                  f"{stage.seconds or 0:.0f} s)")


def _int_flag(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not a number or 'auto'") from None


def _labels(label: str | None) -> str | list[str] | None:
    """``a,b`` -> ["a", "b"]; one name stays a string (it may name a source's group)."""
    return label.split(",") if label and "," in label else label


def _tag_dirs(tags: str | None, template: str | None = None, tag: str | None = None,
              need_template: bool = False, want_template: bool = True
              ) -> tuple[list[Path], str | None]:
    """The tag folders ``tags`` names, with the tags they were trained with that are not
    among them (shipped or stored ones, matched by value), and the template: ``template``,
    else (``want_template``) the one the function tag was trained with. Each default taken
    is logged (stderr: stdout stays the command's output)."""
    from tagllm.protocol.standalone import recorded_template, tag_dirs, with_trained_with

    def note(msg: str) -> None:
        _log(f"default: {msg}")

    dirs = with_trained_with(tag_dirs(tags), note)
    if template is None and want_template:
        template = recorded_template(dirs, tag)
        if template is not None:
            note(f"template {template!r}, the one the function tag was trained with")
        elif need_template:
            raise ConfigError("--template: the tag files record no single template for a "
                              "function tag; give one, e.g. --template "
                              "'<SMILES> {smiles} <QED>'")
    return dirs, template


def predict(tags: str, input: str, output: str, template: str | None = None,
            tag: str | None = None, model: str | None = None, batch_size: int = 32,
            max_length: int = 512, skip_invalid: bool = False, progress: bool = True,
            dtype: ForwardDtype = "float32", chunk_rows: int = 1024,
            engine: Engine = "processes",
            workers: int = 1, gpus_per_worker: float | None = None,
            ray_address: str | None = None) -> None:
    """Predict with a function tag's head: a table in, the same rows with predictions out.

    The output (.csv or .parquet) keeps the input columns and adds `prediction` (one
    output), `prediction_K` (several outputs) or `prob_K` (class probabilities). The input
    is read, checked, predicted and written in chunks, so memory stays flat however long
    the file. Each finished chunk is kept in OUTPUT.parts/: the same command after a crash
    or Ctrl-C resumes there. The output appears atomically, in input order, when every row
    is done. Under `torchrun` / `accelerate launch` the processes share the chunks (one
    GPU each, where there are GPUs); with --engine ray, --workers Ray actors do (a local
    Ray instance, or the cluster at --ray_address). Every way gives one process's output.

    Args:
        tags: TAGS_HELP.
        input: CSV/TSV (with a header), .smi, Parquet or FASTA file, or a built-in source.
        output: .csv or .parquet file to write.
        template: input text per row, with {column} placeholders (default: the template
            the function tag was trained with, as its tag file records it).
        tag: the function tag whose head predicts (default: the one in the template).
        SCREEN_ARGS
    """
    from tagllm.inference import Screen

    _screen(Screen("predict", template or "", tag, batch_size=batch_size,
                   max_length=max_length, skip_invalid=skip_invalid),
            tags, input, output, model, dtype, progress, chunk_rows,
            (engine, workers, gpus_per_worker, ray_address), "predictions")


def embed(tags: str, input: str, output: str, template: str | None = None,
          tag: str | None = None, layer: int | None = None, pool: Pool | None = None,
          model: str | None = None, batch_size: int = 32, max_length: int = 512,
          skip_invalid: bool = False, progress: bool = True, dtype: ForwardDtype = "float32",
          chunk_rows: int = 1024, engine: Engine = "processes", workers: int = 1,
          gpus_per_worker: float | None = None, ray_address: str | None = None) -> None:
    """Features of the frozen model at a tag, for your own models: a table in, Parquet out.

    The output keeps the input columns and adds `embedding`, a float32 vector per row: the
    hidden state at the tag's last vector, the mean over the row's text tokens, or both
    (--pool), at any layer. By default these are the features the tag's head reads (its
    readout layer and pooling), else the last layer at the tag. Read, checked, computed and
    written in chunks (flat memory), resumable, and shared among processes or Ray workers
    as predict's are.

    Args:
        tags: TAGS_HELP.
        input: CSV/TSV (with a header), .smi, Parquet or FASTA file, or a built-in source.
        output: .parquet file to write.
        template: input text per row, with {column} placeholders (default: the template
            the function tag was trained with, as its tag file records it).
        tag: the tag whose hidden state is read (default: the last tag in the template).
        layer: -1 the last layer (normed), 0 the input embeddings, K the output of decoder
            layer K (default: the layer the tag's head reads, else -1).
        pool: tag (the state at the tag), mean (the mean over the text tokens) or tag+mean
            (both, twice the width); default: what the tag's head reads, else tag.
        SCREEN_ARGS
    """
    from tagllm.inference import Screen

    _screen(Screen("embed", template or "", tag, layer, pool, batch_size, max_length,
                   skip_invalid),
            tags, input, output, model, dtype, progress, chunk_rows,
            (engine, workers, gpus_per_worker, ray_address), "feature vectors")


def _check_first_row(input: str, template: str) -> None:
    """Before a model loads: ``input`` names a built-in source or a file that reads, and
    the template's columns are in its first row (the rows themselves are checked as they
    stream)."""
    from tagllm.data import iter_table
    from tagllm.sources import BUILTIN_PREFIXES, has_own_reader, unknown_source_error

    if (unknown := unknown_source_error(input)) is not None:
        raise unknown
    if input.startswith(BUILTIN_PREFIXES) or has_own_reader(input):
        return
    first = next(iter_table(input, chunk_rows=1))
    if len(first):
        first.render(template)


def _screen(screen, tags: str, input: str, output: str, model: str | None, dtype: str,
            progress: bool, chunk_rows: int,
            ray: tuple[str, int, float | None, str | None], what: str) -> None:
    """predict / embed: check the output, the tags and the template before the model
    loads, then compute ``screen`` on this process's share of the rows, or on Ray."""
    import dataclasses

    from tagllm.distributed import world
    from tagllm.inference import screen_file
    from tagllm.protocol.standalone import recorded_model

    engine, workers, gpus, address = ray
    if chunk_rows < 1:
        raise ConfigError(f"--chunk_rows must be at least 1, got {chunk_rows}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if engine != "ray" and (workers != 1 or gpus is not None or address is not None):
        raise ConfigError("--workers, --gpus_per_worker and --ray_address are for --engine "
                          "ray (with torchrun / accelerate launch, their own flags set the "
                          "processes)")
    screen.output_format(output)
    check_output(input, output)  # before the model loads
    dirs, template = _tag_dirs(tags, screen.template or None, screen.tag, need_template=True)
    screen = dataclasses.replace(screen, template=template)
    _check_first_row(input, template)
    name = recorded_model(dirs, model)
    if engine == "ray":
        from tagllm.scale import ray_screen

        n = ray_screen(dirs, name, screen, input, output, workers, gpus, address=address,
                       dtype=dtype, chunk_rows=chunk_rows, progress=progress,
                       on_skipped=_report_skipped, log=_log)
        console.print(f"wrote {n} {what} to {output} ({workers} Ray workers)")
        return
    from tagllm.costs import peak_rss_gb
    from tagllm.inference import load_tagged

    w = world()
    if dtype == "int8" and w.device.type != "cpu":
        raise ConfigError("--dtype int8 runs on the CPU only (torch's dynamic quantisation); "
                          "on GPUs use bfloat16")
    m = load_tagged(dirs, name, dtype, w.device)
    n = screen_file(m, screen, input, output, chunk_rows, progress, _report_skipped, _log, w)
    _log(f"peak RSS of process {w.rank}: {peak_rss_gb():.2f} GB")
    if n is not None:
        console.print(f"wrote {n} {what} to {output}"
                      + (f" ({w.size} processes)" if w.distributed else ""))


@with_fields(EvalConfig, skip=("source", "label", "n", "template", "baselines", "ablation",
                               "name", "context"))
def evaluate(tags: str, data: str, label: str | None = None,
             template: str | None = None, tag: str | None = None,
             model: str | None = None, n_examples: int | None = None,
             baseline_train: str | None = None, baseline_examples: int = 3000,
             baselines: str | None = None, batch_size: int = 32, max_length: int = 512,
             json_out: str | None = None, progress: bool = True, dtype: Dtype = "float32",
             **settings) -> None:
    """Evaluate saved tags on a data source, as `tagllm run` evaluates a stage (the same
    metrics, baselines and names): a function tag's head on a label (regression: MSE, MAE,
    Pearson, Spearman; classification: accuracy, AUROC), beside every label baseline of the
    registry fitted on --baseline_train (k-NN and random forest on Morgan fingerprints or
    3-mer profiles, a linear model on amino-acid composition, the training mean / class
    frequencies; the methods that run the base model, the linear probe on its hidden
    states, the tags written as plain text and PEFT LoRA / prompt tuning, when --baselines
    names them); or generation up to a line break against --reference (BLEU, chrF), beside
    copying --source_column and, with --prompt, the plain-text prompt. Every file
    and source is checked before the model loads. The flags after the first ones are the
    fields of an evaluation entry of a recipe (eval: in a stage), with the same meaning.

    Args:
        tags: TAGS_HELP.
        data: a labelled CSV/TSV or SD file, or a built-in source: SOURCES_LIST.
        label: the label column(s), comma-separated (or a source's group: descriptors).
        template: input text per row, with {column} placeholders (default: the template
            the function tag was trained with, as its tag file records it).
        tag: the function tag whose head predicts (default: the one in the template).
        model: base model the tags were trained for (default: the one their tag files
            record).
        n_examples: evaluate a seeded random sample of this many rows.
        baseline_train: training rows of the baselines (test molecules left out).
        baseline_examples: rows of baseline_train to sample.
        baselines: label baselines to run, comma-separated registry keys (LABEL_BASELINES);
            default: those of DEFAULT_BASELINES that apply (the others run the base model
            or train a network).
        batch_size: inputs per forward pass.
        max_length: longest input in tokens (too_long says what happens to a longer one;
            nothing is ever truncated).
        json_out: also write the evaluation row to this JSON file, as results.json holds it
            (metrics, baselines, intervals, predictions or outputs).
        progress: show progress bars.
        dtype: the base model's weights: float32, or bfloat16 (half the memory).
    """
    from tagllm.protocol.standalone import (
        evaluate_entries,
        evaluate_saved,
        recorded_model,
    )
    from tagllm.report import eval_table, interval_table

    if json_out:  # never over an input: the data, the baselines' rows, a tag file
        tag_files = [f for t in tags.split(",") if Path(t.strip()).is_dir()
                     for f in Path(t.strip()).rglob("tag.*") if f.is_file()]
        check_output([data, baseline_train or "", settings.get("spm_model") or "",
                      *tag_files], json_out, "--json_out")
    dirs, template = _tag_dirs(tags, template, tag, need_template=True)
    spec, base = evaluate_entries(data, _labels(label), template, n_examples, settings,
                                  baseline_train, baseline_examples,
                                  baselines.split(",") if baselines else None)
    row = evaluate_saved(dirs, spec, recorded_model(dirs, model), base, tag, batch_size,
                         max_length, progress, _log, _torch_dtype(dtype))
    for table in (eval_table(row), interval_table(row)):
        if table is not None:
            console.print(table)
    if json_out:  # with the command that regenerates it (tagllm report shows it)
        row.command = _command("evaluate", evaluate, {**locals(), **settings})
        atomic_write_text(Path(json_out), json_text({"format": EVAL_FORMAT, **row.to_json()}))


def _command(name: str, fn: Callable, values: dict) -> str:
    """The command line that calls ``fn`` with ``values``: the non-default arguments."""
    args = ["tagllm", name]
    for p in _inspect.signature(fn).parameters.values():
        v = values.get(p.name, p.default)
        if v != p.default and p.name not in ("json_out", "progress"):
            args += [f"--{p.name}", str(v).lower() if isinstance(v, bool) else str(v)]
    return shlex.join(args)


def generate(prompt: str, tags: str | None = None, model: str | None = None,
             max_new_tokens: int = 64, stop: str = "") -> None:
    """Continue a prompt greedily with the frozen LM head (KV cache), tags spliced in.

    Args:
        prompt: the input text, which may contain loaded tags.
        tags: TAGS_HELP.
        model: base model the tags were trained for (default: the one their tag files
            record; smollm2 without tags).
        max_new_tokens: tokens to generate.
        stop: end the text before the first occurrence of this string (\\n, \\t, \\r,
            \\\\ and \\uXXXX are read as escapes), so --stop '\\n' keeps the first line
            (what a translation tag needs); default: no stop string.
    """
    from tagllm.model import TaggedModel
    from tagllm.protocol.standalone import recorded_model

    stop = unescape(stop)
    dirs, _ = _tag_dirs(tags, want_template=False)
    m = TaggedModel.from_pretrained(recorded_model(dirs, model), tags=dirs)
    text = m.generate([prompt], max_new_tokens, stop=[stop] if stop else ())[0]
    if stop:
        text = text.split(stop, 1)[0]
    sys.stdout.write(text + "\n")  # as generated: no wrapping, no markup


ExportFormat = typing.Literal["vllm-prompt-embeds"]


def export(tags: str, output: str, prompt: str | None = None, input: str | None = None,
           template: str | None = None, model: str | None = None,
           format: ExportFormat = "vllm-prompt-embeds", max_length: int = 4096) -> None:
    """Write tagged prompts for another engine: vLLM's prompt embeddings.

    Each prompt (--prompt, or --template filled from each row of --input) becomes a
    (seq_len, hidden) tensor of the base model's input embeddings with the tags spliced
    in, the special tokens the tokenizer adds included, in a safetensors file (tensors
    prompt_0, prompt_1, ...). vLLM generates from them with LLM(model,
    enable_prompt_embeds=True) and generate({"prompt_embeds": tensor}) (docs/usage.md).
    Deep tags cannot be written as input embeddings and are refused.

    Args:
        tags: TAGS_HELP.
        output: .safetensors file to write.
        prompt: one prompt text, which may contain the loaded tags.
        input: a CSV/TSV/.smi/Parquet file whose rows fill --template (read whole).
        template: the text of each row of --input, with {column} placeholders.
        model: base model the tags were trained for (default: the one their tag files
            record).
        format: vllm-prompt-embeds.
        max_length: longest prompt in tokens (longer ones are an error).
    """
    from tagllm.data import read_table
    from tagllm.export import export_prompt_embeds
    from tagllm.model import TaggedModel
    from tagllm.protocol.standalone import recorded_model

    if (prompt is None) == (input is None):
        raise ConfigError("give --prompt, or --input with --template")
    if input is not None and template is None:
        raise ConfigError("--input needs --template (the prompt of each row)")
    if not output.endswith(".safetensors"):
        raise ConfigError(f"--output {output}: write a .safetensors file")
    check_output(input or [], output)
    texts = [prompt] if prompt is not None else read_table(input).render(template)
    dirs, _ = _tag_dirs(tags, want_template=False)
    m = TaggedModel.from_pretrained(recorded_model(dirs, model), tags=dirs)
    export_prompt_embeds(m, texts, output, max_length)
    console.print(f"wrote {len(texts)} prompt embedding(s) ({format}) to {output}")


#: the backslash escapes that command-line strings may hold
_ESCAPES = re.compile(r"\\(u[0-9a-fA-F]{4}|[nrt\\])")


def unescape(text: str) -> str:
    """``text`` with the escapes ``\\n``, ``\\r``, ``\\t``, ``\\\\`` and ``\\uXXXX`` read;
    anything else, non-ASCII text included, stays as typed."""
    simple = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
    return _ESCAPES.sub(lambda mt: simple.get(mt[1]) or chr(int(mt[1][1:], 16)), text)


def inspect(tagdir: str, model: str | None = None, full: bool = False) -> None:
    """Show and verify tag folders: each tag, its head, base model, training and test scores.

    Usage: tagllm inspect TAGDIR [--model MODEL] [--full true]

    The files are always verified (schema, checksum, shapes, finite values). With --model
    the base model is loaded and each tag's fingerprint (of every weight) is checked against
    it.

    Args:
        tagdir: a tag folder, a folder of tag folders, a Hub repo id or a shipped tag's name
            (each of its folders is shown).
        model: also check that the tags fit this base model (short name, id or folder).
        full: print the whole tag.json (provenance, validation curve, test predictions).
    """
    from tagllm.hub import tag_folders
    from tagllm.report import tag_summary
    from tagllm.serialization import read_tag

    folders = tag_folders(tagdir)
    read = [read_tag(d) for d in folders]  # every file verified before a model loads
    m = None
    if model:
        from tagllm.model import TaggedModel

        m = TaggedModel.from_pretrained(model)
    for d, (meta, tensors) in zip(folders, read, strict=True):
        if len(folders) > 1:
            console.rule(str(d), style="bold")
        if full:
            console.print_json(json.dumps(meta))
        console.print(tag_summary(meta, tensors))
        console.print("[green]files verified: schema, checksum, shapes, finite values[/green]")
        if m is None:
            console.print("pass --model to check the base-model fingerprint against a "
                          "loaded model")
            continue
        m.load_tag(d)
        if meta["base_model"].get("fingerprint_of") == "weights":
            console.print(f"[green]fingerprint matches base model {m.model_name!r} "
                          f"({m.fingerprint}, every weight)[/green]")
        else:
            console.print(f"[yellow]input-embedding fingerprint matches base model "
                          f"{m.model_name!r} ({m.embedding_fingerprint}); a tag file of an "
                          "older tagllm: the other weights cannot be checked[/yellow]")


def report(runs: str, html: str | None = "report.html", markdown: str | None = None,
           title: str = "tagllm results", preamble: str | None = None) -> None:
    """Results pages generated from results files: one self-contained HTML page (plots
    embedded, no external URL) and/or Markdown with its plots beside it.

    Usage: tagllm report RUN [RUN ...] [--html report.html] [--markdown docs/results.md]

    Per evaluation: every method (the tags, each baseline, the untrained-tag ablation) with
    its metrics, the paired-bootstrap 95% interval of tags minus the method, trainable
    parameters and wall time; plots of the learning curves, predicted vs true (or the ROC
    curve), and every comparison's interval; for an ablations file the metric against the
    tag length p with its spread.

    Args:
        runs: run folders of `tagllm run` (or their results.json), `tagllm evaluate
            --json_out` files, or benchmarks/ablations.py JSON; comma-separated, or given
            as the first arguments.
        html: the HTML page to write (none: skip it).
        markdown: also a Markdown page; its plots go to img/NAME/ beside it.
        title: the pages' title.
        preamble: a Markdown file whose text opens the Markdown page (e.g. how to read it).
    """
    from tagllm.publish import write_report

    paths = [p.strip() for p in runs.split(",") if p.strip()]
    inputs = [f for p in paths for f in ([p] if not Path(p).is_dir() else
                                          [*Path(p).glob("*.json"), *Path(p).glob("*.md")])]
    for flag, out in (("--html", html), ("--markdown", markdown)):
        if out:
            check_output([*inputs, preamble or ""], out, flag)
    intro = ""
    if preamble:
        if not Path(preamble).is_file():
            raise DataError(f"{preamble}: no such preamble file")
        intro = Path(preamble).read_text()
    for f in write_report(paths, html, markdown, title, intro):
        console.print(f"wrote {f}")


#: the flags predict and embed share: model, batching, dtype, chunks and engines (one text
#: for both --help pages)
SCREEN_ARGS = """model: base model the tags were trained for (default: the one their tag files
            record).
        batch_size: inputs per forward pass.
        max_length: longest input in tokens (longer inputs are an error).
        skip_invalid: drop invalid rows (reported) instead of stopping.
        progress: show a progress bar.
        dtype: the base model's weights: float32, bfloat16 (half the memory) or int8 (the
            decoder's linear layers quantised dynamically, CPU only; a quarter of their
            memory); bfloat16's effect on speed and on the metric: docs/performance.md.
        chunk_rows: rows per chunk, the unit that is shared among processes, kept and
            resumed.
        engine: processes (this one, or those torchrun / accelerate launch started) or
            ray (needs `pip install 'tagllm[ray]'`).
        workers: Ray actors, each loading the model once (--engine ray).
        gpus_per_worker: GPUs per Ray actor (default: 1 where the cluster has a GPU for
            each worker, else 0).
        ray_address: the Ray cluster to use ("auto": the one this node belongs to);
            default: a new local Ray instance, started and stopped here."""
#: what a tags argument accepts, with the shipped tags' names from their registry
TAGS_HELP = ("tag folders (comma-separated), a folder of tag folders, Hub repo ids (ORG/NAME), "
             f"or shipped tags by name ({', '.join(SHIPPED)})")
# --data and --tags help list the registries, never a hand copy
for _fn in (train, evaluate, predict, embed, generate, serve, export):
    _fn.__doc__ = (_fn.__doc__ or "").replace("SCREEN_ARGS", SCREEN_ARGS).replace(
        "SOURCES_LIST", sources_summary()).replace(
        "TAGS_HELP", TAGS_HELP).replace("LABEL_BASELINES", ", ".join(
            baseline_keys("label"))).replace("DEFAULT_BASELINES", ", ".join(
                baseline_keys("label", with_model=False)))

COMMANDS = {"run": run, "list": list_tags, "gc": gc, "push": push, "train": train,
            "predict": predict, "embed": embed, "evaluate": evaluate, "generate": generate,
            "inspect": inspect, "report": report, "serve": serve, "export": export}
#: Commands whose first arguments may be given without their flags.
POSITIONAL = {"inspect": ("--tagdir",), "run": ("--recipe",),
              "push": ("--tagdir", "--repo_id")}


def cli_reference(width: int = 100) -> str:
    """docs/cli.md: every command's own ``--help`` at ``width`` columns, in one Markdown
    page (``make docs`` writes it; a test fails when it is stale)."""
    import contextlib
    import io

    def help_text(args: list[str]) -> str:
        out = io.StringIO()
        old, argv0 = os.environ.get("COLUMNS"), sys.argv[0]
        os.environ["COLUMNS"], sys.argv[0] = str(width), "tagllm"  # as a user's shell runs it
        try:
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main([*args, "--help"])
        finally:
            sys.argv[0] = argv0
            os.environ.pop("COLUMNS") if old is None else os.environ.update(COLUMNS=old)
        return out.getvalue().rstrip()

    parts = ["# Command-line reference", "",
             "Generated from the commands' own `--help` by `make docs`; do not edit by hand. "
             "Flags accept `--a_b` and `--a-b`; a bare boolean flag means true.", "",
             "```text", help_text([]), "```"]
    for name in COMMANDS:
        parts += ["", f"## tagllm {name}", "", "```text", help_text([name]), "```"]
    return "\n".join(parts) + "\n"


#: the generated block of docs/tasks.md, between these lines
TASKS_BEGIN = "<!-- sources: generated by `make docs` from tagllm.sources.SOURCES -->"
TASKS_END = "<!-- /sources -->"


def tasks_page(page: str) -> str:
    """docs/tasks.md ``page`` with its block of built-in sources regenerated."""
    head, sep, rest = page.partition(TASKS_BEGIN)
    _, sep2, tail = rest.partition(TASKS_END)
    if not (sep and sep2):
        raise ValueError(f"docs/tasks.md lacks the lines {TASKS_BEGIN} and {TASKS_END}")
    return f"{head}{TASKS_BEGIN}\n{sources_table()}\n{TASKS_END}{tail}"


def write_docs(root: str | Path = ".") -> None:
    """``make docs``: docs/cli.md and the sources table of docs/tasks.md, from the code, and
    the README's results table from the newest results file."""
    from tagllm.publish import readme_page

    docs = Path(root) / "docs"
    atomic_write_text(docs / "cli.md", cli_reference())
    atomic_write_text(docs / "tasks.md", tasks_page((docs / "tasks.md").read_text()))
    readme = Path(root) / "README.md"
    atomic_write_text(readme, readme_page(readme.read_text(), root))


def _normalise_args(args: list[str]) -> list[str]:
    """``--dry-run`` == ``--dry_run``; a bare boolean flag means true (``--dry_run``);
    ``tagllm inspect TAGDIR`` == ``tagllm inspect --tagdir TAGDIR``; ``tagllm push TAGDIR
    REPO`` == ``tagllm push --tagdir TAGDIR --repo_id REPO``."""
    fn = COMMANDS.get(args[0]) if args else None
    bools = {n for n, p in _inspect.signature(fn).parameters.items()
             if p.annotation in (bool, "bool")} if fn else set()
    out = []
    for i, a in enumerate(args):
        if a.startswith("--") and "=" not in a:
            a = "--" + a[2:].replace("-", "_")
            nxt = args[i + 1] if i + 1 < len(args) else None
            if a[2:] in bools and (nxt is None or nxt.startswith("-")):
                a += "=true"
        out.append(a)
    if out[:1] == ["report"]:  # tagllm report RUN RUN ... == --runs RUN,RUN
        lead = next((i for i, a in enumerate(out[1:], 1) if a.startswith("-")), len(out))
        if lead > 1:
            out = ["report", "--runs", ",".join(out[1:lead]), *out[lead:]]
    for i, flag in enumerate(POSITIONAL.get(out[0], ()) if out else ()):
        j = 1 + 2 * i
        if len(out) > j and not out[j].startswith("-"):
            out.insert(j, flag)
    return out


def _terminated(signum: int, frame: object) -> None:
    err.print("[yellow]terminated[/yellow] (SIGTERM)")
    raise SystemExit(128 + signum)


#: OSErrors that are the machine's, not tagllm's: printed in one line (exit 2)
ENVIRONMENT_ERRNOS = WRITE_ERRNOS | {errno.ENOENT, errno.EISDIR, errno.ENOTDIR}


def main(argv: list[str] | None = None) -> None:
    """The ``tagllm`` entry point."""
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C: every writer removes its temporary file on the way out
    # (training and serve install their own handlers while they run)
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    args = _normalise_args(list(sys.argv[1:] if argv is None else argv))
    try:
        CLI(COMMANDS, args=args, as_positional=False,
            description="tagllm: learned input tags for a frozen causal LM (Tag-LLM)")
    except TagllmError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow] (`tagllm run` keeps the checkpoint of the "
                  "stage in training: the same command resumes it)")
        sys.exit(130)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            # the file system's refusal (full, a limit, permissions, a missing path): the
            # message names the file, no traceback
            name = f": {e.filename}" if e.filename and str(e.filename) not in str(e) else ""
            err.print(f"[red]error:[/red] {escape(str(e.strerror or e) + name)}",
                      highlight=False, soft_wrap=True)
            sys.exit(2)
        import traceback

        traceback.print_exc()
        err.print(f"[red]{BUG}[/red]", highlight=False, soft_wrap=True)
        sys.exit(1)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)

if __name__ == "__main__":
    main()
