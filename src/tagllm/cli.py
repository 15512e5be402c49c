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

console = Console()
err = Console(stderr=True)


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


def demo(
    model: str = "smollm2",
    out: str = "runs/qed-demo",
    stage1_examples: int = 2000,
    stage1_steps: int = 40,
    train_examples: int = 4000,
    stage2_steps: int = 200,
    test_examples: int = 1000,
    num_tokens: int = 10,
    seed: int = 0,
    ablation: bool = True,
    progress: bool = True,
) -> None:
    """Run the QED pipeline end to end: stage 1 <SMILES>, stage 2 <QED>, test evaluation.

    Args:
        model: base model: embedded short name (smollm2), Hugging Face id or local folder.
        out: output folder (tag folders under out/tags, results.json).
        stage1_examples: MOSES training molecules for the <SMILES> domain tag.
        stage1_steps: optimizer steps of stage 1 (batch 16).
        train_examples: MOSES training molecules with QED labels for stage 2.
        stage2_steps: optimizer steps of stage 2 (batch 32), after the closed-form warm start
            of the head (ridge on the frozen features of all training molecules).
        test_examples: molecules sampled from MOSES's test file.
        num_tokens: p, vectors per tag.
        seed: random seed (data samples, initialisation, batches).
        ablation: also evaluate the untrained <QED> tag with its closed-form head.
        progress: show progress bars.
    """
    from tagllm.demo import QEDDemoConfig, results_table, run_qed_demo

    cfg = QEDDemoConfig(model=model, out=out, stage1_examples=stage1_examples,
                        stage1_steps=stage1_steps, train_examples=train_examples,
                        stage2_steps=stage2_steps, test_examples=test_examples,
                        num_tokens=num_tokens, seed=seed, ablation=ablation,
                        progress=progress)
    summary = run_qed_demo(cfg, log=_log)
    console.print(results_table(
        summary["results"],
        f"QED on MOSES test ({summary['n_test']} molecules; {summary['n_train']} training)"))
    console.print(f"tag folders: {', '.join(summary['tags'])}  (check with `tagllm inspect`)")
    console.print(f"results: {Path(out) / 'results.json'}; total {summary['seconds']:.0f} s")


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
        model: base model: embedded short name (smollm2), Hugging Face id or local folder.
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
    (several outputs) or `prob_K` (class probabilities). It is written atomically.

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
    from tagllm.progress import track
    from tagllm.sources import load_source

    table, skipped = load_source(input, skip_invalid=skip_invalid, progress=progress)
    _report_skipped(skipped)
    if not len(table):
        raise ValueError(f"{input}: no rows to predict")
    m = TaggedModel.from_pretrained(model, tags=tag_dirs(tags))
    texts = table.render(template)
    tag = tag or m.function_tag_of(texts[0])
    head = m.head(tag)
    n_out = head.num_outputs
    prefix = "prob" if head.kind == "classification" else "prediction"
    names = [prefix] if n_out == 1 and prefix == "prediction" else [
        f"{prefix}_{k}" for k in range(n_out)]
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    chunk = 32 * batch_size  # stream: predict and write chunk by chunk
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*table.columns, *names])
            starts = range(0, len(texts), chunk)
            for s in track(starts, f"predicting with {tag}", progress, unit="chunk"):
                preds = m.predict(texts[s:s + chunk], tag=tag, batch_size=batch_size,
                                  max_length=max_length)
                for i, row in enumerate(preds):
                    j = s + i
                    w.writerow([*(table.columns[c][j] for c in table.columns),
                                *(f"{x:.6g}" for x in row)])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"wrote {len(texts)} predictions to {out}")


def evaluate(
    tags: str,
    data: str,
    label: str,
    template: str = "<SMILES> {smiles} <QED>",
    tag: str | None = None,
    model: str = "smollm2",
    n_examples: int | None = None,
    baseline_train: str | None = None,
    baseline_examples: int = 3000,
    batch_size: int = 32,
    seed: int = 0,
    skip_invalid: bool = False,
    json_out: str | None = None,
    progress: bool = True,
) -> None:
    """Evaluate a regression tag on a labelled split: MSE, MAE, Pearson, Spearman.

    With --baseline_train (e.g. moses:train) the table adds a Morgan-fingerprint k-NN and the
    training-mean predictor fitted on that data, for molecule inputs (a `smiles` column).

    Args:
        tags: tag folders to load, comma-separated, or a folder of tag folders.
        data: labelled CSV/TSV, or moses:test.
        label: the label column.
        template: input text per row, with {column} placeholders.
        tag: the function tag whose head predicts (default: the one in the template).
        model: base model the tags were trained for.
        n_examples: evaluate a seeded random sample of this many rows.
        baseline_train: training data for the baselines (k-NN, mean).
        baseline_examples: rows of baseline_train to use.
        batch_size: inputs per forward pass.
        seed: random seed for the samples.
        skip_invalid: drop invalid rows (reported) instead of stopping.
        json_out: also write the metrics to this JSON file.
        progress: show progress bars.
    """
    from tagllm.data import parse_labels
    from tagllm.demo import results_table
    from tagllm.evaluate import knn_baseline, mean_baseline, regression_metrics
    from tagllm.model import TaggedModel
    from tagllm.sources import load_source

    table, skipped = load_source(data, n_examples, seed, label=label, skip_invalid=skip_invalid,
                                 progress=progress)
    _report_skipped(skipped)
    m = TaggedModel.from_pretrained(model, tags=tag_dirs(tags))
    texts = table.render(template)
    y = parse_labels(table, label)
    tag = tag or m.function_tag_of(texts[0])
    pred = m.predict(texts, tag=tag, batch_size=batch_size, progress=progress)[:, 0]
    results = {f"tags ({tag})": regression_metrics(y, pred)}
    if baseline_train:
        train_t, _ = load_source(baseline_train, baseline_examples, seed, label=label,
                                 exclude_smiles=table.columns.get("smiles", []),
                                 progress=progress)
        y_tr = parse_labels(train_t, label)
        if "smiles" in table.columns and "smiles" in train_t.columns:
            results["Morgan k-NN (k=5)"] = regression_metrics(
                y, knn_baseline(train_t["smiles"], y_tr, table["smiles"]))
        results["training mean"] = regression_metrics(y, mean_baseline(y_tr, len(y)))
    console.print(results_table(results, f"{data}: {len(y)} examples"))
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


COMMANDS = [demo, train, predict, evaluate, generate, inspect]


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tagllm.data import DataError
    from tagllm.serialization import TagFileError
    from tagllm.tags import InputTooLongError, UnknownTagError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 and args[0] == "inspect" and not args[1].startswith("-"):
        args.insert(1, "--tagdir")  # `tagllm inspect TAGDIR`
    try:
        CLI(COMMANDS, args=args, as_positional=False,
            description="tagllm: learned input tags for a frozen causal LM (Tag-LLM)")
    except (DataError, TagFileError, UnknownTagError, InputTooLongError, ValueError,
            FileNotFoundError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
