"""The ``tagllm`` command line, made from typed functions (jsonargparse).

Every flag has a type, a default and help taken from the docstrings below.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from rich.console import Console

console = Console(emoji=False)
err = Console(stderr=True, emoji=False)


def _log(msg: str) -> None:
    err.print(f"[dim]{msg}[/dim]", highlight=False)


def tag_dirs(spec: str | None) -> list[Path]:
    """Comma-separated tag folders; a folder of tag folders stands for all of them."""
    from tagllm.serialization import META

    dirs: list[Path] = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        p = Path(part.strip())
        if p.is_dir() and not (p / META).exists():
            subs = sorted(d for d in p.iterdir() if (d / META).is_file())
            if subs:
                dirs.extend(subs)
                continue
        dirs.append(p)
    return dirs


def run(
    recipe: str,
    dry_run: bool = False,
    store: str | None = None,
    progress: bool = True,
    fsdp: bool | None = None,
) -> None:
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
    """
    from tagllm.distributed import world
    from tagllm.protocol import run as run_recipe
    from tagllm.recipe import load_recipe
    from tagllm.report import stage_tables
    from tagllm.store import TagStore

    r = load_recipe(recipe)  # every recipe error surfaces here, before any model loads
    summary = run_recipe(r, TagStore(store), dry_run=dry_run, log=_log, progress=progress,
                         show=console.print, fsdp=fsdp)
    if dry_run or not world().is_main:  # under a multi-process launch, one process reports
        return
    for table in stage_tables(summary.stages):
        console.print(table)
    trained = [s["stage"] for s in summary.stages if not s["cached"]]
    console.print(f"trained {len(trained)} stage(s) ({summary.steps_run} steps), reused "
                  f"{len(summary.stages) - len(trained)}; tags in {Path(r.out) / 'tags'}, "
                  f"results in {Path(r.out) / 'results.json'}; {summary.seconds:.0f} s")


def list_tags(store: str | None = None, verify: bool = False) -> None:
    """Show the tag store as a table: name, kind, p, base model, metric, key, date.

    Args:
        store: the tag store folder (default $TAGLLM_STORE or $TAGLLM_HOME/store).
        verify: also verify every entry's files (schema, checksum, shapes).
    """
    from rich.table import Table as RichTable

    from tagllm.store import TagStore

    st = TagStore(store)
    rows = st.entries()
    table = RichTable(title=f"tag store {st.root}: {len(rows)} tag(s)")
    for col in ("name", "kind", "p", "base model", "metric", "recipe/stage", "key", "created"):
        table.add_column(col)
    for r in rows:
        status = ""
        if verify:
            try:
                st.verify(r["key"])
                status = " [green]ok[/green]"
            except ValueError as e:
                status = f" [red]{e}[/red]"
        table.add_row(str(r.get("name")), str(r.get("kind")), str(r.get("num_tokens")),
                      str(r.get("base_model")), str(r.get("metric", "")),
                      f"{r.get('recipe')}/{r.get('stage')}", r["key"] + status,
                      str(r.get("created", "")))
    console.print(table)


