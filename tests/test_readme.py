"""Every command of the README runs, so a documented example cannot break unnoticed.

The commands are read from the README's fenced code blocks and run as written, in a
working folder that holds the files they name, with two substitutions for speed: the tiny
local model instead of the embedded one (``--model`` and the recipe's ``model:``), and the
QED recipe scaled down (fewer rows and steps, the same stages, evaluations and baselines).
A command the test does not know how to run fails the test: add it to ``run_command``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml

from tagllm.cli import main
from tagllm.records import EvalResult
from tagllm.report import method_rows

from tiny import RecordingHub, save_tiny, start_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README lines that are the test suite itself (CI runs `make test`, which is all of it).
SUITE = {"make test", "make test-fast", ".venv/bin/python -m pytest -m slow"}
#: `make demo` runs this recipe (checked against the Makefile); the test runs the recipe.
DEMO = "tagllm run recipes/qed.yaml"
LAUNCHERS = ("torchrun", "accelerate")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """Every command line of the README's bash blocks (continuations joined, comments
    dropped), split like a shell would."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def scaled_recipe(src: Path, dst: Path, model: Path) -> None:
    """recipes/qed.yaml with the tiny model, and few rows and steps."""
    r = yaml.safe_load(src.read_text())
    r["model"] = str(model)
    for s in r["stages"]:
        s["train"].update(steps=3, batch_size=4, warmup_steps=1, log_every=1)
        for d in s["data"]:
            d["n"] = 24
        for e in s.get("eval", []):
            e["n"] = 12
    r["stages"][1]["train"]["warm_start_examples"] = 24
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(r, sort_keys=False))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    save_tiny(d / "tiny")
    scaled_recipe(ROOT / "recipes" / "qed.yaml", d / "recipes" / "qed.yaml", d / "tiny")
    (d / "configs").symlink_to(ROOT / "configs")
    (d / "examples").symlink_to(ROOT / "examples")
    (d / "molecules.smi").write_text((ROOT / "examples" / "molecules.smi").read_text())
    (d / "molecules.csv").write_text("smiles\nCCO\nc1ccccc1O\nCC(=O)Oc1ccccc1C(=O)O\n")
    mols = [f"{'C' * k}{end}" for k in range(1, 21) for end in ("O", "N", "F", "Cl", "S")]
    (d / "my.csv").write_text("smiles,logS\n" + "".join(f"{m},{-len(m) / 5:.2f}\n"
                                                         for m in mols))
    return d


#: shipped tags are SmolLM2's: the tiny model's stand-ins are the README demo's own tags
SHIPPED_STAND_INS = {"qed": "runs/qed/tags", "smiles": "runs/qed/tags/SMILES"}
#: shipped tags of another model, whose README commands tests/test_user_paths.py runs as
#: written on that model (slow)
REAL_MODEL_ONLY = {"translate"}


def real_model_commands() -> list[list[str]]:
    """The README commands that load :data:`REAL_MODEL_ONLY` tags."""
    return [w for w in commands()
            if "--tags" in w and w[w.index("--tags") + 1] in REAL_MODEL_ONLY]


def with_tiny_model(words: list[str], tiny: Path) -> list[str]:
    """``--model X`` -> the tiny model; commands that load a model get it added; shipped
    tags -> the demo's tags trained on the tiny model."""
    words = [SHIPPED_STAND_INS.get(w, w) if i and words[i - 1] == "--tags" else w
             for i, w in enumerate(words)]
    if "--model" in words:
        words[words.index("--model") + 1] = str(tiny)
    elif words[1] in ("train", "predict", "evaluate", "generate"):
        words += ["--model", str(tiny)]
    if words[1] == "train" and "--template" not in words and "--load" not in words:
        words += ["--load", SHIPPED_STAND_INS["smiles"]]
    if words[1] == "train" and "--steps" not in words:
        words += ["--steps", "20"]  # a head's default budget is for real models
    return words


