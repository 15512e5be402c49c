"""Training touches only tags and heads; the base model stays bit-identical."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tagllm import HeadConfig, TagConfig, TrainConfig
from tagllm.training import fit_tag, length_bucketed_batches

from tiny import tiny_tagged

TEXTS = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "OCC(O)CO", "C#N", "CCCCCC", "CSC"]


def _base_state(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.base.state_dict().items()}


def test_base_bit_identical_and_only_tag_and_head_get_gradients(arch):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=4))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=3, head=HeadConfig("regression")))
    before = _base_state(m)
    s_before = m.bank.parameter("<S>").detach().clone()

    # One manual step: gradients reach exactly <Q> and its head.
    m.set_trainable(["<Q>"])
    batch = m.encode([f"<S> {t} <Q>" for t in TEXTS[:4]])
    m.head_loss(batch, "<Q>", torch.arange(4.0)).backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in m.named_parameters()
                         if n.startswith("heads.Q.") or p is m.bank.parameter("<Q>")}
    assert all(p.grad is None for p in m.base.parameters())
    m.zero_grad(set_to_none=True)

    q_before = m.bank.parameter("<Q>").detach().clone()
    y = np.linspace(0.0, 1.0, len(TEXTS))
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, seed=0, select="last")
    fit_tag(m, "<Q>", [f"<S> {t} <Q>" for t in TEXTS], y, cfg=cfg, progress=False,
            log=lambda s: None)
    after = _base_state(m)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"base parameter {k} changed"
    assert torch.equal(m.bank.parameter("<S>"), s_before), "a frozen tag changed"
    assert not torch.equal(m.bank.parameter("<Q>"), q_before), "the trained tag did not move"
    assert all(not p.requires_grad for p in m.base.parameters())


def test_stage1_lm_training_lowers_loss():
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<S>", num_tokens=4))
    texts = [f"<S> {t}" for t in TEXTS]
    before = _base_state(m)
    with torch.no_grad():
        loss0 = float(m.lm_loss(m.encode(texts)))
    cfg = TrainConfig(steps=40, batch_size=8, lr=5e-2, warmup_steps=2)
    res = fit_tag(m, "<S>", texts, cfg=cfg, progress=False, log=lambda s: None)
    with torch.no_grad():
        loss1 = float(m.lm_loss(m.encode(texts)))
    assert loss1 < loss0 - 0.05, (loss0, loss1)
    assert len(res.losses) == 40
    for k, v in m.base.state_dict().items():
        assert torch.equal(v, before[k])


def test_lm_loss_ignores_tag_positions_and_padding():
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<S>", num_tokens=4))
    with torch.no_grad():
        alone = float(m.lm_loss(m.encode(["<S> CCO"])))
        padded = m.encode(["<S> CCO", "<S> CCCCCCCCCCCCCCCCCCC"])
        hidden = m.hidden_states(padded)
        # recompute row 0's loss by hand from the padded batch
        n = int(padded.attention_mask[0].sum())
        logits = m.logits(hidden[0, : n - 1])
        tgt = padded.input_ids[0, 1:n]
        keep = tgt < m.bank.vocab_rows
        by_hand = float(torch.nn.functional.cross_entropy(logits[keep], tgt[keep]))
    assert alone == pytest.approx(by_hand, rel=1e-5)


def test_warm_start_fits_a_learnable_target():
    """The closed-form head fit recovers a target that is linear in the features."""
    m = tiny_tagged("llama", hidden=48)
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("CNOcn()=#123"), size=rng.integers(3, 12)))
             for _ in range(200)]
    texts = [f"{t} <Q>" for t in texts]
    with torch.no_grad():
        feats = m.tag_features(m.encode(texts), "<Q>").numpy()
    y = feats @ rng.normal(size=feats.shape[1]) * 0.1 + 3.0
    cfg = TrainConfig(steps=1, batch_size=16, lr=1e-6, head_lr=1e-6, warmup_steps=0,
                      ridge_alpha=1e-4, warm_start_examples=200, validation=0, select="last")
    res = fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    pred = m.predict(texts, tag="<Q>")[:, 0]
    assert res.warm_start["<Q>"]["examples"] == 200
    assert np.corrcoef(pred, y)[0, 1] > 0.99


def test_warm_start_features_run_under_the_stage_autocast():
    """With autocast the warm start's features (and so the closed-form head) come from the
    bf16 passes, like every other training pass; the fit stays close to float32's."""
    rng = np.random.default_rng(0)
    texts = [f"{''.join(rng.choice(list('CNOcn()=#123'), size=rng.integers(3, 12)))} <Q>"
             for _ in range(120)]
    y = rng.normal(size=len(texts))
    heads, preds = {}, {}
    for ac in ("no", "bf16"):
        m = tiny_tagged("llama", hidden=48)
        m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2,
                            head=HeadConfig("regression")))
        cfg = TrainConfig(steps=1, batch_size=16, lr=1e-9, head_lr=1e-9, warmup_steps=0,
                          warm_start_examples=120, validation=0, select="last", autocast=ac)
        fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
        heads[ac] = torch.cat([p.detach().flatten() for p in m.head("<Q>").parameters()])
        preds[ac] = m.predict(texts, tag="<Q>")[:, 0]
    rel = float((heads["no"] - heads["bf16"]).abs().max() / heads["no"].abs().max())
    assert rel > 1e-4  # a 1e-9 learning rate alone moves the head by far less
    assert np.corrcoef(preds["no"], preds["bf16"])[0, 1] > 0.95


