"""``tagllm serve``: an HTTP JSON service for loaded tags (FastAPI + uvicorn).

Endpoints: ``POST /v1/predict`` (a function tag's head), ``POST /v1/generate`` (greedy
continuation), ``GET /v1/tags``, ``GET /health``. Each request is checked with the CLI's
rules and messages before it waits for the model, in cost order (body size, number of
inputs, then each input's token length, and only then its SMILES or amino acids: 4xx with
the message), in a worker thread, so the event loop (``/health``, other clients, a
shutdown) never waits on one request's checks. Valid requests from many clients are
micro-batched into shared forward passes (at most ``max_batch`` inputs, waiting at most
``max_wait_ms`` for more; requests queued while the model was busy join at once), a lane
each for predictions and generations so neither waits behind the other; a request not
answered within ``timeout_s`` gets 504 and, if it has not reached the model yet, is never
computed. At most ``max_pending``
requests wait at once: more get 503 at once instead of a queue that grows without limit.
Shutdown (Ctrl-C, SIGTERM) stops accepting and finishes the requests in flight (for at most
``GRACE_S`` seconds). The
service binds to
127.0.0.1 unless told otherwise, refuses bodies over ``max_body_bytes`` (413), and with a
token (``--token`` or ``TAGLLM_SERVE_TOKEN``) answers 401 to any request without
``Authorization: Bearer TOKEN`` and turns off ``/docs``, ``/redoc`` and ``/openapi.json``.
"""


import asyncio
import contextlib
import functools
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tagllm.data import LengthLimit, Table
from tagllm.errors import ConfigError, DataError, TagllmError, UnknownTagError, did_you_mean
from tagllm.model import TaggedModel
from tagllm.protocol.recipe import tags_in
from tagllm.records import JSONObject
from tagllm.sources import check_table

