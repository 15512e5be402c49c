"""`tagllm serve` over real HTTP: a server process on a tiny model, concurrent good and bad
requests, the token, body and queue limits, and a shutdown that finishes what is in flight."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tagllm.errors import ConfigError, DataError
from tagllm.serve import ServeConfig

from tiny import saved_tiny_tags, start_server

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MOLS = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "OCC(O)CO", "C#N", "CCCCCC", "CSC"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `tagllm serve` process on a tiny model with <S> and <Q> (regression); yields
    (base URL, the model in this process for offline predictions, the process)."""
    d = tmp_path_factory.mktemp("serve")
    m = saved_tiny_tags(d)
    url, proc, log = start_server(
        d, ["--template", "<S> {smiles} <Q>", "--max_pending", "4", "--max_wait_ms", "300",
            "--max_inputs", "8", "--max_body_bytes", "20000", "--max_length", "64"],
        env={"TAGLLM_SERVE_TOKEN": TOKEN}, headers=AUTH)
    yield url, m, proc
    if proc.poll() is None:
        proc.kill()
    log.close()


def _post(url: str, path: str, body: dict, headers=AUTH) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)


def test_concurrent_requests_share_batches_and_match_offline_predictions(server):
    url, m, _ = server
    before = httpx.get(f"{url}/health", headers=AUTH).json()["batches"]
    bodies = [{"inputs": [f"<S> {s} <Q>" for s in MOLS[:4]]},
              {"rows": [{"smiles": s} for s in MOLS[4:]]},
              {"rows": [{"smiles": "CCO"}], "template": "<S> {smiles} <Q>"},
              {"inputs": ["<S> CCO <Q>"], "tag": "<Q>"}]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: _post(url, "/v1/predict", b), bodies))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    want = m.predict([f"<S> {s} <Q>" for s in MOLS])
    got = np.array(answers[0].json()["predictions"] + answers[1].json()["predictions"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(answers[2].json()["predictions"],
                               answers[3].json()["predictions"], rtol=1e-5)
    assert answers[0].json()["tag"] == "<Q>" and answers[0].json()["columns"] == ["prediction"]
    batches = httpx.get(f"{url}/health", headers=AUTH).json()["batches"] - before
    assert 1 <= batches < 4  # the four requests arrived within one wait window or two
    gen = _post(url, "/v1/generate", {"prompts": ["<S> CC"], "max_new_tokens": 3})
    assert gen.status_code == 200 and len(gen.json()["outputs"]) == 1
    tags = httpx.get(f"{url}/v1/tags", headers=AUTH).json()
    assert sorted((t["name"], t["head"], t["num_tokens"]) for t in tags["tags"]) == [
        ("<Q>", "regression", 2), ("<S>", None, 3)]


@pytest.mark.parametrize("body,status,message", [
    ({"inputs": ["<X> CCO <Q>"]}, 422, "input 0: unknown tag <X>"),
    ({"rows": [{"smiles": "CCO"}, {"smiles": "C1CC"}]}, 422, "request row 2: column 'smiles'"),
    ({"inputs": ["<S> " + "C" * 400 + " <Q>"]}, 422, "tokens"),
    ({"inputs": ["<S> C <Q>"] * 9}, 413, "9 inputs in one request; the limit is 8"),
    ({"inputs": ["<S> C"]}, 422, "no function tag with a head"),
    ({"inputs": ["<S> C <Q>"], "rows": [{"smiles": "C"}]}, 422, "exactly one of"),
    ({"inputs": "<S> C <Q>"}, 422, "list"),
    ({"inputs": ["<S> C <Q>"], "tag": "<S>"}, 422, "no regression/classification head"),
])
def test_bad_requests_get_4xx_with_the_cli_message(server, body, status, message):
    url, _, _ = server
    r = _post(url, "/v1/predict", body)
    assert r.status_code == status and message in r.text, r.text


def test_token_body_size_and_generate_limits(server):
    url, _, _ = server
    assert httpx.get(f"{url}/health").status_code == 401
    assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer wrong"}
                     ).status_code == 401
    r = _post(url, "/v1/predict", {"inputs": ["<S> C <Q>"]}, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for path in ("/docs", "/redoc", "/openapi.json"):  # no schema or docs page to anyone
        for headers in ({}, AUTH):
            r = httpx.get(f"{url}{path}", headers=headers)
            assert r.status_code in (401, 404) and "/v1/predict" not in r.text, (path, r.text)
    big = {"inputs": ["<S> C <Q>"], "pad": "x" * 30_000}
    assert _post(url, "/v1/predict", big).status_code == 413

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        yield b'{"inputs": ["<S> C <Q>"], "pad": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{url}/v1/predict", content=chunks(), timeout=60,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = _post(url, "/v1/generate", {"prompts": ["<S> C"], "max_new_tokens": 100_000})
    assert r.status_code == 422 and "max_new_tokens" in r.text


def test_overload_gets_503_and_nothing_is_lost(server):
    """10 simultaneous requests against max_pending 4 and a 300 ms batch window: the first
    four wait in the window and are answered, the rest get 503 at once."""
    url, m, _ = server
    bodies = [{"inputs": [f"<S> {MOLS[i % 8]} <Q>"]} for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda b: _post(url, "/v1/predict", b), bodies))
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    assert all("overloaded" in a.text and a.headers["retry-after"] == "1"
               for a in answers if a.status_code == 503)
    for b, a in zip(bodies, answers, strict=True):
        if a.status_code == 200:
            np.testing.assert_allclose(a.json()["predictions"], m.predict(b["inputs"]),
                                       rtol=1e-4, atol=1e-5)


def test_shutdown_finishes_the_request_in_flight(server):
    """SIGTERM while a request waits in the batch window: it is still answered, then the
    process exits cleanly. (Runs last: it stops the module's server.)"""
    url, m, proc = server
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_post, url, "/v1/predict", {"inputs": ["<S> CCO <Q>"]})
        # signal only once the server holds the request (checked, queued or computing):
        # a fixed sleep raced the client's connect on a loaded machine
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health", headers=AUTH).json()["pending"] < 1:
            assert not pending.done(), "answered before it was seen pending"
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        answer = pending.result(timeout=60)
    assert answer.status_code == 200
    np.testing.assert_allclose(answer.json()["predictions"], m.predict(["<S> CCO <Q>"]),
                               rtol=1e-4, atol=1e-5)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, which tagllm's
    # handler turns into exit status 128 + SIGTERM
    assert proc.wait(timeout=60) in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    log = Path(proc.args[proc.args.index("--tags") + 1]).parent / "server.log"
    assert "Application shutdown complete" in log.read_text()


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(ConfigError, match="token"):
        ServeConfig(token="short")
    assert "token" not in ServeConfig(token="long-enough-token").public()