def test_classification_head_trains():
    m = tiny_tagged("qwen2")
    m.add_tag(TagConfig("<K>", kind="function", num_tokens=2,
                        head=HeadConfig("classification", num_outputs=2)))
    texts = [f"{'C' * k} <K>" for k in range(1, 21)] + [f"{'O' * k} <K>" for k in range(1, 21)]
    y = np.array([0] * 20 + [1] * 20)
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, head_lr=1e-2, warmup_steps=2)
    fit_tag(m, "<K>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    prob = m.predict(texts, tag="<K>")
    assert prob.shape == (40, 2) and np.allclose(prob.sum(1), 1.0, atol=1e-5)
    assert (prob.argmax(1) == y).mean() >= 0.9


def test_classification_warm_start_when_a_class_is_absent():
    """A class with no row among the warm-start rows (its only rows went to validation) gets
    a low start logit instead of a crash; with one class present the head predicts it."""
    from tagllm.heads import build_head

    rng = np.random.default_rng(0)
    feats = torch.as_tensor(rng.normal(size=(30, 16)), dtype=torch.float32)
    y = np.array([0, 1] * 15)  # class 2 absent
    head = build_head("classification", 16, 3, "cross_entropy")
    info = head.warm_start(feats, y, alpha=1.0)
    prob = head.postprocess(head(feats)).detach().numpy()
    assert info["absent_classes"] == [2] and np.allclose(prob.sum(1), 1.0, atol=1e-5)
    assert prob[:, 2].max() < 1 / 30 and prob[:, :2].argmax(1).tolist() != [0] * 30
    one = build_head("classification", 16, 2, "cross_entropy")
    assert one.warm_start(feats, np.ones(30), alpha=1.0)["absent_classes"] == [0]
    assert (one.postprocess(one(feats))[:, 1] > 0.95).all()

    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<K>", kind="function", num_tokens=2,
                        head=HeadConfig("classification", num_outputs=3)))
    texts = [f"{'C' * k} <K>" for k in range(1, 13)]
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, warm_start_examples=12,
                      validation=0, select="last")
    res = fit_tag(m, "<K>", texts, np.array([0, 1] * 6), cfg=cfg, progress=False,
                  log=lambda s: None)
    assert res.warm_start["<K>"]["absent_classes"] == [2]


def test_classification_warm_start_chooses_its_penalty_on_held_out_folds():
    """Labels that the features do not predict: cross-validation picks the strongest penalty
    (a fixed C = 1 would fit the noise); labels that one feature predicts: a weak one."""
    from tagllm.heads import build_head

    rng = np.random.default_rng(0)
    feats = torch.as_tensor(rng.normal(size=(200, 64)), dtype=torch.float32)
    head = build_head("classification", 64, 2, "cross_entropy")
    noise = head.warm_start(feats, rng.integers(0, 2, 200), alpha=1.0)
    signal = head.warm_start(feats, (feats[:, 0] > 0).long().numpy(), alpha=1.0)
    assert noise["alpha"] == pytest.approx(1e4) and signal["alpha"] <= 1.0


def test_supervised_tag_needs_targets():
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", head=HeadConfig("regression")))
    with pytest.raises(ValueError, match="needs targets"):
        fit_tag(m, "<Q>", ["CC <Q>"], None, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_tag(m, "<Q>", ["CC <Q>"], np.array([np.nan]), progress=False)
    with pytest.raises(ValueError, match="do not contain a trained function tag"):
        fit_tag(m, "<Q>", ["CC"], np.array([1.0]), progress=False)


def test_length_bucketed_batches_cover_every_example_each_epoch():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]
    gen = length_bucketed_batches(lengths, 4, seed=0, bucket=2)
    seen = [i for _ in range(3) for i in next(gen)]
    assert sorted(seen) == list(range(12))