TOKEN_ENV = "TAGLLM_SERVE_TOKEN"
log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Limits and batching of the service; every field is checked on creation."""

    host: str = "127.0.0.1"
    port: int = 8000
    template: str | None = None  # renders ``rows`` requests without their own template
    max_batch: int = 64  # inputs per forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_pending: int = 256  # requests waiting or running; more get 503
    max_inputs: int = 256  # inputs in one request; more get 413
    max_body_bytes: int = 1_000_000
    max_length: int = 512  # tokens per input; longer ones get 422 (never truncated)
    max_new_tokens: int = 256  # the most a generate request may ask for
    timeout_s: float = 60.0  # a request not answered by then gets 504
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("port", "max_batch", "max_pending", "max_inputs", "max_body_bytes",
                     "max_length", "max_new_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "port"
                                                                    else 1):
                raise ConfigError(f"serve: {name} must be a positive integer, got {v!r}")
        if not (isinstance(self.max_wait_ms, int | float) and 0 <= self.max_wait_ms <= 10_000):
            raise ConfigError(f"serve: max_wait_ms must be in [0, 10000], got "
                              f"{self.max_wait_ms!r}")
        if not (isinstance(self.timeout_s, int | float) and not isinstance(self.timeout_s, bool)
                and 0 < self.timeout_s <= 3600):
            raise ConfigError(f"serve: timeout_s must be in (0, 3600], got {self.timeout_s!r}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("serve: a token must have at least 8 characters")

    def public(self) -> JSONObject:
        """The settings /health shows (never the token)."""
        return {k: v for k, v in asdict(self).items() if k != "token"} | {
            "auth": self.token is not None}


class Overloaded(Exception):
    """More requests are pending than the service allows."""


@dataclass
class _Job:
    kind: str  # "predict" or "generate"
    texts: list[str]
    tag: str | None
    max_new_tokens: int
    future: asyncio.Future


LANES = ("predict", "generate")


class Batcher:
    """Micro-batching: requests queue up; a worker takes what is already queued and what
    arrives within the wait window (up to ``max_batch`` inputs), runs the model once per tag
    in its own thread, and answers each request with its own rows. Predictions and
    generations have a lane each (queue, worker, model thread), so a long generation never
    holds up predictions nor they it. Requests' checks run in a separate small pool of
    threads (:meth:`check`), so checks never wait behind the model nor it behind them; a
    request counts as pending from its checks to its answer (:meth:`admit`)."""

    def __init__(self, model: TaggedModel, cfg: ServeConfig) -> None:
        self.model, self.cfg = model, cfg
        self.pending = 0
        self.batches = 0
        self.queues: dict[str, asyncio.Queue[_Job | None]] = {}
        self.workers: list[asyncio.Task] = []
        self.checks = ThreadPoolExecutor(2, thread_name_prefix="tagllm-checks")
        self.compute = {lane: ThreadPoolExecutor(1, thread_name_prefix=f"tagllm-{lane}")
                        for lane in LANES}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.queues = {lane: asyncio.Queue() for lane in LANES}
        self.workers = [loop.create_task(self._run(lane)) for lane in LANES]

    async def stop(self) -> None:
        """Finish every queued job whose client still waits, then stop the workers."""
        for q in self.queues.values():
            await q.put(None)
        await asyncio.gather(*self.workers)
        self.checks.shutdown(wait=False, cancel_futures=True)
        for pool in self.compute.values():
            pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def admit(self):
        """Count a request as pending while it is checked, queued and computed; past
        ``max_pending`` :class:`Overloaded`."""
        if self.pending >= self.cfg.max_pending:
            raise Overloaded
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def check(self, fn, *args) -> Any:
        """``fn(*args)`` (a request's checks) in the checks' threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.checks, functools.partial(fn, *args))

    async def submit(self, kind: str, texts: list[str], tag: str | None = None,
                     max_new_tokens: int = 0) -> Any:
        assert self.queues, "the batcher is not started"
        fut = asyncio.get_running_loop().create_future()
        await self.queues[kind].put(_Job(kind, texts, tag, max_new_tokens, fut))
        return await fut

    async def _next(self, queue: asyncio.Queue, deadline: float) -> _Job | None | bool:
        """The next queued job: one already waiting at once (so requests that queued while
        the model was busy share a batch even with ``max_wait_ms`` 0), else one arriving
        before ``deadline``; False when none came."""
        try:
            return queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        try:
            return await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return False

    async def _run(self, lane: str) -> None:
        queue, loop = self.queues[lane], asyncio.get_running_loop()
        stopping = False
        while not stopping:
            job = await queue.get()
            if job is None:
                break
            batch, size = [job], len(job.texts)
            deadline = loop.time() + self.cfg.max_wait_ms / 1000
            while size < self.cfg.max_batch:
                nxt = await self._next(queue, deadline)
                if nxt is False:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            batch = [j for j in batch if not j.future.done()]  # not those whose client gave up
            if not batch:
                continue
            results = await loop.run_in_executor(self.compute[lane], self._compute, batch)
            self.batches += 1
            for j, r in zip(batch, results, strict=True):
                if not j.future.done():
                    (j.future.set_exception if isinstance(r, BaseException)
                     else j.future.set_result)(r)

    def _compute(self, batch: list[_Job]) -> list[Any]:
        """The model's work for a batch (in a worker thread): one prediction pass per tag
        over every request's inputs, generation per request. If a merged pass fails, its
        requests run one by one, so that only a faulty one gets the error."""
        out: list[Any] = [None] * len(batch)
        by_tag: dict[str, list[int]] = {}
        for i, j in enumerate(batch):
            if j.kind == "predict":
                by_tag.setdefault(str(j.tag), []).append(i)
        for tag, idx in by_tag.items():
            try:
                preds = self._predict([t for i in idx for t in batch[i].texts], tag)
            except Exception as e:  # noqa: BLE001 - retried per request below
                log.warning("a batch of %d request(s) for %s failed (%s); retrying them one "
                            "by one", len(idx), tag, e)
                for i in idx:
                    out[i] = e if batch[i].future.done() else self._answer(
                        lambda i=i, tag=tag: self._predict(batch[i].texts, tag))
                continue
            start = 0
            for i in idx:
                n = len(batch[i].texts)
                out[i] = preds[start:start + n]
                start += n
        for i, j in enumerate(batch):
            if j.kind == "generate":
                out[i] = self._answer(lambda j=j: self.model.generate(
                    j.texts, max_new_tokens=j.max_new_tokens, batch_size=self.cfg.max_batch))
        return out

    def _predict(self, texts: list[str], tag: str) -> np.ndarray:
        return self.model.predict(texts, tag=tag, batch_size=self.cfg.max_batch,
                                  max_length=self.cfg.max_length)

    @staticmethod
    def _answer(compute) -> Any:
        """``compute()``, or the exception it raised (handed to the waiting request)."""
        try:
            return compute()
        except Exception as e:  # noqa: BLE001
            return e