def run_command(words: list[str], workdir: Path, servers: dict) -> None:
    """Run one README command in ``workdir`` (see the module docstring). ``tagllm serve``
    starts a server process (kept in ``servers`` until the test ends) that the README's
    ``curl`` commands then reach."""
    line = " ".join(words)
    if line in SUITE or words in real_model_commands():
        return
    if words[:2] == ["tagllm", "serve"]:
        tags = words[words.index("--tags") + 1]
        url, proc, log = start_server(workdir, [], tags=tags)
        servers.update(url=url, proc=proc, log=log)
        return
    if words[0] == "curl":
        servers["answer"] = curl(words, servers["url"])
        return
    if line == "make demo":
        assert f".venv/bin/{DEMO}" in (ROOT / "Makefile").read_text()
        return run_command(shlex.split(DEMO), workdir, servers)
    if words[0] == "tagllm":
        return main(with_tiny_model(words, workdir / "tiny")[1:] + ["--progress", "false"]
                    if words[1] not in ("list", "generate", "inspect", "report", "push", "gc")
                    else with_tiny_model(words, workdir / "tiny")[1:])
    if words[:2] == ["tensorboard", "--logdir"]:  # what the server would show: the scalars
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

        runs = EventMultiplexer().AddRunsFromDirectory(str(workdir / words[2]))
        runs.Reload()
        assert all("train/loss" in runs.GetAccumulator(r).Tags()["scalars"]
                   for r in ("smiles", "qed")), runs.Runs()
        return
    if words[0] in LAUNCHERS:  # two CPU processes (gloo) stand in for the GPUs
        if "--num_processes" in words:
            words[words.index("--num_processes") + 1] = "2"
        exe = {"torchrun": [sys.executable, "-m", "torch.distributed.run"],
               "accelerate": [str(Path(sys.executable).parent / "accelerate")]}[words[0]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        at = words.index("tagllm.cli")  # the command after it, with the tiny model's tags
        command = with_tiny_model(["tagllm", *words[at + 1:]], workdir / "tiny")[1:]
        done = subprocess.run([*exe, *words[1:at + 1], *command, "--progress", "false"],
                              cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out = " ".join(done.stdout.split())
        if command[0] == "run":
            assert "trained 0 stage(s)" in out, done.stdout[-2000:]
        else:  # the rows that one process writes
            assert "(2 processes)" in out, out
            assert_same_rows(workdir / command[command.index("--output") + 1],
                             workdir / "qed.csv")
        return
    raise AssertionError(f"the README command {line!r} is not run by any test: add it to "
                         "tests/test_readme.py")


@pytest.mark.slow
def test_every_readme_command_runs(workdir, monkeypatch, capsys):
    """The bash blocks in order (the launchers last, over the stored tags), then the
    Python block."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TAGLLM_STORE", str(workdir / "store"))
    monkeypatch.setenv("COLUMNS", "200")
    # `tagllm push` goes to a recorder that lands the upload in this Hub cache, from which
    # the next command loads the tags by repo id, offline
    RecordingHub.calls, RecordingHub.cache = [], workdir / "hf-cache"
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workdir / "hf-cache"))
    cmds = commands()
    assert len(cmds) >= 15
    servers: dict = {}
    try:
        for words in sorted(cmds, key=lambda w: w[0] in LAUNCHERS):
            run_command(words, workdir, servers)
    finally:
        if servers:
            servers["proc"].terminate()
            servers["proc"].wait(30)
            servers["log"].close()
    assert servers, "the README starts no server"
    out = capsys.readouterr().out
    assert "Morgan k-NN (k=5)" in out and "training mean" in out
    assert list(csv_rows(workdir / "qed.csv")[0]) == ["smiles", "name", "prediction"]
    assert csv_rows(workdir / "hub.csv") == csv_rows(workdir / "qed.csv")  # by repo id
    assert_same_rows(workdir / "qed.parquet", workdir / "qed.csv")  # screening: Parquet,
    assert_same_rows(workdir / "qed-ray.csv", workdir / "qed.csv")  # Ray workers
    features = csv_rows(workdir / "features.parquet")
    assert len(features) == len(csv_rows(workdir / "qed.csv"))
    assert len({len(r["embedding"]) for r in features}) == 1
    assert [c[0] for c in RecordingHub.calls] == ["init", "create_repo", "upload_folder"]
    assert float(csv_rows(workdir / "logS.csv")[0]["prediction"]) == pytest.approx(
        servers["answer"]["predictions"][0][0], abs=1e-5)  # served as predicted
    for code in blocks("python"):
        code = code.replace('"smollm2"', repr(str(workdir / "tiny")))
        exec(compile(code.replace('["qed"]', repr([SHIPPED_STAND_INS["qed"]])), "README",
                     "exec"), {})
    assert (workdir / "tags" / "Polymer" / "tag.json").is_file()


def curl(words: list[str], url: str) -> dict:
    """A README ``curl -H ... -d JSON URL`` sent to the test's server (its port for the
    README's), which must answer 200."""
    import httpx

    headers = dict(h.split(": ", 1) for i, h in enumerate(words) if words[i - 1] == "-H")
    body = words[words.index("-d") + 1]
    path = "/" + words[-1].split("//", 1)[1].split("/", 1)[1]
    answer = httpx.post(url + path, content=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_install_lines_are_the_setup_scripts(workdir):
    """The README's install-by-hand lines are the set-up script's own (CI runs the script),
    so they cannot drift from what is tested."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    lines = [ln.split("#")[0].strip() for b in blocks("sh") for ln in b.splitlines()]
    installs = [ln for ln in lines if ln.startswith("python -m pip install")]
    assert len(installs) >= 3
    for ln in installs:
        assert '"$VPY" -m pip install -q ' + ln.removeprefix("python -m pip install ") in setup, ln


def csv_rows(path: Path) -> list[dict]:
    import csv

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_rows(path: Path, reference: Path) -> None:
    """``path`` (CSV or Parquet) holds ``reference``'s rows and predictions, in order."""
    got, want = csv_rows(path), csv_rows(reference)
    assert [r["smiles"] for r in got] == [r["smiles"] for r in want]
    assert [float(r["prediction"]) for r in got] == pytest.approx(
        [float(r["prediction"]) for r in want], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_evaluate_prints_what_run_printed(workdir, monkeypatch):
    """`tagllm evaluate` on the recipe's own test sample, with the baselines fitted on the
    recipe's training sample, gives the rows `tagllm run` stored: the same methods under
    the same names with the same numbers (the ablation is measured during training only)."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TAGLLM_STORE", str(workdir / "store"))
    main(["run", "recipes/qed.yaml", "--progress", "false"])
    stored = json.loads((workdir / "runs" / "qed" / "results.json").read_text())
    ev = stored["stages"][1]["eval"][0]
    recipe = yaml.safe_load(open("recipes/qed.yaml"))
    baselines = recipe["stages"][1]["eval"][0]["baselines"]  # the same methods
    main(["evaluate", "--tags", "runs/qed/tags", "--data", "moses:test", "--n_examples", "12",
          "--label", "qed", "--baseline_train", "moses:train", "--baseline_examples", "24",
          "--baselines", ",".join(baselines), "--model", str(workdir / "tiny"),
          "--json_out", "ev.json", "--progress", "false"])
    got = method_rows(EvalResult.from_json(json.loads((workdir / "ev.json").read_text())))
    want = {"tags (<QED>)": ev["metrics"], **{k: v for k, v in ev["baselines"].items()
                                              if not k.startswith("ablation")}}
    assert list(got) == list(want) == ["tags (<QED>)", "Morgan k-NN (k=5)",
                                       "Morgan random forest (200 trees)", "training mean"]
    for method, metrics in want.items():  # strict JSON: an undefined metric is null
        assert set(got[method]) == set(metrics), method
        for k, v in metrics.items():
            assert (got[method][k] is None) if v is None else \
                got[method][k] == pytest.approx(v, rel=1e-5, abs=1e-9), (method, k)