@torch.no_grad()
def test_batched_generation_equals_one_at_a_time_and_plain_generate(arch):
    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"))
    prompts = ["<S> CC", "abc", "<S> a longer prompt <S> x"]
    batched = m.generate(prompts, max_new_tokens=6, batch_size=3)
    single = [m.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    # Without tags, the same as the base model's own generate on the same ids.
    ids = m.encode(["abc"]).input_ids
    plain = m.base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                            do_sample=False, pad_token_id=m.pad_id)
    assert m.tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True) == single[1]


def test_bf16_autocast_trains_the_tag_and_leaves_the_base_alone():
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<S>", num_tokens=2))
    before = {k: v.clone() for k, v in m.base.state_dict().items()}
    start = m.bank.parameter("<S>").detach().clone()
    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=0, lr=1e-2, autocast="bf16")
    res = fit_tag(m, "<S>", [f"<S> {t}" for t in TEXTS], cfg=cfg, progress=False,
                  log=lambda s: None)
    assert all(np.isfinite(res.losses))
    assert m.bank.parameter("<S>").dtype == torch.float32  # the tag stays fp32
    assert not torch.equal(start, m.bank.parameter("<S>"))
    for k, v in m.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig(autocast="int8")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: dropout in config, must stay off
@pytest.mark.parametrize("depth", ["input", "deep"])
def test_activation_checkpointing_recomputes_and_gives_the_same_gradients(arch, depth):
    """Also for a deep tag, whose offsets the recomputed layers must add again."""
    from tagllm.training.loop import activation_checkpointing

    m = tiny_tagged(arch)
    m.add_tag(TagConfig("<S>", num_tokens=2, depth=depth))
    if depth == "deep":
        with torch.no_grad():
            m.bank.deep_offsets("<S>").normal_()
    m.set_trainable(["<S>"])
    batch = m.encode([f"<S> {t}" for t in TEXTS])
    grads, saved = [], []
    for enabled in (False, True):
        packed = []  # tensors the forward pass keeps for the backward pass

        def pack(t, packed=packed):
            packed.append(t.numel())
            return t

        with activation_checkpointing(m, enabled), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = m.lm_loss(batch)
        saved.append(sum(packed))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.bank.tag_parameters("<S>")]))
        m.zero_grad(set_to_none=True)
    assert saved[1] < 0.7 * saved[0]  # the layers' activations were not kept
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert not any(mod.training for mod in m.base.modules())  # restored to eval
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, activation_checkpointing=True)
    res = fit_tag(m, "<S>", [f"<S> {t}" for t in TEXTS], cfg=cfg, progress=False,
                  log=lambda s: None)
    assert all(np.isfinite(res.losses))


def test_validation_is_carved_seeded_and_disjoint():
    from tagllm.training.batching import Encoded, carve_validation

    ids = [[[7, i] for i in range(50)], [[9, i] for i in range(3)], [[8, 0]]]
    data = Encoded(ids, [torch.arange(50.0), None, None], ["<Q>", None, None], [1.0, 1, 1])
    train, val, rows = carve_validation(data, 0.1, seed=3)
    assert rows == [5, 1, 0]  # a one-row part keeps its row for training
    for k in range(3):
        assert sorted(train.ids[k] + val.ids[k]) == sorted(ids[k])
        assert not {tuple(r) for r in train.ids[k]} & {tuple(r) for r in val.ids[k]}
        assert sorted(train.rows[k] + val.rows[k]) == list(range(len(ids[k])))
        assert [ids[k][i] for i in val.rows[k]] == val.ids[k]  # each id's row in its part
    assert [r[1] for r in val.ids[0]] == val.targets[0].int().tolist()  # targets follow
    again = carve_validation(data, 0.1, seed=3)[1]
    other = carve_validation(data, 0.1, seed=4)[1]
    assert again.ids == val.ids and other.ids != val.ids
    assert carve_validation(data, 0.0, seed=3)[1] is None


def _absurd_lr(select: str, **cfg):
    """Train <Q> on a tiny model with lr 30 (a wreck); (result, model). The result's
    after_warm_start holds the untrained tag."""
    texts = [f"{t}{s} <Q>" for t in TEXTS for s in ("", "C", "O", "N", "CC")]
    y = np.array([len(t) for t in texts], dtype=float)
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    cfg = TrainConfig(batch_size=8, lr=30.0, head_lr=30.0, warmup_steps=0, select=select,
                      max_grad_norm=0, **cfg)
    res = fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
                  after_warm_start=lambda: {"tag": m.bank.parameter("<Q>").detach().clone()})
    return res, m


