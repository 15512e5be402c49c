"""Screening on a Ray cluster: the same predictions and features as :mod:`tagllm.inference`,
computed by Ray actors that each load the model and the (verified) tags once.

Two ways in:

- :func:`ray_screen` (``tagllm predict|embed --engine ray --workers N``): the driver reads
  the input in chunks and hands each chunk not done yet to a pool of N actors (each with
  ``gpus_per_worker`` GPUs); the actors check and compute the rows, the driver writes each
  chunk as a part and joins the parts in input order, as every engine does
  (:mod:`tagllm.shards`): resumable, with the same output as one process. An actor that
  dies is restarted and its chunk retried (``max_restarts`` / ``max_task_retries``), so no
  row is lost or written twice.
- :class:`TaggedPredictor`, a callable class for your own Ray Data pipeline::

      ds = ray.data.read_parquet("library.parquet")
      ds = ds.map_batches(TaggedPredictor, fn_constructor_kwargs={"tags": "qed"},
                          batch_size=1024, batch_format="pyarrow", concurrency=8, num_gpus=1)
      ds.write_parquet("scored/")

Ray is an optional dependency: ``pip install 'tagllm[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tagllm.costs import peak_rss_gb
from tagllm.data import Table, check_output, table_from_arrow
from tagllm.distributed import World
from tagllm.errors import ConfigError, MissingPackageError, TagllmError
from tagllm.inference import CHUNK_ROWS, Screen, load_tagged, run_chunks
from tagllm.records import JSONObject
from tagllm.shards import Rows, input_identity, to_arrow


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingPackageError("the Ray engine needs Ray: pip install 'tagllm[ray]'") \
            from None
    return ray


class TaggedPredictor:
    """A callable class for Ray Data's ``map_batches``: a batch of rows (pyarrow, pandas or
    a dict of arrays) in, the same rows with their predictions (``task="predict"``) or an
    ``embedding`` column (``task="embed"``) out, as a pyarrow Table. Each actor loads the
    base model and the tags once. ``tags`` is what ``--tags`` takes; ``template`` and
    ``model`` default to what the tag files record. Rows are checked as ``tagllm predict``
    checks them: a bad row is an error naming it (its place in the batch), or with
    ``skip_invalid`` it is left out of the output. With ``keep_errors`` a mistake found
    while loading (a tag, the template) is raised by the first call instead, so that an
    actor reports it rather than dying."""

    def __init__(self, tags: str | Sequence[str | Path], template: str | None = None,
                 task: str = "predict", tag: str | None = None, layer: int | None = None,
                 pool: str | None = None, model: str | None = None, dtype: str = "float32",
                 batch_size: int = 32, max_length: int = 512, skip_invalid: bool = False,
                 device: str | None = None, keep_errors: bool = False):
        from tagllm.protocol.standalone import (
            recorded_model,
            recorded_template,
            tag_dirs,
            with_trained_with,
        )

        try:
            dirs = with_trained_with(tag_dirs(tags) if isinstance(tags, str)
                                     else [Path(t) for t in tags])
            template = template or recorded_template(dirs, tag)
            if template is None:
                raise ConfigError("template: the tag files record no single template; "
                                  "give one")
            screen = Screen(task, template, tag, layer, pool, batch_size, max_length,
                            skip_invalid)  # type: ignore[arg-type]
            import torch

            device = device or ("cuda" if torch.cuda.is_available() and dtype != "int8"
                                else "cpu")
            self.model = load_tagged(dirs, recorded_model(dirs, model), dtype, device)
            self.screen = screen.resolved(self.model)
            self.error: TagllmError | None = None
        except TagllmError as e:
            if not keep_errors:
                raise
            self.error = e  # raised by the first call, where the driver sees it as itself

    def __call__(self, batch):
        import pyarrow as pa

        if self.error is not None:
            raise self.error
        if not isinstance(batch, pa.Table | pa.RecordBatch):
            batch = pa.Table.from_pandas(batch, preserve_index=False) \
                if hasattr(batch, "to_numpy") and hasattr(batch, "columns") \
                else pa.table(batch)
        rows, _ = self.screen.rows(self.model, table_from_arrow(batch, "a Ray batch"))
        return to_arrow(rows)

    # the chunk engine's calls (rows keep their file's row numbers)
    def job(self, input: JSONObject, chunk_rows: int) -> JSONObject:
        """What identifies this computation over the input (its identity, taken by the
        driver, which reads it), as :func:`~tagllm.inference.screen_file`'s."""
        if self.error is not None:
            raise self.error
        return self.screen.job(input, chunk_rows, self.model)

    def peak_rss_gb(self) -> float:
        """This process's peak resident memory so far (GB)."""
        return peak_rss_gb()

    def chunk(self, index: int, table: Table) -> tuple[int, Rows, list[str]]:
        """A chunk's checked rows with their computed columns, and the skipped rows."""
        return index, *self.screen.rows(self.model, table)