def train(
    tag: str,
    data: str,
    template: str,
    out: str,
    kind: Literal["domain", "function"] = "domain",
    head: Literal["none", "regression", "classification"] = "none",
    label: str | None = None,
    num_outputs: int = 1,
    num_tokens: int = 10,
    load: str | None = None,
    model: str = "smollm2",
    n_examples: int | None = None,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    head_lr: float = 1e-3,
    warmup_steps: int = 10,
    max_length: int = 256,
    warm_start: bool = True,
    seed: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> None:
    """Train one tag (one stage) with every other tag and the base model frozen.

    Stage 1 (domain tag, next-token prediction):
      tagllm train --tag '<SMILES>' --data moses:train --n_examples 2000
        --template '<SMILES> {smiles}' --out tags/SMILES
    Stage 2 (function tag with a head, domain tags loaded frozen):
      tagllm train --tag '<QED>' --kind function --head regression --label qed
        --data moses:train --template '<SMILES> {smiles} <QED>' --load tags/SMILES --out tags/QED

    Args:
        tag: the new tag's name, e.g. <SMILES>.
        data: a CSV/TSV/.smi file, or a built-in source: moses:train, moses:test.
        template: the input text per row, with {column} placeholders.
        out: the tag folder to write (atomically).
        kind: domain or function.
        head: head of a function tag: none (next-token loss), regression or classification.
        label: the label column (required with a head).
        num_outputs: regression outputs or number of classes.
        num_tokens: p, the number of vectors of the tag.
        load: tag folders to load, frozen, comma-separated (e.g. the stage-1 domain tags).
        model: base model: embedded short name (smollm2, gemma3), Hugging Face id or local
            folder.
        n_examples: use a seeded random sample of this many rows.
        steps: optimizer steps.
        batch_size: examples per step.
        lr: peak learning rate of the tag (cosine schedule with warm-up).
        head_lr: peak learning rate of the head.
        warmup_steps: linear warm-up steps.
        max_length: longest input in tokens (longer inputs are an error, never truncated).
        warm_start: fit the head in closed form on frozen features before training.
        seed: random seed.
        skip_invalid: drop invalid rows (reported) instead of stopping at the first one.
        progress: show progress bars.
    """
    from tagllm.config import HeadConfig, TagConfig, TrainConfig
    from tagllm.data import parse_labels
    from tagllm.model import TaggedModel
    from tagllm.sources import load_source
    from tagllm.train import fit_tag

    if head != "none" and not label:
        raise ValueError("--label is required with a head")
    if head != "none" and kind != "function":
        raise ValueError("only function tags own heads: add --kind function")
    cfg = TagConfig(tag, kind=kind, num_tokens=num_tokens,
                    head=None if head == "none" else HeadConfig(head, num_outputs))
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, head_lr=head_lr,
                       warmup_steps=warmup_steps, max_length=max_length, seed=seed,
                       warm_start_head=warm_start)
    table, skipped = load_source(data, n_examples, seed, label=label if head != "none" else None,
                                 skip_invalid=skip_invalid, progress=progress)
    _report_skipped(skipped)
    m = TaggedModel.from_pretrained(model, tags=tag_dirs(load))
    m.add_tag(cfg, seed=seed)
    texts = table.render(template)
    targets = parse_labels(table, label) if head != "none" else None
    result = fit_tag(m, tag, texts, targets, cfg=tcfg, progress=progress, log=_log)
    path = m.save_tag(tag, out, trained_with=m.bank.names, provenance={
        "data": data, "n_examples": len(table), "template": template, "label": label,
        "train": tcfg.to_dict(), "final_loss": result.final_loss,
        "warm_start": result.warm_start, "seconds": round(result.seconds, 1)})
    console.print(f"wrote {path} (final loss {result.final_loss:.4f}, {result.seconds:.0f} s)")


def _report_skipped(skipped: list[str]) -> None:
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} invalid row(s):[/yellow]")
        for msg in skipped[:20]:
            err.print(f"  {msg}", highlight=False)
        if len(skipped) > 20:
            err.print(f"  ... and {len(skipped) - 20} more")


def predict(
    tags: str,
    input: str,
    output: str,
    template: str = "<SMILES> {smiles} <QED>",
    tag: str | None = None,
    model: str = "smollm2",
    batch_size: int = 32,
    max_length: int = 512,
    skip_invalid: bool = False,
    progress: bool = True,
) -> None:
    """Predict with a function tag's head: CSV/TSV/.smi in, CSV with predictions out.

    The output keeps the input columns and adds `prediction` (one output), `prediction_K`
    (several outputs) or `prob_K` (class probabilities). A CSV/TSV/.smi input is read,
    checked, predicted and written in chunks, so memory stays flat however long the file;
    the output appears atomically when every row is done.

    Args:
        tags: tag folders to load, comma-separated, or a folder of tag folders.
        input: CSV/TSV (with a header) or .smi file.
        output: CSV file to write.
        template: input text per row, with {column} placeholders.
        tag: the function tag whose head predicts (default: the one in the template).
        model: base model the tags were trained for.
        batch_size: inputs per forward pass.
        max_length: longest input in tokens (longer inputs are an error).
        skip_invalid: drop invalid rows (reported) instead of stopping.
        progress: show a progress bar.
    """
    from tagllm.model import TaggedModel
    from tagllm.progress import bar
    from tagllm.sources import stream_source

    m = TaggedModel.from_pretrained(model, tags=tag_dirs(tags))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    chunk = 32 * batch_size  # read, check, predict and write the file chunk by chunk
    written = 0
    pbar = bar(None, "predicting", progress, unit="row")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            for table, skipped in stream_source(input, chunk, skip_invalid, progress):
                _report_skipped(skipped)
                if not len(table):
                    continue
                texts = table.render(template)
                if not written:  # the first rows fix the tag, the head and the header
                    tag = tag or m.function_tag_of(texts[0])
                    head = m.head(tag)
                    prefix = "prob" if head.kind == "classification" else "prediction"
                    names = [prefix] if head.num_outputs == 1 and prefix == "prediction" \
                        else [f"{prefix}_{k}" for k in range(head.num_outputs)]
                    w.writerow([*table.columns, *names])
                preds = m.predict(texts, tag=tag, batch_size=batch_size, max_length=max_length)
                for j, row in enumerate(preds):
                    w.writerow([*(table.columns[c][j] for c in table.columns),
                                *(f"{x:.6g}" for x in row)])
                written += len(texts)
                pbar.update(len(texts))
        if not written:
            raise ValueError(f"{input}: no rows to predict")
        os.replace(tmp, out)
    finally:
        pbar.close()
        tmp.unlink(missing_ok=True)
    console.print(f"wrote {written} predictions to {out}")