def test_select_best_keeps_the_step_with_the_lowest_validation_loss():
    """An absurd learning rate wrecks the tag: 'best' keeps step 0 (the untrained tag with its
    fitted head, exactly), 'last' keeps the wreck; the curve has a point every eval_every
    steps and the last; the validation rows are not trained on."""
    results = {}
    for select in ("best", "last"):
        res, m = _absurd_lr(select, steps=7, eval_every=3)
        results[select] = (res, m.bank.parameter("<Q>").detach().clone())
    res, tag = results["best"]
    assert [c["step"] for c in res.curve] == [0, 3, 6, 7] and res.validation_rows == [4]
    losses = [c["validation_loss"] for c in res.curve]
    assert res.best_step == res.curve[int(np.argmin(losses))]["step"] == 0
    assert torch.equal(tag, res.after_warm_start["tag"])
    last, last_tag = results["last"]
    assert last.best_step == 0 and not torch.equal(last_tag, tag)
    assert res.kept_step == 0 and last.kept_step == 7  # 'last' keeps (and reports) step 7
    assert res.curve[0]["train_loss"] is None and res.curve[1]["train_loss"] == pytest.approx(
        np.mean(res.losses[:3]))
    with pytest.raises(ValueError, match="select"):
        TrainConfig(validation=0, select="best")


def test_refit_head_refits_on_the_kept_features_and_keeps_it_only_if_validation_drops():
    """After an absurd learning rate the trained head no longer fits its features: the
    closed-form re-fit lowers the validation loss and is kept. When the kept step is step 0
    the re-fit is the warm start again (no drop), so the tags stay exactly as selected."""
    out = {s: _absurd_lr(s, steps=4, eval_every=2, refit_head=True)[0] for s in ("last", "best")}
    wreck = out["last"].refit
    assert wreck["kept"] and wreck["validation_loss_after"] < wreck["validation_loss_before"]
    assert wreck["validation_loss_before"] == pytest.approx(
        out["last"].curve[-1]["validation_loss"])
    best = out["best"]
    assert best.best_step == 0 and not best.refit["kept"]
    assert best.refit["validation_loss_before"] == pytest.approx(best.curve[0]["validation_loss"])
    with pytest.raises(ValueError, match="refit_head"):
        TrainConfig(validation=0, select="last", refit_head=True)


def test_non_finite_loss_stops_naming_step_entry_and_rows_and_keeps_the_last_checkpoint(
        tmp_path):
    """An absurd learning rate overflows the loss: training stops before applying that step,
    with a message naming the step, the data entry and its rows, and the checkpoint of the
    last finite step stays on disk (resumable, finite)."""
    from tagllm.checkpoint import load_checkpoint
    from tagllm.errors import TrainingError
    from tagllm.training import Part, fit_tags

    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    texts = [f"{t} <Q>" for t in TEXTS * 2]
    y = np.arange(len(texts), dtype=float)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e30, head_lr=1e30, warmup_steps=0,
                      checkpoint_every=1, validation=0, select="last")
    part = Part(texts, y, name="stage q data[0] (mols.csv)")
    ckpt = tmp_path / "work"
    with pytest.raises(TrainingError) as err:
        fit_tags(m, ["<Q>"], [part], cfg, progress=False, log=lambda s: None,
                 checkpoint_dir=ckpt)
    msg = str(err.value)
    step = int(msg.split(" at step ")[1].split("/")[0])
    assert step >= 2 and f"/{cfg.steps} on stage q data[0] (mols.csv) rows " in msg
    assert f"last good checkpoint (step {step - 1}) is kept in {ckpt}" in msg
    assert "Lower lr (1e+30)" in msg
    rows = [int(r) for r in msg.split(" rows ")[1].split(" (rows counted")[0].split(", ")]
    assert len(rows) == cfg.batch_size and all(0 <= r < len(texts) for r in rows)
    m.set_trainable(["<Q>"])
    saved = load_checkpoint(ckpt, m, ["<Q>"])
    assert saved is not None and saved.meta["step"] == step - 1
    assert all(np.isfinite(v) for v in saved.meta["losses"])


def test_grouped_validation_shares_no_group_value_with_training():
    """Pairs: no validation pair shares its ligand or its protein with a training pair (the
    rows linking both sides are left out); one column: whole groups; no groups: the random
    rows of earlier versions, unchanged."""
    from tagllm.training.batching import validation_split

    rng = np.random.default_rng(0)
    pairs = [(f"L{rng.integers(40)}", f"P{rng.integers(30)}") for _ in range(600)]
    train, val = validation_split(600, 0.1, [0, 0], pairs)
    assert len(val) >= 60 and not set(train) & set(val)
    for col in (0, 1):
        assert not {pairs[i][col] for i in val} & {pairs[i][col] for i in train}
    assert len(train) + len(val) < 600  # mixed rows go to neither side
    families = [(f"h{i // 7}",) for i in range(200)]
    train, val = validation_split(200, 0.1, [3, 1], families)
    assert not {families[i] for i in val} & {families[i] for i in train}
    assert len(train) + len(val) == 200 and 20 <= len(val) <= 27
    perm = np.random.default_rng([5, 2]).permutation(50)  # what carve_validation drew before
    assert validation_split(50, 0.1, [5, 2]) == (sorted(perm[5:].tolist()),
                                                 sorted(perm[:5].tolist()))
    with pytest.raises(ValueError, match="no validation split keeps its groups apart"):
        validation_split(10, 0.1, [0, 0], [("same",)] * 10)