def ray_screen(tags: Sequence[Path], model: str, screen: Screen, input: str,
               output: str | Path, workers: int = 1, gpus_per_worker: float | None = None,
               cpus_per_worker: float | None = None, address: str | None = None,
               dtype: str = "float32", chunk_rows: int = CHUNK_ROWS, progress: bool = True,
               on_skipped: Callable[[list[str]], None] = lambda rows: None,
               log: Callable[[str], None] = lambda s: None, retries: int = 3,
               predictor: type[TaggedPredictor] | None = None) -> int:
    """Compute ``screen`` for every row of ``input`` into ``output`` on ``workers`` Ray
    actors of class ``predictor`` (:class:`TaggedPredictor` or a subclass): on the Ray
    instance this process is connected to, else the cluster at ``address`` ("auto": the one
    this node belongs to), else a local one started here (and stopped after). An actor
    that dies is restarted and its chunk retried up to ``retries`` times. Returns the
    number of rows written."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--engine ray runs from one process: start it without torchrun / "
                          "accelerate launch")
    if dtype == "int8" and gpus_per_worker:
        raise ConfigError("dtype int8 runs on the CPU only: --gpus_per_worker 0")
    fmt = screen.output_format(output)
    check_output(input, output)
    identity = input_identity(input)  # here, where the input is read
    ray = _ray()
    started = not ray.is_initialized()
    if started:  # "local": a new instance here, never one found through RAY_ADDRESS
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False,
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    try:
        res = ray.cluster_resources()
        gpus = gpus_per_worker if gpus_per_worker is not None else \
            (1.0 if res.get("GPU", 0) >= workers and dtype != "int8" else 0.0)
        cpus = cpus_per_worker or max(1.0, float(int(res.get("CPU", 1) // workers)))
        for what, each, have in (("CPU", cpus, res.get("CPU", 0)),
                                 ("GPU", gpus, res.get("GPU", 0))):
            if each * workers > have:
                raise ConfigError(f"{workers} workers of {each:g} {what} each need "
                                  f"{each * workers:g} {what}s; the Ray cluster has {have:g}")
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=retries,
                           max_task_retries=retries)(predictor or TaggedPredictor)
        kwargs = dict(tags=[str(t) for t in tags], template=screen.template,
                      task=screen.task, tag=screen.tag, layer=screen.layer, pool=screen.pool,
                      model=model, dtype=dtype, batch_size=screen.batch_size,
                      max_length=screen.max_length, skip_invalid=screen.skip_invalid,
                      device="cuda" if gpus else "cpu", keep_errors=True)
        actors = [actor.remote(**kwargs) for _ in range(workers)]
        log(f"Ray: {workers} worker(s), {cpus:g} CPU and {gpus:g} GPU each")
        job = _get(ray, actors[0].job.remote(identity, chunk_rows))
        from ray.util import ActorPool

        pool = ActorPool(actors)

        def compute(chunks: Iterator[tuple[int, Table]]
                    ) -> Iterator[tuple[int, Rows, list[str]]]:
            inflight = 0
            for index, table in chunks:
                if inflight >= 2 * workers:  # two chunks queued per worker, no more
                    yield _get(ray, None, pool)
                    inflight -= 1
                pool.submit(lambda a, v: a.chunk.remote(*v), (index, table))
                inflight += 1
            while pool.has_next():
                yield _get(ray, None, pool)

        n = run_chunks(input, output, fmt, job, chunk_rows, compute, World(), progress,
                       on_skipped, log)
        peaks = [_get(ray, a.peak_rss_gb.remote()) for a in actors]
        log("peak RSS of the Ray workers: " + ", ".join(f"{g:.2f}" for g in peaks) + " GB")
    finally:
        if started:
            ray.shutdown()
    assert n is not None
    return n


def _get(ray, ref, pool=None):
    """A result from Ray (``ref``, or the next one of ``pool``), with a tagllm error raised
    in an actor re-raised as itself (its message names the file and row)."""
    try:
        return pool.get_next_unordered() if pool is not None else ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, TagllmError):
            raise cause from None
        raise

