"""The README's user paths on the real embedded models (slow): the quickstart's prediction
and zero-shot translation from the shipped tags, and a tag trained on a user's own CSV in
three commands (train, predict, serve), each command as a user types it, with only the
budget made small."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tagllm.cli import main
from test_readme import real_model_commands

from tiny import start_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quickstart_predicts_qed_from_the_shipped_tags(tmp_path, monkeypatch):
    """`tagllm predict --tags qed --input examples/molecules.smi`: one prediction per
    molecule, in QED's range, the molecules' names kept."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "qed.csv"
    main(["predict", "--tags", "qed", "--input", "examples/molecules.smi", "--output",
          str(out), "--progress", "false"])
    got = rows(out)
    names = [ln.split()[1] for ln in (ROOT / "examples" / "molecules.smi").read_text()
             .splitlines()]
    assert [r["name"] for r in got] == names
    assert all(-0.2 < float(r["prediction"]) < 1.2 for r in got), got


def test_quickstart_translates_zero_shot_from_the_shipped_tags(monkeypatch, capsys):
    """The README's `tagllm generate --tags translate … --stop '\\n'` (its one command on
    Gemma-3's tags), run as written: one line, in Portuguese (a direction <Translate> never
    trained on) and not Spanish, the same text as the library's own generation."""
    from tagllm import TaggedModel
    from tagllm.shipped import SHIPPED

    monkeypatch.chdir(ROOT)
    [words] = real_model_commands()  # a new one belongs here
    assert words[:4] == ["tagllm", "generate", "--tags", "translate"]
    main(words[1:])
    out = capsys.readouterr().out.rstrip("\n")
    prompt = words[words.index("--prompt") + 1]
    assert prompt.startswith("<es> ") and prompt.endswith(" <Translate> <pt>")
    said = set(out.lower().replace(",", " ").replace(".", " ").split())
    assert out and "\n" not in out
    assert said & {"seu", "sua", "até", "terra", "do", "da", "comereis"}, out  # Portuguese
    assert not said & {"su", "hasta", "tierra", "y"}, out  # not the Spanish source
    m = TaggedModel.from_pretrained("gemma3", tags=SHIPPED["translate"].paths())
    assert m.generate([prompt], 64, stop=["\n"])[0].split("\n")[0] == out


def test_own_data_train_predict_serve(tmp_path, monkeypatch):
    """A CSV of measured solubilities: `tagllm train --data my.csv --label logS --tag
    '<LogS>'` (a short budget) writes tags/LogS and scores it against the random forest;
    `tagllm predict --tags tags/LogS` and `tagllm serve --tags tags/LogS` need nothing else
    (the shipped <SMILES> and the template come from the tag file) and agree."""
    import httpx

    from tagllm.sources import load_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAGLLM_STORE", str(tmp_path / "store"))
    table, _ = load_source("solubility:train", n=100, label="logS", progress=False)
    smiles, logs = table.columns["smiles"], table.columns["logS"]
    Path("my.csv").write_text("smiles,logS\n" + "".join(
        f"{s},{y}\n" for s, y in zip(smiles, logs, strict=True)))
    Path("new.csv").write_text("smiles\nCCO\nc1ccccc1O\n")
    main(["train", "--data", "my.csv", "--label", "logS", "--tag", "<LogS>", "--steps", "4",
          "--batch_size", "8", "--warm_start_examples", "80", "--progress", "false"])
    meta = json.loads(Path("tags/LogS/tag.json").read_text())
    ev = meta["provenance"]["eval"][0]
    assert ev["name"].startswith("split:test:my.csv")
    assert {"Morgan random forest (200 trees)", "training mean"} <= set(ev["baselines"])
    main(["predict", "--tags", "tags/LogS", "--input", "new.csv", "--output", "logS.csv",
          "--progress", "false"])
    predicted = [float(r["prediction"]) for r in rows(Path("logS.csv"))]
    assert len(predicted) == 2
    url, proc, log = start_server(tmp_path, [], tags="tags/LogS", model="smollm2")
    try:
        answer = httpx.post(f"{url}/v1/predict", json={"rows": [{"smiles": "CCO"},
                                                                {"smiles": "c1ccccc1O"}]},
                            timeout=120)
        assert answer.status_code == 200, answer.text
        served = [p[0] for p in answer.json()["predictions"]]
        assert served == pytest.approx(predicted, abs=1e-4)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