def test_fixed_validation_rows_are_the_ones_validated_on():
    """A part's given validation rows (another split's rows, appended) are held out and
    scored; the rest train."""
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    texts = [f"{'C' * k} <Q>" for k in range(1, 13)]
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, warm_start_examples=8,
                      validation=0.5, select="best", eval_every=1)
    from tagllm.training import fit_tags
    from tagllm.training.batching import Part

    seen = []

    def diagnose(step: int) -> dict:  # a research script's own numbers per point
        seen.append(step)
        return {"tag_norm": float(m.bank.parameter("<Q>").detach().norm())}

    res = fit_tags(m, ["<Q>"], [Part(texts, np.arange(12.0), val_rows=[9, 10, 11])], cfg,
                   False, lambda s: None, on_validation=diagnose)
    assert res.validation_rows == [3]
    assert seen == [0, 1, 2] == [c["step"] for c in res.curve]
    assert all(c["tag_norm"] > 0 and "validation_loss" in c for c in res.curve)


def test_a_checkpoint_killed_between_its_two_renames_still_resumes(tmp_path):
    """A save replaces the checkpoint folder by two renames; a SIGKILL between them leaves
    only its ``.old`` copy. The next run puts it back and resumes instead of starting over."""
    import subprocess
    import sys

    from tagllm.fileio import temp_name

    texts = [f"{'C' * k} <Q>" for k in range(1, 13)]
    y = np.arange(12.0) / 12
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=0, warm_start_examples=8,
                      validation=0, select="last", checkpoint_every=2)
    ckpt = tmp_path / "work" / "stage"  # keeps step 2's checkpoint (none after the last)

    def run():
        m = tiny_tagged("llama")
        m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2,
                            head=HeadConfig("regression")))
        return fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
                       checkpoint_dir=ckpt)

    assert run().resumed_from == 0 and ckpt.is_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    old = ckpt.with_name(temp_name(ckpt.name, "old").replace(str(os.getpid()), dead))
    ckpt.rename(old)  # the state a kill between the renames leaves
    assert run().resumed_from == 2 and ckpt.is_dir() and not old.exists()


def test_patience_stops_early_where_the_validation_loss_stopped_falling():
    """An absurd learning rate: the lowest validation loss is step 0's, so patience 2 stops
    two validation points later and keeps step 0; the result says how far it ran."""
    res, m = _absurd_lr("best", steps=40, eval_every=1, patience=2)
    assert res.stopped_early and res.steps == 2 and len(res.losses) == 2
    assert [c["step"] for c in res.curve] == [0, 1, 2]
    assert res.kept_step == 0
    assert torch.equal(m.bank.parameter("<Q>").detach(), res.after_warm_start["tag"])
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(validation=0, select="last", patience=3)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_warm_up_then_decay_or_hold(schedule):
    from types import SimpleNamespace

    from tagllm.training.loop import make_optimizer

    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    m.set_trainable(["<Q>"])
    cfg = TrainConfig(steps=10, lr=0.3, head_lr=0.01, warmup_steps=4, schedule=schedule)
    opt, sched, _ = make_optimizer(SimpleNamespace(model=m, tags=["<Q>"], cfg=cfg))
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    tag = [lr[0] for lr in lrs]
    assert tag[:5] == pytest.approx([0, 0.075, 0.15, 0.225, 0.3])
    assert [lr[1] for lr in lrs][4] == pytest.approx(0.01)  # the head's own rate
    if schedule == "constant":
        assert tag[5:] == pytest.approx([0.3] * 5)
    else:
        assert all(a > b for a, b in zip(tag[4:], tag[5:], strict=False)) and tag[-1] > 0
        assert tag[8] == pytest.approx(0.1 if schedule == "linear" else 0.075)  # 4 of 6 done


def test_adafactor_moves_the_tag_by_its_own_scale_and_leaves_the_base_alone():
    texts = [f"{t} <Q>" for t in TEXTS]
    y = np.array([len(t) for t in TEXTS], dtype=float)
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    before, base = m.bank.parameter("<Q>").detach().clone(), _base_state(m)
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.3, warmup_steps=0, optimizer="adafactor",
                      schedule="constant", validation=0, select="last")
    res = fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    after = m.bank.parameter("<Q>").detach()
    rms = before.pow(2).mean().sqrt()
    moved = (after - before).pow(2).mean().sqrt()
    # each step is at most min(lr, 1/sqrt(t)) x the tag's RMS (update clipping keeps it so)
    assert 0 < moved <= 3 * 1.0 * rms * 1.01 and len(res.losses) == 3
    assert all(torch.equal(v, m.base.state_dict()[k]) for k, v in base.items())
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