def check_inputs(model: TaggedModel, texts: list[str], max_length: int) -> None:
    """The CLI's checks of model inputs: every tag known, no input too long (the tokenizer
    is linear in the length, and nothing else looks at an input before it)."""
    known = set(model.bank.names)
    for i, t in enumerate(texts):
        unknown = [x for x in tags_in(t) if x not in known]
        if unknown:
            raise UnknownTagError(f"input {i}: unknown tag {unknown[0]}; loaded tags: "
                                  f"{', '.join(sorted(known))}{did_you_mean(unknown[0], known)}")
    model.tagtok.encode_batch(texts, max_length, where="input")


def render_rows(rows: list[JSONObject], template: str, limit: LengthLimit | None = None,
                deadline: float | None = None) -> list[str]:
    """``rows`` checked as a file's rows are (in cost order: the shape of each row, then
    ``limit``, the token length of its rendered input, then SMILES and protein columns by
    name; errors name the row, counted from 1) and rendered with ``template``. Past
    ``deadline`` (``time.monotonic()``), looked at before each row's chemistry, the checks
    stop: the client has had its 504, and the checks' thread is free again."""
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError("rows: expected a non-empty list of objects (column -> value)")
    names = list(rows[0])
    for i, r in enumerate(rows, 1):
        if list(r) != names:
            raise DataError(f"request row {i}: columns {sorted(r)} differ from row 1's "
                            f"{sorted(names)}")
        bad = [k for k, v in r.items() if not isinstance(v, str | int | float)]
        if bad:
            raise DataError(f"request row {i}: column {bad[0]!r} must be a string or number")
    table = Table({n: [str(r[n]) for r in rows] for n in names}, "request",
                  list(range(1, len(rows) + 1)))

    def tick(i: int) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise RequestError(504, f"checks stopped at request row {i + 1}: past the "
                                    "server's timeout_s")

    table, _ = check_table(table, limit, tick)
    return table.render(template)


def predict_inputs(model: TaggedModel, cfg: ServeConfig, inputs: list[str] | None,
                   rows: list[JSONObject] | None, template: str | None,
                   tag: str | None, deadline: float | None = None
                   ) -> tuple[list[str], str, list[str]]:
    """A predict request checked and rendered: (texts, function tag, output columns). Runs
    in a worker thread; every input of the request is checked before it is queued, until
    ``deadline`` (``time.monotonic()``)."""
    if (inputs is None) == (rows is None):
        raise RequestError(422, "give exactly one of inputs (texts with tags) or rows (with "
                                "a template)")
    if inputs is None:
        template = template or cfg.template
        if template is None:
            raise RequestError(422, "rows need a template (in the request or the server's "
                                    "--template)")
        inputs = render_rows(rows or [], template, model.tagtok.length_limit(
            template, cfg.max_length, hint="shorten the input (max_length is the server's "
                                           "--max_length)"), deadline)
    if not inputs:
        raise RequestError(422, "no inputs")
    check_inputs(model, inputs, cfg.max_length)
    tag = tag or model.function_tag_of(inputs[0])
    head = model.head(tag) if tag in model.bank.names else None
    if head is None or not head.has_parameters:
        raise RequestError(422, f"tag {tag} has no regression/classification head; tags "
                                f"with heads: {model.head_tags()}")
    missing = [i for i, t in enumerate(inputs) if tag not in tags_in(t)]
    if missing:
        raise RequestError(422, f"input(s) {missing[:10]} do not contain the function tag "
                                f"{tag}")
    return inputs, tag, head.output_names()


