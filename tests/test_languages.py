"""Languages: the Bible split by book, FLORES files, translation metrics, and LM losses
that count only the tokens after a trained tag."""

from __future__ import annotations

import pytest
import torch

from tagllm import TagConfig
from tagllm.data import DataError
from tagllm.evaluation.metrics import first_line, translation_bootstrap, translation_metrics
from tagllm.sources import load_source

from tiny import tiny_tagged


def test_bible_is_split_by_book_and_aligned():
    train, _ = load_source("bible:es-pt:train")
    test, _ = load_source("bible:es-pt:test")
    book = lambda i: int(i.split(".")[0])  # noqa: E731
    assert {book(i) % 10 for i in test["id"]} == {3}
    assert 3 not in {book(i) % 10 for i in train["id"]}
    assert len(test) == 4137 and len(train) > 26000
    j = test["id"].index("43.3.16")  # John 3:16 in both versions
    assert test["source"][j].startswith("Porque de tal manera amó Dios")
    assert test["target"][j].startswith("Porque Deus amou o mundo")
    assert test["src"][j] == "Spanish" and test["tgt"][j] == "Portuguese"
    mono, _ = load_source("bible:ru:test", n=5)
    assert set(mono.columns) == {"id", "text"}


def test_bible_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown Bible language\(s\) \['xx'\]; known: "):
        load_source("bible:xx:train")
    with pytest.raises(ValueError, match=r"write bible:LANG:SPLIT"):
        load_source("bible:fr")
    with pytest.raises(ValueError, match=r"unknown split 'dev'"):
        load_source("bible:fr:dev")


def _flores(tmp_path, es: str, pt: str):
    d = tmp_path / "flores" / "devtest"
    d.mkdir(parents=True)
    (d / "spa_Latn.devtest").write_text(es)
    (d / "por_Latn.devtest").write_text(pt)
    return tmp_path / "flores"


def test_flores_parallel_files(tmp_path):
    root = _flores(tmp_path, "Hola mundo.\nBuenos días.\n", "Olá mundo.\nBom dia.\n")
    t, _ = load_source(f"flores:spa_Latn-por_Latn:devtest:{root}")
    assert t["source"] == ["Hola mundo.", "Buenos días."] and t["target"][1] == "Bom dia."


@pytest.mark.parametrize("es, pt, message", [
    ("Hola.\nBuenos días.\n", "Olá.\n", r"has 2 lines but .*por_Latn.devtest has 1: not aligned"),
    ("Hola.\n \n", "Olá.\nBom dia.\n", r"spa_Latn.devtest line 2: empty sentence"),
])
def test_flores_errors_name_the_file_and_line(tmp_path, es, pt, message):
    root = _flores(tmp_path, es, pt)
    with pytest.raises(DataError, match=message):
        load_source(f"flores:spa_Latn-por_Latn:devtest:{root}")


def test_flores_missing_language_file(tmp_path):
    root = _flores(tmp_path, "Hola.\n", "Olá.\n")
    with pytest.raises(DataError, match=r"no FLORES file for 'deu_Latn' in split 'devtest'"):
        load_source(f"flores:deu_Latn-por_Latn:devtest:{root}")


def test_translation_metrics_and_spbleu(tmp_path):
    import sentencepiece as spm

    refs = ["the cat sat on the mat", "a dog ran in the park today"]
    perfect = translation_metrics(refs, refs)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    other = translation_metrics(["the cat is on a mat", "a dog runs"], refs)
    assert 0 < other["bleu"] < 100 and 0 < other["chrf"] < 100
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(refs * 20 + ["the quick brown fox jumps over the lazy dog"] * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=30, model_type="bpe")
    sp = translation_metrics(["the cat is on a mat", "a dog runs"], refs,
                             spm_model=str(tmp_path / "sp.model"))
    assert sp["spbleu"] != sp["bleu"] and 0 < sp["spbleu"] < 100
    assert first_line("  Olá mundo.\n<en> more") == "Olá mundo."


def test_translation_bootstrap_is_paired_and_agrees_with_recomputed_corpus_scores():
    """The interval of BLEU/chrF differences from sufficient statistics equals the one from
    recomputing sacrebleu's corpus scores on the same resampled sentences."""
    import numpy as np
    import sacrebleu

    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on in a mat park house tree big small red".split()
    refs = [" ".join(rng.choice(words, 8)) for _ in range(40)]
    good = [r if i % 3 else " ".join(rng.choice(words, 8)) for i, r in enumerate(refs)]
    bad = [" ".join(rng.choice(words, 8)) for _ in refs]
    ci = translation_bootstrap(refs, good, bad, n_resamples=200, seed=3)
    assert set(ci) == {"bleu", "chrf"} and ci["bleu"][0] > 0 and ci["chrf"][0] > 0
    idx = np.random.default_rng(3).integers(0, 40, (200, 40))
    d = [sacrebleu.corpus_bleu([good[j] for j in i], [[refs[j] for j in i]]).score
         - sacrebleu.corpus_bleu([bad[j] for j in i], [[refs[j] for j in i]]).score
         for i in idx]
    assert ci["bleu"] == pytest.approx([np.percentile(d, 2.5), np.percentile(d, 97.5)],
                                       abs=1e-6)
    assert translation_bootstrap(refs, good, good, n_resamples=50) == {"bleu": [0.0, 0.0],
                                                                       "chrf": [0.0, 0.0]}


def test_lm_loss_counts_only_tokens_after_the_trained_tag():
    m = tiny_tagged()
    m.add_tag(TagConfig(name="<T>", kind="function", num_tokens=2))
    m.set_trainable(["<T>"])
    batch = m.encode(["source text <T> target", "more source here <T> out"])
    after = torch.tensor(m.bank.virtual_ids("<T>"))
    every = m.lm_targets(batch)
    later = m.lm_targets(batch, after)
    assert later.sum() < every.sum() and (later & ~every).sum() == 0
    grads = []
    for a in (None, after):  # tokens before the tag give it no gradient: equal sums
        m.bank.parameter("<T>").grad = None
        m.lm_loss(batch, reduction="sum", after=a).backward()
        grads.append(m.bank.parameter("<T>").grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[1].abs().sum() > 0