def _tagged():
    """A tiny model with <S> and <Q> (regression), in this process."""
    from tagllm import HeadConfig, TagConfig

    from tiny import tiny_tagged

    m = tiny_tagged()
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random"))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, head=HeadConfig("regression")))
    return m


def test_every_input_needs_the_function_tag_and_a_failing_batch_is_retried_per_request():
    """A request whose second input lacks the tag is refused before it is queued; and if a
    merged pass still fails, only the faulty request gets the error."""
    import asyncio

    from tagllm.serve import Batcher, RequestError, _Job, predict_inputs

    m = _tagged()
    cfg = ServeConfig(max_length=64)
    with pytest.raises(RequestError, match=r"input\(s\) \[1\] do not contain the function "
                                           r"tag <Q>"):
        predict_inputs(m, cfg, ["<S> CCO <Q>", "<S> CCO"], None, None, None)
    loop = asyncio.new_event_loop()
    try:
        good = _Job("predict", ["<S> CCO <Q>", "<S> CCN <Q>"], "<Q>", 0, loop.create_future())
        bad = _Job("predict", ["<S> CCO"], "<Q>", 0, loop.create_future())  # not checked
        out = Batcher(m, cfg)._compute([good, bad])
    finally:
        loop.close()
    np.testing.assert_allclose(out[0], m.predict(good.texts), rtol=1e-5, atol=1e-6)
    assert isinstance(out[1], Exception) and "<Q>" in str(out[1])


def test_a_request_past_its_deadline_gets_504_and_is_never_computed():
    from fastapi.testclient import TestClient

    from tagllm.serve import create_app

    m = _tagged()
    cfg = ServeConfig(max_length=64, max_wait_ms=500, timeout_s=0.05)
    with TestClient(create_app(m, cfg)) as client:
        r = client.post("/v1/predict", json={"inputs": ["<S> CCO <Q>"]})
        assert r.status_code == 504 and "timeout_s" in r.text, r.text
        time.sleep(0.8)  # past the batch window: the worker took the job and dropped it
        assert client.get("/health").json()["batches"] == 0
    with pytest.raises(ConfigError, match="timeout_s"):
        ServeConfig(timeout_s=0)