def test_refit_every_keeps_the_head_at_its_closed_form_fit_on_the_moving_tag():
    """With refit_every the head is re-fitted on the current tag's features every k steps:
    after the last (a multiple of k), fitting it again changes nothing."""
    from tagllm.training.warm_start import warm_start

    texts = [f"{t}{s} <Q>" for t in TEXTS for s in ("", "C", "O", "N")]
    y = np.array([len(t) for t in texts], dtype=float)
    m = tiny_tagged("llama")
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.05, head_lr=1e-3, warmup_steps=0,
                      refit_every=2, validation=0, select="last")
    res = fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    assert res.refits == 2
    head = {k: v.clone() for k, v in m.head("<Q>").state_dict().items()}
    ids = [m.tagtok.encode(t).ids for t in texts]
    warm_start(m, "<Q>", ids, torch.tensor(y, dtype=torch.float32).view(-1, 1), cfg, False,
               lambda s: None, None)
    for k, v in m.head("<Q>").state_dict().items():
        torch.testing.assert_close(v, head[k], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="refit_every"):
        TrainConfig(refit_every=5, warm_start_head=False)


def test_seen_window_keeps_each_rows_latest_features_and_round_trips():
    from tagllm.training.seen import SeenWindow

    w = SeenWindow.start(torch.arange(8.0).view(4, 2), [10, 11, 12, 13])
    w.add(torch.tensor([[100.0, 100.0], [101.0, 101.0]]), [0, 11])  # new 0; 11 again
    assert w.rows.tolist() == [0, 11, 12, 13]  # 0 over the oldest slot, 11 over its own
    assert w.features[1].tolist() == [101.0, 101.0]
    w.add(torch.full((3, 2), 7.0), [5, 0, 6])  # the oldest now: 12, then 13
    assert sorted(w.rows.tolist()) == [0, 5, 6, 11] and len(set(w.rows.tolist())) == 4
    assert w.features[w.rows == 0].tolist() == [[7.0, 7.0]]
    back = SeenWindow.from_tensors(w.tensors("seen.<Q>"), "seen.<Q>")
    assert torch.equal(back.features, w.features) and torch.equal(back.stamps, w.stamps)
    assert back.clock == w.clock == 2
    back.add(torch.zeros(1, 2), [9])
    w.add(torch.zeros(1, 2), [9])
    assert torch.equal(back.rows, w.rows)  # the restored window evicts the same slot
    assert SeenWindow.from_tensors({}, "seen.<Q>") is None
    bad = {**w.tensors("s"), "s.rows": torch.zeros(3, dtype=torch.int64)}
    with pytest.raises(ValueError, match="inconsistent"):
        SeenWindow.from_tensors(bad, "s")
    with pytest.raises(ValueError, match="distinct rows"):
        SeenWindow.start(torch.zeros(2, 2), [3, 3])
    with pytest.raises(ValueError, match="feature vectors"):
        w.add(torch.zeros(2, 2), [1])