class RequestError(Exception):
    """A request the service refuses with ``status`` (raised in worker threads, answered
    by the application)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, declared (Content-Length) or
    streamed (chunked). The body is read here, at most ``limit`` bytes of it, before the
    application sees any."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        body = f'{{"detail": "request body over {self.limit} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(model: TaggedModel, cfg: ServeConfig):
    """The FastAPI application serving ``model``'s tags under ``cfg``."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    batcher = Batcher(model, cfg)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn has finished the requests in flight

    def authorized(request: Request) -> None:
        if cfg.token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {cfg.token}".encode()):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    # The interactive docs and the schema are routes of their own, outside the token's
    # dependency: with a token they are switched off instead of answering anyone.
    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None} if cfg.token else {}
    app = FastAPI(title="tagllm", lifespan=lifespan, dependencies=[Depends(authorized)],
                  **hidden)
    app.state.batcher = batcher

    @app.exception_handler(TagllmError)
    async def tagllm_error(request: Request, e: TagllmError):
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    class PredictRequest(BaseModel):
        inputs: list[str] | None = Field(None, description="texts with their tags")
        # any JSON here: render_rows checks each value and names the row it refuses
        rows: list[dict[str, Any]] | None = Field(None, description="column -> value")
        template: str | None = Field(None, description="renders rows")
        tag: str | None = Field(None, description="the function tag whose head predicts")

    class GenerateRequest(BaseModel):
        prompts: list[str]
        max_new_tokens: int = 64

    def too_many(n: int) -> None:
        if n > cfg.max_inputs:
            raise HTTPException(413, f"{n} inputs in one request; the limit is "
                                     f"{cfg.max_inputs}")

    @asynccontextmanager
    async def admitted():
        """The request counted as pending (503 past max_pending) and under its time limit:
        checks (in a thread) and model work together (504 past timeout_s)."""
        try:
            async with batcher.admit(), asyncio.timeout(cfg.timeout_s):
                yield
        except Overloaded:
            raise HTTPException(503, f"overloaded: {cfg.max_pending} requests pending; retry "
                                     "later", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise HTTPException(504, f"not answered within {cfg.timeout_s:g} s (the server's "
                                     "timeout_s)") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.model_name, "tags": model.bank.names,
                "pending": batcher.pending, "batches": batcher.batches,
                "settings": cfg.public()}

    @app.get("/v1/tags")
    async def tags():
        out = []
        for name in model.bank.names:
            head = model.head(name)
            out.append({"name": name, "num_tokens": int(model.bank.parameter(name).shape[0]),
                        "head": None if head is None else head.kind,
                        "outputs": head.output_names() if head is not None
                        and head.has_parameters else None})
        return {"model": model.model_name, "fingerprint": model.fingerprint, "tags": out}

    @app.post("/v1/predict")
    async def predict(req: PredictRequest):
        too_many(len(req.inputs if req.inputs is not None else req.rows or []))
        deadline = time.monotonic() + cfg.timeout_s
        async with admitted():
            texts, tag, columns = await batcher.check(
                predict_inputs, model, cfg, req.inputs, req.rows, req.template, req.tag,
                deadline)
            preds = await batcher.submit("predict", texts, tag)
        return {"tag": tag, "columns": columns,
                "predictions": np.asarray(preds, dtype=float).round(7).tolist()}

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest):
        too_many(len(req.prompts))
        if not req.prompts:
            raise HTTPException(422, "no prompts")
        if not 1 <= req.max_new_tokens <= cfg.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens must be in [1, {cfg.max_new_tokens}]")
        async with admitted():
            await batcher.check(check_inputs, model, req.prompts, cfg.max_length)
            return {"outputs": await batcher.submit("generate", req.prompts, None,
                                                    req.max_new_tokens)}

    return app


#: Seconds a stop (Ctrl-C, SIGTERM) waits for the requests in flight; those not done by
#: then lose their connection (a model pass already running still ends first).
GRACE_S = 5


def serve(model: TaggedModel, cfg: ServeConfig) -> None:
    """Run the service until Ctrl-C / SIGTERM (then finish the requests in flight, for at
    most :data:`GRACE_S` seconds)."""
    import uvicorn

    uvicorn.run(create_app(model, cfg), host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=GRACE_S)


def token_from_env(token: str | None) -> str | None:
    """The token flag, else ``TAGLLM_SERVE_TOKEN``, else None (no authentication)."""
    return token or os.environ.get(TOKEN_ENV) or None