def test_a_requests_checks_stop_at_its_deadline(monkeypatch):
    """The client has its 504 at the deadline; the checks' thread must not go on checking
    the rest of its rows (slow SMILES can cost seconds each)."""
    import tagllm.sources
    from tagllm.serve import RequestError, predict_inputs

    checked = []

    def slow_check(value: str) -> str:
        checked.append(value)
        time.sleep(0.02)
        return value

    monkeypatch.setattr(tagllm.sources, "check_smiles", slow_check)
    m = _tagged()
    rows = [{"smiles": "CCO"}] * 60
    with pytest.raises(RequestError, match="past the server's timeout_s") as e:
        predict_inputs(m, ServeConfig(max_length=64), None, rows, "<S> {smiles} <Q>", None,
                       deadline=time.monotonic() + 0.1)
    assert e.value.status == 504
    assert len(checked) <= 0.1 / 0.02 + 2 < len(rows)
    checked.clear()  # no deadline: every row
    predict_inputs(m, ServeConfig(max_length=64), None, rows, "<S> {smiles} <Q>", None)
    assert len(checked) == len(rows)
    # checks across rows still see the whole request (a repeated id far apart)
    ids = [{"id": f"m{i % 12}", "smiles": "CCO"} for i in range(20)]
    with pytest.raises(DataError, match="duplicate id 'm0'"):
        predict_inputs(m, ServeConfig(max_length=64), None, ids, "<S> {smiles} <Q>", None,
                       deadline=time.monotonic() + 60)


def _run_batcher(m, cfg, work):
    """``work(batcher)`` (a coroutine) on a started :class:`Batcher`, in a fresh loop."""
    import asyncio

    from tagllm.serve import Batcher

    async def main():
        b = Batcher(m, cfg)
        b.start()
        try:
            return await work(b), b.batches
        finally:
            await b.stop()

    return asyncio.run(main())


def test_max_wait_0_still_batches_requests_that_queued_meanwhile():
    """With no wait window, 20 requests queued at once share one pass (they used to get
    one pass each); the answers are each request's own rows."""
    import asyncio

    m = _tagged()
    texts = [f"<S> {MOLS[i % 8]}{'C' * (i // 8)} <Q>" for i in range(20)]

    async def work(b):
        return await asyncio.gather(*(b.submit("predict", [t], "<Q>") for t in texts))

    answers, batches = _run_batcher(m, ServeConfig(max_length=64, max_wait_ms=0), work)
    assert batches == 1
    np.testing.assert_allclose(np.concatenate(answers), m.predict(texts), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("slow", ["generate", "predict"])
def test_a_long_job_in_one_lane_does_not_hold_up_the_other(slow):
    """A generation (or a prediction) that has not finished (it waits on an event) does not
    stop a job of the other kind submitted after it from being answered; then the slow
    one completes too."""
    import asyncio
    import threading

    m = _tagged()
    release, real = threading.Event(), getattr(m, slow)

    def held(*args, **kwargs):
        assert release.wait(30), "the test never released the slow job"
        return real(*args, **kwargs)

    setattr(m, slow, held)
    jobs = {"generate": (["<S> CC"], None, 2), "predict": (["<S> CCO <Q>"], "<Q>")}
    fast = "predict" if slow == "generate" else "generate"

    async def work(b):
        first = asyncio.ensure_future(b.submit(slow, *jobs[slow]))
        await asyncio.sleep(0.05)  # the slow job is running in its lane
        second = await asyncio.wait_for(b.submit(fast, *jobs[fast]), 20)
        assert not first.done()
        release.set()
        return second, await first

    (second, first), _ = _run_batcher(m, ServeConfig(max_length=64, max_wait_ms=0), work)
    pred, gen = (second, first) if slow == "generate" else (first, second)
    np.testing.assert_allclose(pred, real(["<S> CCO <Q>"]) if slow == "predict" else
                               m.predict(["<S> CCO <Q>"]), rtol=1e-5, atol=1e-6)
    assert len(gen) == 1


def test_deep_tags_and_a_pooled_middle_layer_readout_are_served_as_predicted_offline():
    """A deep <S> and a deep, residual-MLP <Q> whose head reads layer 1 with pooling: the
    service's predictions and generations (micro-batched, several at once) equal the
    model's own."""
    from fastapi.testclient import TestClient

    from tagllm import HeadConfig, TagConfig
    from tagllm.serve import create_app

    from tiny import tiny_tagged

    m = tiny_tagged()
    m.add_tag(TagConfig("<S>", num_tokens=3, init="random", depth="deep"))
    m.add_tag(TagConfig("<Q>", kind="function", num_tokens=2, depth="deep",
                        reparam="residual_mlp",
                        head=HeadConfig("regression", readout_layer=1, pool="tag+mean")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad or p.dim() == 3:  # tags, offsets, MLP, head
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    texts = [f"<S> {s} <Q>" for s in MOLS]
    cfg = ServeConfig(max_length=64, max_wait_ms=200)
    with TestClient(create_app(m, cfg)) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda t: client.post("/v1/predict", json={"inputs": [t]}),
                                texts))
        gen = client.post("/v1/generate", json={"prompts": ["<S> CC", "<S> C <Q>"],
                                                "max_new_tokens": 3})
    got = np.array([a.json()["predictions"][0] for a in answers])
    np.testing.assert_allclose(got, m.predict(texts), rtol=1e-4, atol=1e-5)
    assert gen.json()["outputs"] == m.generate(["<S> CC", "<S> C <Q>"], max_new_tokens=3)