@pytest.mark.slow
def test_refit_rows_seen_refits_on_the_features_the_steps_computed_and_resumes_exactly(
        tmp_path, monkeypatch):
    """refit_rows 'seen': the re-fit gets, for every row, the features its latest step
    computed (the tag moves, so they differ from a fresh pass), with no pass of its own; a
    run stopped at step 2 resumes to the same head; a checkpoint written without the
    window starts one from a pass with the current tags."""
    from tagllm.training import loop

    texts = [f"{t}{s} <Q>" for t in TEXTS for s in ("", "C", "O", "N")]  # 32 rows
    y = np.array([len(t) + 3 * t.count("O") for t in texts], dtype=float)
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.05, head_lr=1e-9, warmup_steps=0,
                      refit_every=4, refit_rows="seen", validation=0, select="last",
                      checkpoint_every=2)

    def model():
        m = tiny_tagged("llama")
        m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
        return m

    computed, refits = {}, []
    real_part_loss, real_fit = loop._part_loss, loop.warm_start_head

    def spy_part_loss(job, k, idx, *a):
        loss, feats = real_part_loss(job, k, idx, *a)
        for i, f in zip(idx, feats.detach(), strict=True):
            computed[i] = f.clone()
        return loss, feats

    def spy_fit(model, tag, feats, targets, alpha):
        refits.append(feats.clone())
        return real_fit(model, tag, feats, targets, alpha)

    monkeypatch.setattr(loop, "_part_loss", spy_part_loss)
    monkeypatch.setattr(loop, "warm_start_head", spy_fit)
    monkeypatch.setattr(loop, "fit_heads", lambda *a: pytest.fail("a pass to re-fit"))
    m = model()
    res = fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    assert res.refits == 1 and len(refits) == 1 and len(computed) == 32  # one epoch
    ids = [m.tagtok.encode(t).ids for t in texts]
    from tagllm.training.batching import collate

    fresh = m.tag_features(collate(m, ids), "<Q>").detach()
    stale = torch.stack([computed[i] for i in range(32)])
    assert not torch.allclose(stale, fresh, atol=1e-3)  # the tag moved
    got = refits[0]  # in the window's slot order: match each to its row's vector
    for f in got:
        assert min((f - stale[i]).abs().max().item() for i in range(32)) < 1e-5
    assert len({tuple(f.tolist()) for f in got}) == 32
    head = {k: v.clone() for k, v in m.head("<Q>").state_dict().items()}
    monkeypatch.undo()

    real_stop = loop.checkpoint_or_stop

    def stop_at_2(job, state, opt, sched, stopping, why):
        real_stop(job, state, opt, sched, stopping or state.step == 2, why or "test")

    for first in (cfg, TrainConfig(**{**cfg.__dict__, "refit_rows": "warm_start"})):
        ckpt = tmp_path / first.refit_rows
        monkeypatch.setattr(loop, "checkpoint_or_stop", stop_at_2)
        with pytest.raises(KeyboardInterrupt):
            fit_tag(model(), "<Q>", texts, y, cfg=first, progress=False, log=lambda s: None,
                    checkpoint_dir=ckpt)
        monkeypatch.undo()
        lines = []
        resumed = model()
        res = fit_tag(resumed, "<Q>", texts, y, cfg=cfg, progress=False, log=lines.append,
                      checkpoint_dir=ckpt)
        assert res.resumed_from == 2
        if first is cfg:  # exact: the window came back with the tags
            for k, v in resumed.head("<Q>").state_dict().items():
                torch.testing.assert_close(v, head[k])
        else:
            assert any("no seen features of <Q>" in x for x in lines)
    with pytest.raises(ValueError, match="refit_rows"):
        TrainConfig(refit_rows="seen")
    with pytest.raises(ValueError, match="refit_rows"):
        TrainConfig(refit_every=2, refit_rows="all")


def test_residual_mlp_trains_through_its_mlp_saves_plain_vectors_and_resumes_exactly(tmp_path):
    """reparam: residual_mlp starts as the plain tag, trains P and the MLP at the tag's lr,
    saves P + MLP(P) as a plain (p, H) tag whose predictions match, and resumes exactly."""
    from safetensors.torch import load_file

    from tagllm.training.loop import make_optimizer

    texts = [f"{t}{s} <Q>" for t in TEXTS for s in ("", "C", "O")]
    y = np.array([len(t) for t in texts], dtype=float)
    tag = TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig(),
                    reparam="residual_mlp", reparam_size=8)
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.05, warmup_steps=0, validation=0,
                      select="last", checkpoint_every=2)

    def model():
        m = tiny_tagged("llama")
        m.add_tag(tag)
        return m

    plain = tiny_tagged("llama")
    plain.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig()))
    m = model()
    assert torch.equal(m.bank.vectors("<Q>"), plain.bank.vectors("<Q>"))  # same start
    m.set_trainable(["<Q>"])
    from types import SimpleNamespace
    opt, _, _ = make_optimizer(SimpleNamespace(model=m, tags=["<Q>"], cfg=cfg))
    assert len(opt.param_groups[0]["params"]) == 5  # P, down (w, b), up (w, b) at the tag lr

    straight = model()
    fit_tag(straight, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None)
    mlp = straight.bank.reparam("<Q>")
    assert mlp.up.weight.abs().sum() > 0  # the MLP trained
    out = straight.save_tag("<Q>", tmp_path / "Q")
    saved = load_file(str(out / "tag.safetensors"))["embedding"]
    assert saved.shape == (2, straight.hidden_size)
    torch.testing.assert_close(saved, straight.bank.vectors("<Q>").detach())
    loaded = tiny_tagged("llama")
    loaded.load_tag(out)
    np.testing.assert_allclose(loaded.predict(texts), straight.predict(texts), rtol=1e-5,
                               atol=1e-6)

    ckpt = tmp_path / "ckpt"
    fit_tag(model(), "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
            checkpoint_dir=ckpt)  # leaves step 2's checkpoint
    resumed = model()
    res = fit_tag(resumed, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
                  checkpoint_dir=ckpt)
    assert res.resumed_from == 2
    torch.testing.assert_close(resumed.bank.vectors("<Q>"), straight.bank.vectors("<Q>"))
    with pytest.raises(ValueError, match="reparam"):
        TagConfig("<Q>", reparam="lstm")
    assert "reparam" not in TagConfig("<Q>").to_dict()  # plain tags' files unchanged