def evaluate(
    tags: str,
    data: str,
    label: str | None = None,
    template: str = "<SMILES> {smiles} <QED>",
    tag: str | None = None,
    model: str = "smollm2",
    n_examples: int | None = None,
    baseline_train: str | None = None,
    baseline_examples: int = 3000,
    reference: str | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 128,
    spm_model: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
    skip_invalid: bool = False,
    json_out: str | None = None,
    progress: bool = True,
) -> None:
    """Evaluate a function tag on a labelled split, with the metrics of its head, or a
    generating tag (e.g. <Translate>) against reference texts with BLEU and chrF.

    Regression heads: MSE, MAE, Pearson, Spearman (averaged over outputs); classification
    heads: accuracy and AUROC. With --baseline_train (e.g. moses:train) the table adds a
    k-NN (Morgan fingerprints for a `smiles` column, 3-mer profiles for a `sequence`
    column) and the training mean / class frequencies. With --reference the template is
    continued greedily up to a line break and scored beside copying the `source` column
    and, with --prompt, the same model prompted in plain text.

    Args:
        tags: tag folders to load, comma-separated, or a folder of tag folders.
        data: labelled CSV/TSV or a built-in source (moses:test, nci:test, proteins:test,
            bible:es-pt:test, flores:SRC-TGT:SPLIT:DIR, ...).
        label: the label column(s), comma-separated for several outputs (or a source's
            group such as `descriptors`).
        template: input text per row, with {column} placeholders.
        tag: the function tag whose head predicts (default: the one in the template).
        model: base model the tags were trained for.
        n_examples: evaluate a seeded random sample of this many rows.
        baseline_train: training data for the baselines (k-NN, mean).
        baseline_examples: rows of baseline_train to use.
        reference: column of reference texts: a generation evaluation instead of a head's.
        prompt: plain-text prompt template (no tags) for the prompt baseline.
        max_new_tokens: generation length limit.
        spm_model: local SentencePiece model file: also report spBLEU.
        batch_size: inputs per forward pass.
        seed: random seed for the samples.
        skip_invalid: drop invalid rows (reported) instead of stopping.
        json_out: also write the metrics to this JSON file.
        progress: show progress bars.
    """
    from tagllm.data import parse_labels
    from tagllm.evaluate import (
        KNN_INPUTS,
        classification_metrics,
        first_line,
        head_metrics,
        knn_baseline,
        mean_baseline,
        regression_metrics,
        translation_metrics,
    )
    from tagllm.model import TaggedModel
    from tagllm.report import results_table
    from tagllm.sources import label_columns, load_source

    if (label is None) == (reference is None):
        raise ValueError("give --label (a head's target) or --reference (generated text)")
    labels = label_columns(data, label.split(",") if label and "," in label else label)
    table, skipped = load_source(data, n_examples, seed, label=labels or None,
                                 skip_invalid=skip_invalid, progress=progress)
    _report_skipped(skipped)
    m = TaggedModel.from_pretrained(model, tags=tag_dirs(tags))
    texts = table.render(template)
    if reference:
        def gen(x: list[str]) -> list[str]:
            return [first_line(t) for t in m.generate(x, max_new_tokens, batch_size=batch_size,
                                                      stop=["\n"], progress=progress)]

        refs = table[reference]
        results = {"tags": translation_metrics(gen(texts), refs, spm_model)}
        if "source" in table.columns:
            results["copy the source"] = translation_metrics(table["source"], refs, spm_model)
        if prompt:
            results["plain-text prompt (no tags)"] = translation_metrics(
                gen(table.render(prompt)), refs, spm_model)
    else:
        y = parse_labels(table, labels[0] if len(labels) == 1 else labels)
        tag = tag or m.function_tag_of(texts[0])
        head = m.head(tag)
        classes = head.num_outputs if head.kind == "classification" else 0
        score = classification_metrics if classes else regression_metrics
        results = {f"tags ({tag})": head_metrics(m, texts, y, tag, batch_size, progress)}
        if baseline_train:
            train_t, _ = load_source(baseline_train, baseline_examples, seed, label=labels,
                                     exclude_smiles=table.columns.get("smiles", []),
                                     exclude_sequences=table.columns.get("sequence", []),
                                     progress=progress)
            y_tr = parse_labels(train_t, labels[0] if len(labels) == 1 else labels)
            inputs = [c for c in KNN_INPUTS if c in table.columns and c in train_t.columns]
            if len(inputs) == 1:
                results[f"{inputs[0]} k-NN (k=5)"] = score(y, knn_baseline(
                    train_t[inputs[0]], y_tr, table[inputs[0]], column=inputs[0],
                    classes=classes))
            results["training class frequencies" if classes else "training mean"] = score(
                y, mean_baseline(y_tr, len(y), classes))
    console.print(results_table(results, f"{data}: {len(texts)} examples"))
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")


