"""Chemprop (D-MPNN, chemprop 2.x on PyPI) fitted and used as a baseline: the learned
molecular model a chemist tries after a random forest.

Imported only when the ``chemprop`` baseline runs (``pip install 'tagllm[chemprop]'``). The
model is chemprop's default (bond message passing, mean aggregation, one-layer FFN), trained
on the CPU with a fixed seed; a seeded fraction of the training molecules is held out and
the epoch of lowest validation loss is kept (early stopping after ``patience`` epochs
without a new lowest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tagllm.errors import TrainingError


@dataclass
class ChempropFit:
    """A trained Chemprop model and what its training chose."""

    model: Any
    classes: int
    best_epoch: int
    epochs_run: int
    validation_rows: int
    parameters: int
    curve: list[float] = field(default_factory=list)  # validation loss per epoch


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _dataset(smiles: Sequence[str], y: np.ndarray | None):
    from chemprop import data, featurizers

    points = [data.MoleculeDatapoint.from_smi(s, None if y is None else np.atleast_1d(y[i]))
              for i, s in enumerate(smiles)]
    return data.MoleculeDataset(points, featurizers.SimpleMoleculeMolGraphFeaturizer())


def fit_chemprop(smiles: Sequence[str], y: np.ndarray, classes: int = 0, seed: int = 0,
                 validation: float = 0.1, max_epochs: int = 50, patience: int = 10
                 ) -> ChempropFit:
    """Train Chemprop on ``smiles`` with targets ``y`` ((N,) or (N, k) values, or class
    indices when ``classes``), keeping the epoch of lowest loss on a seeded ``validation``
    fraction of the rows (0.1 when the tags validate on none: the epoch is chosen on
    held-out molecules in any case)."""
    from lightning import pytorch as pl

    validation = validation or 0.1

    _quiet()
    with _own_rng():
        pl.seed_everything(seed, workers=True, verbose=False)
        return _fit(smiles, y, classes, seed, validation, max_epochs, patience)


@contextlib.contextmanager
def _own_rng():
    """Seed and use the global random generators (Lightning's way) inside, and give the
    caller back its own generators' states and environment afterwards."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PL_")}
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            for k in [k for k in os.environ if k.startswith("PL_") and k not in env]:
                del os.environ[k]
            os.environ.update(env)


def _fit(smiles: Sequence[str], y: np.ndarray, classes: int, seed: int, validation: float,
         max_epochs: int, patience: int) -> ChempropFit:
    from chemprop import data, models, nn
    from lightning import pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping

    y = np.asarray(y, dtype=float)
    y = y.reshape(len(y), -1)
    order = np.random.default_rng(seed).permutation(len(smiles))
    n_val = max(1, int(round(validation * len(smiles))))
    val, train = order[:n_val], order[n_val:]
    train_set = _dataset([smiles[i] for i in train], y[train])
    val_set = _dataset([smiles[i] for i in val], y[val])
    if classes:
        predictor = nn.BinaryClassificationFFN() if classes == 2 else \
            nn.MulticlassClassificationFFN(n_classes=classes)
    else:
        scaler = train_set.normalize_targets()
        val_set.normalize_targets(scaler)
        predictor = nn.RegressionFFN(n_tasks=y.shape[1],
                                     output_transform=nn.UnscaleTransform.from_standard_scaler(
                                         scaler))
    model = models.MPNN(nn.BondMessagePassing(), nn.MeanAggregation(), predictor)
    curve: list[float] = []
    kept: dict[str, torch.Tensor] = {}

    class KeepBest(pl.Callback):  # the best epoch's weights, in memory (nothing unpickled)
        def on_validation_epoch_end(self, trainer, module) -> None:
            if trainer.sanity_checking:
                return
            curve.append(float(trainer.callback_metrics["val_loss"]))
            if curve[-1] <= min(curve):
                kept.update({k: v.detach().clone() for k, v in module.state_dict().items()})

    with tempfile.TemporaryDirectory(prefix="tagllm-chemprop-") as tmp:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            deterministic=True, default_root_dir=tmp, num_sanity_val_steps=0,
            callbacks=[KeepBest(), EarlyStopping("val_loss", patience=patience)])
        trainer.fit(model, data.build_dataloader(train_set, num_workers=0, seed=seed),
                    data.build_dataloader(val_set, num_workers=0, shuffle=False))
    if not kept:
        raise TrainingError(f"Chemprop: no finite validation loss in {len(curve)} epoch(s) "
                            f"on {len(val)} validation molecules; check the labels")
    model.load_state_dict(kept)
    model.eval()
    return ChempropFit(model, classes, int(np.argmin(curve)) + 1 if curve else 0, len(curve),
                       len(val), sum(p.numel() for p in model.parameters()), curve)


@torch.no_grad()
def predict_chemprop(fit: ChempropFit, smiles: Sequence[str]) -> np.ndarray:
    """Values (N,) or (N, k), or class probabilities (N, classes)."""
    from chemprop import data
    from lightning import pytorch as pl

    _quiet()
    loader = data.build_dataloader(_dataset(smiles, None), num_workers=0, shuffle=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    out = torch.cat(trainer.predict(fit.model, loader)).float().numpy()  # (N, tasks[, k])
    if fit.classes == 2:
        p = out.reshape(len(out))
        return np.stack([1 - p, p], axis=1)
    if fit.classes:
        return out.reshape(len(out), fit.classes)
    return out[:, 0] if out.shape[1] == 1 else out
