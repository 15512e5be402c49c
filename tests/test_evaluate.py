"""Metrics against their definitions; the fingerprint k-NN baseline."""

from __future__ import annotations

import numpy as np
import pytest

from tagllm.evaluation.baselines import (
    forest_baseline,
    knn_baseline,
    mean_baseline,
    morgan_fingerprints,
)
from tagllm.evaluation.metrics import classification_metrics, paired_bootstrap, regression_metrics


def test_regression_metrics_definitions():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["spearman"] == pytest.approx(0.9486832980505138)
    # concordance index by hand: of the 6 pairs (all targets differ) 5 are ordered right,
    # (2, 3) is tied in the predictions: (5 + 0.5) / 6
    assert m["ci"] == pytest.approx(5.5 / 6)


def test_concordance_index_matches_its_pairwise_definition():
    """Against the O(n^2) definition, with ties in targets (not comparable) and in
    predictions (one half), and its edge cases."""
    import itertools

    from tagllm.evaluation.metrics import concordance_index

    def pairwise(y, p):
        num = den = 0.0
        for i, j in itertools.combinations(range(len(y)), 2):
            if y[i] != y[j]:
                hi, lo = (i, j) if y[i] > y[j] else (j, i)
                den += 1
                num += 1.0 if p[hi] > p[lo] else 0.5 if p[hi] == p[lo] else 0.0
        return num / den

    rng = np.random.default_rng(0)
    for _ in range(5):
        y, p = rng.integers(0, 5, 60) * 1.0, rng.integers(0, 4, 60) * 1.0
        assert concordance_index(y, p) == pytest.approx(pairwise(y, p), abs=1e-12)
    assert concordance_index([1, 2, 3], [3, 2, 1]) == 0.0
    assert concordance_index([1, 2, 3], [0, 0, 0]) == 0.5  # a constant orders nothing
    assert np.isnan(concordance_index([1, 1], [1, 2]))  # no pair to order


def test_constant_prediction_has_undefined_correlation():
    m = regression_metrics(np.array([1.0, 2.0]), np.array([1.5, 1.5]))
    assert np.isnan(m["pearson"]) and m["mse"] == pytest.approx(0.25)


def test_knn_uses_nearest_molecules():
    train = ["CCO", "CCCO", "c1ccccc1", "c1ccccc1C", "CCN"]
    y = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    pred = knn_baseline(train, y, ["c1ccccc1CC", "CCCCO"], k=2)
    assert pred[0] > 0.9 and pred[1] < 0.1
    assert morgan_fingerprints(["CCO"]).shape == (1, 2048)
    np.testing.assert_array_equal(mean_baseline(y, 3), [0.4] * 3)


def test_random_forest_learns_from_fingerprints_and_proteins():
    """Aromatic rings (label 1) against chains (label 0): the forest on Morgan fingerprints
    separates unseen molecules, as values and as class probabilities; on 3-mer profiles it
    tells two protein families apart; multi-output regression keeps the outputs."""
    subs = ["", "C", "O", "N", "Cl", "F", "Br", "OC", "CO", "C(=O)O", "CN", "S"]
    train = [f"c1ccccc1{s}" for s in subs] + [f"CCCCC{s}" for s in subs]
    y = np.array([1.0] * len(subs) + [0.0] * len(subs))
    test = ["Cc1ccccc1O", "CCCCCCCCl"]
    pred = forest_baseline(train, y, test)
    assert pred[0] > 0.8 and pred[1] < 0.2
    prob = forest_baseline(train, y, test, classes=2)
    assert prob.shape == (2, 2) and prob[0, 1] > 0.8 and prob[1, 0] > 0.8
    two = forest_baseline(train, np.stack([y, 1 - y], 1), test)
    assert two.shape == (2, 2) and two[0, 0] > 0.8 and two[1, 1] > 0.8
    seqs = ["MKKLLAAAKK", "MKKLLAAKKA", "MKKLAAAKKL", "WWYYFFWWYY", "WYYFFWWYYF", "YYFFWWYYFW"]
    p = forest_baseline(seqs, np.array([0.0, 0, 0, 1, 1, 1]), ["MKKLLAKAKK", "WWYFFWYYFW"],
                        column="sequence")
    assert p[0] < 0.3 and p[1] > 0.7


