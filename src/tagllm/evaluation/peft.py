"""PEFT fine-tuning baselines: LoRA and prompt tuning on a copy of the frozen model, with a
head of the tags' own kind, trained in the tags' own step loop and selection protocol
(:class:`~tagllm.evaluation.registry.FineTune`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tagllm.evaluation.model_based import untagged
from tagllm.evaluation.registry import Baseline, Rows
from tagllm.records import JSONObject


class PeftBaseline(Baseline):
    """A PEFT method on the frozen model with the tags' own head (the same
    :mod:`tagllm.heads` class: a linear layer on the last layer's hidden state at the
    input's last token, standardised targets and MSE for values, cross-entropy for
    classes), fitted first in closed form on the starting features as the tags' head is,
    then trained with the adapter for the tags' steps and batch size (AdamW, linear warm-up,
    cosine decay). The input is the untagged text."""

    lr: ClassVar[float] = 1e-3
    head_lr: ClassVar[float] = 1e-3
    title: ClassVar[str] = ""
    uses_model = True

    def peft_config(self) -> Any:
        raise NotImplementedError

    def virtual_tokens(self) -> int:
        """Positions the method prepends to every input (0 for LoRA)."""
        return 0

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if self.task.finetune is None:
            return "needs the frozen base model"
        try:
            import peft  # noqa: F401
        except ImportError:
            return "needs the peft package (pip install peft)"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        count = getattr(self, "parameters", None)
        return self.title + (f" ({count:,} trainable parameters)" if count else "")

    def _features(self, model: Any, texts: Sequence[str]) -> Any:
        """(B, H) last-layer hidden states at each text's last token (right padding)."""
        import torch

        ft = self.task.finetune
        ids = [ft.tokenizer(t, add_special_tokens=False)["input_ids"] or
               [ft.tokenizer.eos_token_id or 0] for t in texts]
        T = max(len(i) for i in ids)
        dev = next(model.parameters()).device
        x = torch.zeros((len(ids), T), dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, i in enumerate(ids):
            x[r, :len(i)] = torch.tensor(i)
            mask[r, :len(i)] = 1
        # logits_to_keep=1: the head reads hidden states, so skip the vocabulary projection
        # of every position (as the tags' head training does)
        out = model(input_ids=x.to(dev), attention_mask=mask.to(dev), output_hidden_states=True,
                    logits_to_keep=1)
        hidden = out.hidden_states[-1]  # (B, v + T, H): v prepended virtual tokens
        last = torch.tensor([len(i) - 1 for i in ids], device=dev) + self.virtual_tokens()
        return hidden[torch.arange(len(ids), device=dev), last].float()

    def _all_features(self, model: Any, texts: Sequence[str]) -> Any:
        import torch

        bs = self.task.finetune.batch_size
        with torch.no_grad():
            return torch.cat([self._features(model, texts[s:s + bs]).cpu()
                              for s in range(0, len(texts), bs)])

    def _validation_loss(self, texts: Sequence[str], y: Any) -> float:
        """The head's loss on held-out rows (mean over rows), nothing trained."""
        import torch

        bs = self.task.finetune.batch_size
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(texts), bs):
                out = self.head(self._features(self.model, texts[s:s + bs]))
                total += float(self.head.loss(out, y[s:s + bs].to(out.device))) * len(out)
        return total / len(texts)

    def fit(self, train: Rows | None) -> None:
        import copy

        import torch
        from peft import get_peft_model

        ft = self.task.finetune
        torch.manual_seed(ft.seed)
        self.model = get_peft_model(copy.deepcopy(ft.model), self.peft_config())
        self.model.eval()  # dropout off: the frozen model computes deterministically
        texts = untagged(train.texts, self.task.tag_names)
        y = torch.as_tensor(np.asarray(train.targets, dtype=np.float64), dtype=torch.float32)
        y = y.reshape(len(y), -1)
        rng = np.random.default_rng(ft.seed)
        n_val = int(round(ft.validation * len(texts))) if len(texts) >= 10 else 0
        perm = rng.permutation(len(texts))
        val, fit = perm[:n_val], np.sort(perm[n_val:])
        val_texts = [texts[i] for i in val]
        texts, y_val, y = [texts[i] for i in fit], y[torch.as_tensor(val)], y[torch.as_tensor(fit)]
        self.head = ft.new_head()  # the tags' head class: statistics, closed form, loss
        self.head.prepare(y)
        self.head.warm_start(self._all_features(self.model, texts), y.numpy(), alpha=1.0)
        self.head.to(next(self.model.parameters()).device)
        adapter = [p for p in self.model.parameters() if p.requires_grad]
        trained = adapter + list(self.head.parameters())
        self.parameters = sum(p.numel() for p in trained)
        order: list[int] = []

        def batch_loss(step: int) -> torch.Tensor:
            nonlocal order
            if len(order) < min(ft.batch_size, len(texts)):
                order += rng.permutation(len(texts)).tolist()
            idx, order = order[:ft.batch_size], order[ft.batch_size:]
            out = self.head(self._features(self.model, [texts[i] for i in idx]))
            return self.head.loss(out, y[idx].to(out.device))

        def restore(values: dict[str, torch.Tensor]) -> None:
            with torch.no_grad():
                for k, p in enumerate(trained):
                    p.copy_(values[str(k)])

        state = ft.train(
            [(adapter, self.lr), (list(self.head.parameters()), self.head_lr)], batch_loss,
            ft.steps, ft.eval_every,
            lambda: self._validation_loss(val_texts, y_val) if n_val else None,
            lambda: {str(k): p.detach().clone() for k, p in enumerate(trained)}, restore,
            warmup_steps=max(1, ft.steps // 10))
        self.curve: list[JSONObject] = state.curve
        self.best_step = state.best["step"] if state.best else ft.steps

    def details(self) -> JSONObject:
        return {"best_step": self.best_step, "curve": self.curve}

    def predict(self, test: Rows) -> np.ndarray:
        import torch

        feats = self._all_features(self.model, untagged(test.texts, self.task.tag_names))
        with torch.no_grad():
            out = self.head.postprocess(self.head(feats.to(next(self.head.parameters()).device)))
        out = out.float().cpu().numpy()
        return out if self.task.classes or out.shape[1] > 1 else out[:, 0]


class LoRA(PeftBaseline):
    """PEFT LoRA (r = 8, alpha 16, PEFT's default target modules for the architecture)."""

    key, title, lr = "lora", "PEFT LoRA r=8 + linear head", 3e-4

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0)


class PromptTuning(PeftBaseline):
    """PEFT prompt tuning: 10 virtual tokens prepended, initialised from random vocabulary
    embeddings."""

    key, title, lr = "prompt_tuning", "PEFT prompt tuning (10 tokens) + linear head", 1e-3

    def peft_config(self) -> Any:
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)

    def virtual_tokens(self) -> int:
        return 10
