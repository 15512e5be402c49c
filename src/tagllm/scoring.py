"""The one evaluation path: ``tagllm run`` (after each stage) and ``tagllm evaluate`` (saved
tags on a data source) both call :func:`evaluate`, so the same entry gives the same rows,
metrics and baseline names either way.

An entry (:class:`~tagllm.config.EvalConfig`) is one of three kinds: with ``label``, a
function tag's head predicts and its own metrics score the predictions; with
``reference``, the model generates greedily from each input up to a line break, scored
with BLEU and chrF; otherwise the next-token loss of the inputs. Beside the tags, every
requested baseline (:mod:`tagllm.evaluation.baselines`) that can run on the rows is fitted
and scored with the same metrics; one that cannot is skipped with the reason logged. For a
head, each comparison also carries the paired bootstrap 95% interval of the difference
(tags minus method, on the same rows; BLEU and chrF by sentence for generation), and the
row keeps the tags' predictions or outputs. Under a
multi-process launch each process predicts a share of the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tagllm.config import EvalConfig, TrainConfig
from tagllm.costs import phase
from tagllm.distributed import world
from tagllm.evaluation.baselines import BASELINES, FineTune, Rows, Task
from tagllm.evaluation.metrics import (
    first_line,
    paired_bootstrap,
    translation_bootstrap,
    translation_metrics,
)
from tagllm.heads import build_head
from tagllm.model import TaggedModel
from tagllm.prefix import FrozenPrefix
from tagllm.progress import track
from tagllm.records import EvalResult, MethodCost, MethodScore
from tagllm.tags import tag_as_words
from tagllm.training.steps import train_module
from tagllm.training.warm_start import tag_features

Log = Callable[[str], None]


def evaluate(model: TaggedModel, spec: EvalConfig, test: Rows, train: Rows | None = None, *,
             name: str, tag: str | None = None, max_length: int | None = None,
             batch_size: int = 32, baselines: bool = True, progress: bool = False,
             log: Log = print, budget: TrainConfig | None = None,
             prefix: FrozenPrefix | None = None) -> EvalResult:
    """One result for ``spec`` on ``test``: the tags' ``metrics`` and every baseline's
    scores (``methods``: its metrics, the interval of tags minus it, its cost); for a head,
    its ``tag`` (default: the function tag of the first input), ``predictions`` and
    ``targets``; for generation every output (``outputs``) and the first three with their
    inputs and references (``examples``).
    ``train`` rows feed the baselines that learn; the fine-tuning ones (PEFT) get the steps,
    batch size and seed of ``budget`` (the stage's training; default 200 steps of 32).
    ``prefix``: a frozen-prefix cache whose prefixes end before ``tag`` (the stage's):
    the head's predictions run only the part from the tag on, and the cache keeps the
    test rows' prefixes for the next evaluation of the same rows (the trained tag after its
    ablation)."""
    if spec.label:
        tag = tag or model.function_tag_of(test.texts[0])
        return labelled(model, spec, test, train, tag, name, batch_size, baselines, progress,
                        log, budget, prefix)
    if spec.reference:
        return generation(model, spec, test, name, batch_size, baselines, progress, log)
    with phase("evaluation"):
        metrics = lm_metrics(model, test.texts, max_length=max_length, progress=progress)
    return EvalResult("loss", name, len(test.texts), metrics)


def labelled(model: TaggedModel, spec: EvalConfig, test: Rows, train: Rows | None, tag: str,
             name: str, batch_size: int, baselines: bool, progress: bool, log: Log,
             budget: TrainConfig | None = None, prefix: FrozenPrefix | None = None
             ) -> EvalResult:
    """The head of ``tag`` scored by its own metrics, beside the label baselines."""
    head = model.head(tag)
    with phase("evaluation"):
        preds = predictions(model, test.texts, tag, batch_size, progress, prefix)
    row = EvalResult("head", name, len(test.texts), head.metrics(test.targets, preds), tag,
                     predictions=preds.tolist(), targets=np.asarray(test.targets).tolist(),
                     # the tag's vectors and its head: what training fits
                     trainable_parameters=sum(p.numel() for p in [
                         *model.bank.tag_parameters(tag), *head.parameters()]))
    if baselines and spec.baselines:
        b = budget or TrainConfig(steps=200, batch_size=32)
        def new_head():  # the PEFT methods get the tags' own kind of head
            return build_head(head.kind, model.hidden_size, head.num_outputs, head.loss_name)

        tune = None if model.sharded else FineTune(
            model.base, model.tokenizer, new_head, train_module, b.steps, b.batch_size,
            b.seed, validation=b.validation, eval_every=b.eval_every)
        layer = model.readout(tag)[0]  # the probe reads the layer the head reads
        task = Task(classes=head.classes, features=lambda texts: frozen_features(
            model, texts, batch_size, progress, layer), tag_names=tuple(model.bank.names),
            tag_words={n: tag_as_words(model.bank.configs[n]) for n in model.bank.names},
            finetune=tune)
        with phase("baselines"):
            found, costs = compare(spec.baselines, task, train, test, log)
        row.methods = {k: MethodScore(head.metrics(test.targets, p), paired_bootstrap(
            test.targets, preds, p, head.metrics), costs[k]) for k, p in found.items()}
    return row


def generation(model: TaggedModel, spec: EvalConfig, test: Rows, name: str, batch_size: int,
               baselines: bool, progress: bool, log: Log) -> EvalResult:
    """Greedy generation from each input, cut at its first line break, scored against the
    reference column with sacrebleu, beside the text baselines."""
    refs = test.table[spec.reference]

    def generate(texts: list[str]) -> list[str]:
        return [first_line(t) for t in model.generate(
            texts, max_new_tokens=spec.max_new_tokens, batch_size=batch_size, stop=["\n"],
            progress=progress)]

    def score(hyps: Sequence[str]) -> dict[str, float]:
        return translation_metrics(hyps, refs, spec.spm_model)

    with phase("evaluation"):
        hyps = generate(test.texts)
    # what training fits: the vectors of the function tags in the input (the LM head that
    # generates is the frozen model's own)
    fitted = [t for t in dict.fromkeys(model.tagtok.encode(test.texts[0]).tags)
              if model.bank.configs[t].kind == "function"]
    row = EvalResult("generation", name, len(test.texts), score(hyps),
                     trainable_parameters=sum(model.bank.configs[t].num_tokens
                                              for t in fitted) * model.hidden_size,
                     outputs=hyps, examples=[{"input": test.texts[i], "output": hyps[i],
                                              "reference": refs[i]}
                                             for i in range(min(3, len(hyps)))])
    if baselines and spec.baselines:
        task = Task(source_column=spec.source_column, prompt=spec.prompt, generate=generate)
        with phase("baselines"):
            found, costs = compare(spec.baselines, task, None, test, log)
        row.methods = {k: MethodScore(score(p), translation_bootstrap(refs, hyps, p), costs[k])
                       for k, p in found.items()}
    return row


def compare(keys: Sequence[str], task: Task, train: Rows | None, test: Rows,
            log: Log = print) -> tuple[dict[str, np.ndarray | list[str]], dict[str, MethodCost]]:
    """Each requested baseline (in registry order) fitted on ``train``: its name -> its
    predictions for ``test``, and its name -> its cost (seconds to fit and predict,
    trainable parameters, None for non-parametric methods) and what it chose while
    fitting; those that cannot run are skipped with the reason logged."""
    out: dict[str, np.ndarray | list[str]] = {}
    costs: dict[str, MethodCost] = {}
    for key in [k for k in BASELINES if k in keys]:
        method = BASELINES[key](task)
        why = ("needs training rows" if method.needs_train and train is None
               else method.unavailable(train, test))
        if why:
            log(f"baseline {key} skipped: {why}")
            continue
        t0 = time.perf_counter()
        method.fit(train)
        pred = method.predict(test)
        name = method.name(train, test)
        out[name] = pred
        costs[name] = MethodCost(key, round(time.perf_counter() - t0, 2), method.parameters,
                                 method.details())
    return out, costs


def predictions(model: TaggedModel, texts: Sequence[str], tag: str, batch_size: int = 32,
                progress: bool = False, prefix: FrozenPrefix | None = None) -> np.ndarray:
    """The head's predictions for ``texts`` (each process predicts a share of them), through
    ``prefix`` (see :func:`evaluate`) when given."""
    texts = list(texts)
    if prefix is None:
        return world().on_shares(len(texts), lambda idx: model.predict(
            [texts[i] for i in idx], tag=tag, batch_size=batch_size, progress=progress)
        ).numpy()
    head = model.head(tag)

    @torch.no_grad()  # not inference_mode: kept prefixes may later enter training's graph
    def share(idx: list[int]) -> torch.Tensor:
        ids = [e.ids for e in model.tagtok.encode_batch([texts[i] for i in idx])]
        feats = tag_features(model, tag, ids, batch_size, progress, prefix,
                             label=f"predicting with {tag}")
        return head.postprocess(head(feats.to(model.device))).float().cpu()

    return world().on_shares(len(texts), share).numpy()


def frozen_features(model: TaggedModel, texts: Sequence[str], batch_size: int = 32,
                    progress: bool = False, layer: int = -1) -> np.ndarray:
    """The frozen model's pooled features of untagged ``texts`` at ``layer`` (the linear
    probe's), each process computing a share."""
    texts = list(texts)
    return world().on_shares(len(texts), lambda idx: model.text_features(
        [texts[i] for i in idx], batch_size=batch_size, progress=progress, layer=layer)
    ).numpy()


def lm_metrics(model: TaggedModel, texts: Sequence[str], batch_size: int = 16,
               max_length: int | None = None, progress: bool = False) -> dict[str, float]:
    """Next-token loss (mean over every predicted base token) and perplexity on ``texts``
    (under a multi-process launch each process scores a share of the texts)."""
    texts = list(texts)

    def score(idx: list[int]) -> np.ndarray:  # per text: (loss sum, target count)
        rows = np.zeros((len(idx), 2))
        order = sorted(range(len(idx)), key=lambda j: len(texts[idx[j]]))
        with torch.inference_mode():
            for s in track(range(0, len(idx), batch_size), "validation loss", progress,
                           unit="batch"):
                js = order[s:s + batch_size]
                batch = model.encode([texts[idx[j]] for j in js], max_length=max_length)
                rows[js, 0] = model.lm_loss(batch, reduction="row").double().cpu().numpy()
                rows[js, 1] = model.lm_targets(batch).sum(1).cpu().numpy()
        return rows

    total, count = world().on_shares(len(texts), score).numpy().sum(0)
    loss = total / max(count, 1)
    return {"loss": float(loss), "perplexity": float(np.exp(loss)), "tokens": int(count)}