def test_paired_bootstrap_matches_scipy_on_a_mean_difference():
    """The MSE difference is the mean of per-row differences of squared errors, so its
    paired bootstrap interval must agree with scipy.stats.bootstrap's percentile interval
    of that mean (up to Monte-Carlo error) and with the normal approximation."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    y = rng.normal(size=600)
    a = y + rng.normal(scale=0.5, size=600)  # the better predictor
    b = y + rng.normal(scale=0.6, size=600)
    ours = paired_bootstrap(y, a, b, regression_metrics, n_resamples=2000)["mse"]
    d = (y - a) ** 2 - (y - b) ** 2
    ref = bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                    confidence_level=0.95, random_state=2).confidence_interval
    width = ref.high - ref.low
    assert abs(ours[0] - ref.low) < 0.1 * width and abs(ours[1] - ref.high) < 0.1 * width
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert ours[0] == pytest.approx(d.mean() - half, abs=0.1 * width)
    assert ours[1] < 0  # a is better: the whole interval says so


def test_paired_bootstrap_signs_and_undefined_metrics():
    y = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9, 0.2, 0.5])
    same = paired_bootstrap(y, y + 0.1, y + 0.1, regression_metrics, n_resamples=200)
    assert same["mse"] == [0.0, 0.0] and same["mae"] == [0.0, 0.0]
    vs_mean = paired_bootstrap(y, y, np.full_like(y, y.mean()), regression_metrics,
                               n_resamples=200)
    assert vs_mean["mse"][1] < 0 and vs_mean["pearson"] is None  # undefined for a constant
    labels = np.tile([0, 1, 0, 1, 1, 0, 1, 0], 5)  # 40 rows: both classes in each resample
    good = np.stack([1 - labels * 0.8 - 0.1, labels * 0.8 + 0.1], 1)
    flat = np.full((40, 2), 0.5)
    ci = paired_bootstrap(labels, good, flat, classification_metrics, n_resamples=200)
    assert ci["auroc"][0] > 0 and set(ci) == {"accuracy", "auroc"}


def test_composition_baseline_recovers_composition_descriptors():
    """A descriptor that is a linear function of amino-acid fractions and log length (as
    GRAVY or charge per residue are) is recovered on unseen sequences; rows without a
    sequence column make the method unavailable."""
    from types import SimpleNamespace

    from tagllm.data import Table
    from tagllm.evaluation.baselines import Composition, Task, composition_features

    rng = np.random.default_rng(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    seqs = ["".join(rng.choice(list(aa), size=rng.integers(30, 300))) for _ in range(80)]
    X = composition_features(seqs)
    assert X.shape == (80, 21) and np.allclose(X[:, :20].sum(1), 1.0)
    w = rng.normal(size=21)
    y = X @ w
    rows = [SimpleNamespace(table=Table({"sequence": seqs[a:b]}), texts=seqs[a:b],
                            targets=y[a:b]) for a, b in ((0, 60), (60, 80))]
    method = Composition(Task())
    assert method.unavailable(*rows) is None
    method.fit(rows[0])
    pred = method.predict(rows[1])
    assert np.corrcoef(pred, y[60:])[0, 1] > 0.99
    no_seq = SimpleNamespace(table=Table({"smiles": ["CCO"]}), texts=["CCO"], targets=y[:1])
    assert "sequence" in method.unavailable(no_seq, no_seq)


def test_linear_probe_reads_untagged_inputs_and_fits_on_training_rows_only():
    from types import SimpleNamespace

    from tagllm.evaluation.baselines import LinearProbe, Task, untagged

    assert untagged(["<SMILES> CCO <QED>", "<Protein>MKV <SMILES>C <BA>"],
                    ["<SMILES>", "<QED>", "<Protein>", "<BA>"]) == ["CCO", "MKV C"]
    seen: list[list[str]] = []
    rng = np.random.default_rng(1)
    table = {}

    def features(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.stack([table.setdefault(t, rng.normal(size=8)) for t in texts])

    texts = [f"<X> m{i}" for i in range(50)]
    feats = features([t.split()[1] for t in texts])
    y = feats @ np.arange(8.0)
    train = SimpleNamespace(table=None, texts=texts[:40], targets=y[:40])
    test = SimpleNamespace(table=None, texts=texts[40:], targets=y[40:])
    probe = LinearProbe(Task(features=features, tag_names=("<X>",)))
    assert LinearProbe(Task()).unavailable(train, test) is not None
    probe.fit(train)
    pred = probe.predict(test)
    assert seen[1] == [f"m{i}" for i in range(40)] and seen[2] == [f"m{i}" for i in range(40, 50)]
    np.testing.assert_allclose(pred, y[40:], atol=0.2)
    prob = LinearProbe(Task(classes=2, features=features, tag_names=("<X>",)))
    prob.fit(SimpleNamespace(table=None, texts=texts[:40], targets=(y[:40] > 0).astype(float)))
    p = prob.predict(test)
    assert p.shape == (10, 2) and ((p[:, 1] > 0.5) == (y[40:] > 0)).mean() >= 0.8


def test_tags_as_text_reads_the_tag_words_at_the_last_token():
    from types import SimpleNamespace

    from tagllm.config import TagConfig
    from tagllm.evaluation.baselines import TagsAsText, Task, tags_as_words
    from tagllm.tags import tag_as_words

    assert tag_as_words(TagConfig("<SMILES>")) == "SMILES:"
    assert tag_as_words(TagConfig("<es>", init="text", init_text="\nSpanish: ")) == "Spanish:"
    words = {"<S>": "S:", "<SS>": "double:"}
    assert tags_as_words(["<SS> CCO <S>", "x<S>y"], words) == ["double: CCO S:", "x S: y"]
    seen: list[list[str]] = []
    rng = np.random.default_rng(2)
    table: dict[str, np.ndarray] = {}

    def features(texts: list[str]) -> np.ndarray:  # (N, 2H): [mean-pooled, last token]
        seen.append(texts)
        return np.stack([np.concatenate([np.zeros(6),
                                         table.setdefault(t, rng.normal(size=6))])
                         for t in texts])

    texts = [f"<S> m{i} <Q>" for i in range(60)]
    y = np.stack([features([f"S: m{i} Q:"])[0, 6:] for i in range(60)]) @ np.arange(6.0)
    seen.clear()
    task = Task(features=features, tag_words={"<S>": "S:", "<Q>": "Q:"})
    method = TagsAsText(task)
    assert TagsAsText(Task(features=features)).unavailable(None, None) is not None
    method.fit(SimpleNamespace(table=None, texts=texts[:50], targets=y[:50]))
    pred = method.predict(SimpleNamespace(table=None, texts=texts[50:], targets=y[50:]))
    assert seen[0][:2] == ["S: m0 Q:", "S: m1 Q:"] and len(seen[1]) == 10
    np.testing.assert_allclose(pred, y[50:], atol=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["lora", "prompt_tuning"])
def test_peft_baselines_start_from_the_closed_form_head_and_leave_the_model_alone(key):
    """A target that is linear in the frozen model's last-token features is fitted almost
    exactly (so the features are read at each text's last real token, after any virtual
    tokens); the base model stays bit-identical; the trainable parameters are counted;
    class probabilities come out for classification."""
    from types import SimpleNamespace

    import torch

    from tagllm.evaluation.baselines import BASELINES, FineTune, Task, untagged

    from tiny import tiny_tagged

    m = tiny_tagged("llama")
    before = {k: v.clone() for k, v in m.base.state_dict().items()}
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("CNOcn()=#123"), size=rng.integers(3, 14)))
             for _ in range(120)]
    with torch.no_grad():
        feats = np.stack([m.base(**m.tokenizer(t, return_tensors="pt"),
                                 output_hidden_states=True).hidden_states[-1][0, -1].numpy()
                          for t in texts])
    y = feats @ rng.normal(size=feats.shape[1])
    train = SimpleNamespace(table=None, texts=[f"<X> {t}" for t in texts[:100]], targets=y[:100])
    test = SimpleNamespace(table=None, texts=[f"<X> {t}" for t in texts[100:]], targets=y[100:])
    from tagllm.heads import build_head
    from tagllm.training.steps import train_module

    tune = FineTune(m.base, m.tokenizer, lambda: build_head("regression", 32, 1, "mse"),
                    train_module, steps=3, batch_size=16, eval_every=2)
    method = BASELINES[key](Task(finetune=tune, tag_names=("<X>",)))
    assert method.unavailable(train, test) is None
    assert BASELINES[key](Task()).unavailable(train, test) == "needs the frozen base model"
    method.fit(train)
    pred = method.predict(test)
    assert pred.shape == (20,) and np.isfinite(pred).all()
    if key == "lora":  # LoRA starts as the identity: the closed form is near exact
        assert np.corrcoef(pred, y[100:])[0, 1] > 0.95
        lora = sum(8 * (mod.in_features + mod.out_features) for name, mod in
                   m.base.named_modules() if name.endswith(("q_proj", "v_proj")))
        assert method.parameters == lora + 33  # r=8 on q and v in each layer, + the head
    else:
        assert method.parameters == 10 * 32 + 33  # 10 virtual tokens + head
    assert "trainable parameters" in method.name(train, test)
    # selection as the tags': 10 of the 100 rows held out, scored at 0, 2 and the last step
    curve = method.details()["curve"]
    assert [c["step"] for c in curve] == [0, 2, 3] and curve[0]["train_loss"] is None
    best = min(curve, key=lambda c: c["validation_loss"])
    assert method.details()["best_step"] == best["step"]
    held = np.random.default_rng(0).permutation(100)[:10]  # FineTune.seed's split
    y_held = torch.as_tensor(y[held], dtype=torch.float32).reshape(-1, 1)
    assert method._validation_loss(untagged([train.texts[i] for i in held], ("<X>",)),
                                   y_held) == pytest.approx(best["validation_loss"], rel=1e-4)
    for k, v in m.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    import dataclasses

    two = dataclasses.replace(tune, new_head=lambda: build_head("classification", 32, 2,
                                                                "cross_entropy"))
    classes = BASELINES[key](Task(classes=2, finetune=two, tag_names=("<X>",)))
    classes.fit(SimpleNamespace(table=None, texts=train.texts, targets=(y[:100] > 0) * 1.0))
    prob = classes.predict(test)
    assert prob.shape == (20, 2) and np.allclose(prob.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_chemprop_learns_a_graph_property_seeded_and_predicts_both_head_forms(monkeypatch):
    """Chemprop (a few epochs) learns the heavy-atom count of unseen molecules far better
    than the training mean, keeps its best validation epoch, repeats itself with the same
    seed, and predicts class probabilities for a classification task."""
    from types import SimpleNamespace

    from rdkit import Chem

    from tagllm.data import Table
    from tagllm.evaluation.baselines import Chemprop, Task

    pytest.importorskip("chemprop")
    monkeypatch.setattr(Chemprop, "max_epochs", 60)  # one batch an epoch here
    smiles = ["C" * k + tail for k in range(1, 13)
              for tail in ("", "O", "N", "C(=O)O", "c1ccccc1")]  # 60 molecules
    heavy = np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], float)
    order = np.random.default_rng(0).permutation(len(smiles))
    tr, te = order[:48], order[48:]

    def rows(idx, y):
        return SimpleNamespace(table=Table({"smiles": [smiles[i] for i in idx]}),
                               texts=[smiles[i] for i in idx], targets=y[idx])

    preds = []
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    for _ in range(2):
        method = Chemprop(Task())
        assert method.unavailable(rows(tr, heavy), rows(te, heavy)) is None
        method.fit(rows(tr, heavy))
        preds.append(method.predict(rows(te, heavy)))
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-5)  # seeded
    assert (np.random.get_state()[1] == before).all()  # the caller's generators untouched
    mse = np.mean((preds[0] - heavy[te]) ** 2)
    assert preds[0].shape == (12,) and mse < 0.25 * np.var(heavy[te])
    d = method.details()
    assert d["best_epoch"] == int(np.argmin(d["validation_curve"])) + 1
    assert method.parameters > 10_000
    big = (heavy > np.median(heavy)).astype(float)
    clf = Chemprop(Task(classes=2))
    clf.fit(rows(tr, big))
    prob = clf.predict(rows(te, big))
    assert prob.shape == (12, 2) and np.allclose(prob.sum(1), 1.0)
    protein = SimpleNamespace(table=Table({"sequence": ["MKV"]}), texts=["MKV"], targets=None)
    assert "smiles" in method.unavailable(protein, protein)