def generate(
    prompt: str,
    tags: str | None = None,
    model: str = "smollm2",
    max_new_tokens: int = 64,
) -> None:
    """Continue a prompt greedily with the frozen LM head (KV cache), tags spliced in.

    Args:
        prompt: the input text, which may contain loaded tags.
        tags: tag folders to load, comma-separated, or a folder of tag folders.
        model: base model the tags were trained for.
        max_new_tokens: tokens to generate.
    """
    from tagllm.model import TaggedModel

    m = TaggedModel.from_pretrained(model, tags=tag_dirs(tags))
    console.print(m.generate([prompt], max_new_tokens)[0], highlight=False, markup=False)


def inspect(tagdir: str, model: str | None = None) -> None:
    """Show a tag folder: tag.json, tensor shapes, base model, and verify it.

    Usage: tagllm inspect TAGDIR [--model MODEL]

    The files are always verified (schema, checksum, shapes, finite values). With --model
    the base model is loaded and the tag's embedding fingerprint is checked against it.

    Args:
        tagdir: the tag folder.
        model: also check that the tag fits this base model (short name, id or folder).
    """
    from safetensors import safe_open

    from tagllm.serialization import TENSORS, read_tag

    meta, tensors = read_tag(tagdir)
    console.print_json(json.dumps(meta))
    with safe_open(str(Path(tagdir) / TENSORS), "pt") as f:
        for k in f.keys():
            console.print(f"tensor {k}: {tuple(tensors[k].shape)} {tensors[k].dtype}")
    console.print("[green]files verified: schema, checksum, shapes, finite values[/green]")
    if model:
        from tagllm.model import TaggedModel

        m = TaggedModel.from_pretrained(model)
        m.load_tag(tagdir)
        console.print(f"[green]fingerprint matches base model {m.model_name!r} "
                      f"({m.fingerprint})[/green]")
    else:
        console.print(f"base model: {meta['base_model'].get('name')} "
                      f"(fingerprint {meta['base_model'].get('fingerprint')}); "
                      "pass --model to check it against a loaded model")


COMMANDS = {"run": run, "list": list_tags, "train": train, "predict": predict,
            "evaluate": evaluate, "generate": generate, "inspect": inspect}
#: Commands whose first argument may be given without its flag.
POSITIONAL = {"inspect": "--tagdir", "run": "--recipe"}


def _normalise_args(args: list[str]) -> list[str]:
    """``--dry-run`` == ``--dry_run``; a bare boolean flag means true (``--dry_run``)."""
    import inspect as _inspect

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
    return out


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tagllm.data import DataError
    from tagllm.recipe import RecipeError
    from tagllm.serialization import TagFileError
    from tagllm.tags import InputTooLongError, UnknownTagError

    args = _normalise_args(list(sys.argv[1:] if argv is None else argv))
    if len(args) > 1 and args[0] in POSITIONAL and not args[1].startswith("-"):
        args.insert(1, POSITIONAL[args[0]])  # `tagllm inspect TAGDIR`, `tagllm run RECIPE`
    try:
        CLI(COMMANDS, args=args, as_positional=False,
            description="tagllm: learned input tags for a frozen causal LM (Tag-LLM)")
    except (DataError, RecipeError, TagFileError, UnknownTagError, InputTooLongError, ValueError,
            FileNotFoundError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow] (`tagllm run` keeps the checkpoint of the "
                  "stage in training: the same command resumes it)")
        sys.exit(130)


if __name__ == "__main__":
    main()