def test_readout_auto_is_chosen_on_validation_saved_concrete_and_resumed(tmp_path):
    """readout_layer and pool 'auto': every (layer, pool) candidate is fitted in closed form
    and scored on the validation rows; the lowest is set (step 0's validation loss is that
    very fit), the tag file holds the concrete choice, and a resumed run reads the same."""
    texts = [f"{t}{s} <Q>" for t in TEXTS for s in ("", "C", "O", "N", "CC")]
    y = np.array([len(t) + t.count("O") for t in texts], dtype=float)
    tag = TagConfig("<Q>", kind="function", num_tokens=2,
                    head=HeadConfig(readout_layer="auto", pool="auto"))
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.01, warmup_steps=0, eval_every=2,
                      checkpoint_every=2)

    def run(ckpt=None):
        m = tiny_tagged("llama")
        m.add_tag(tag)
        return m, fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
                          checkpoint_dir=ckpt)

    m, res = run()
    choice = res.warm_start["<Q>"]["readout"]
    cands = choice["candidates"]
    assert [(c["layer"], c["pool"]) for c in cands] == [
        (-1, "tag"), (-1, "tag+mean"), (1, "tag"), (1, "tag+mean")]
    best = min(cands, key=lambda c: c["validation_loss"])
    assert (choice["layer"], choice["pool"]) == (best["layer"], best["pool"])
    assert res.curve[0]["validation_loss"] == pytest.approx(best["validation_loss"], rel=1e-4)
    assert m.readout("<Q>") == (best["layer"], best["pool"] == "tag+mean")
    loaded = tiny_tagged("llama")
    loaded.load_tag(m.save_tag("<Q>", tmp_path / "Q"))
    assert loaded.bank.configs["<Q>"].head.readout_layer == best["layer"]
    np.testing.assert_allclose(loaded.predict(texts), m.predict(texts), rtol=1e-5, atol=1e-6)
    run(tmp_path / "ckpt")  # leaves step 2's checkpoint
    resumed, res2 = run(tmp_path / "ckpt")
    assert res2.resumed_from == 2
    np.testing.assert_allclose(resumed.predict(texts), m.predict(texts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="readout_layer"):
        HeadConfig(readout_layer="best")
    untrained = tiny_tagged("llama")
    untrained.add_tag(tag)
    with pytest.raises(ValueError, match="auto"):
        untrained.predict(texts)
    with pytest.raises(ValueError, match="validation"):
        fit_tag(untrained, "<Q>", texts, y, cfg=TrainConfig(steps=1, validation=0,
                                                            select="last"),
                progress=False, log=lambda s: None)


@pytest.mark.parametrize("depth", ["input", "deep"])
def test_a_function_tag_before_its_data_trains_the_datas_states(depth):
    """Placed before the data (``<Q> <S> CCO``), a function tag reaches every data token
    through attention, so with ``pool: tag+mean`` training moves the token mean its head
    reads; the tag state itself is the same for every row there. Training through the
    frozen-prefix cache (nothing before <Q> to cache) equals full passes."""
    from tagllm.prefix import FrozenPrefix

    texts = [f"<Q> <S> {t}{s}" for t in TEXTS for s in ("", "C", "O", "N")]
    y = np.array([len(t) for t in texts], dtype=float)
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.05, head_lr=1e-3, warmup_steps=0,
                      validation=0, select="last")

    def trained(cache: bool):
        m = tiny_tagged("llama")
        m.add_tag(TagConfig("<S>", num_tokens=2, init="random"), seed=1)
        m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, init="random", depth=depth,
                            head=HeadConfig(pool="tag+mean")), seed=2)
        before = m.tag_features(m.encode(texts), "<Q>").detach()
        fit_tag(m, "<Q>", texts, y, cfg=cfg, progress=False, log=lambda s: None,
                prefix=FrozenPrefix(m, ["<Q>"]) if cache else None)
        return m, before, m.tag_features(m.encode(texts), "<Q>").detach()

    m, before, after = trained(cache=False)
    h = m.hidden_size
    assert torch.allclose(before[:, :h], before[:1, :h])  # the tag state: one for all rows
    assert (after[:, h:] - before[:, h:]).abs().max() > 1e-3  # the data tokens' mean moved
    _, _, via_cache = trained(cache=True)
    torch.testing.assert_close(via_cache, after, rtol=1e-4, atol=1e-5)
