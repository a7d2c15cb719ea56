"""Micro-batching: the images of concurrent requests go to the Rust core in one `predict` call.

A worker thread (``workers`` of them per served model) takes the first waiting request, then
keeps taking requests for at most ``max_wait_s`` (or until ``max_batch`` images), and scores them
all in one `cxrlake.predict` call (GIL released, decoding pipelined with inference inside the
core). While a batch is scored, the next requests queue up, so under load batches fill without
waiting; with two workers one batch decodes while the other runs the model.

Memory is bounded: at most ``max_queued_images`` images and ``max_queued_bytes`` bytes wait at
any time; `submit` raises `QueueFull` beyond that (the server answers 503), never blocks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypedDict

import pyarrow as pa

from cxrlake._api import ModelLike, predict
from cxrlake.columns import Row
from cxrlake.exceptions import CxrlakeError


class QueueFull(CxrlakeError, RuntimeError):
    """The batcher holds as many images or bytes as it may; retry later (HTTP 503)."""


class BatcherOptions(TypedDict, total=False):
    """The keyword arguments of `MicroBatcher` a server passes on (see its docstring)."""

    max_batch: int
    max_wait_s: float
    max_queued_images: int
    max_queued_bytes: int
    threads: int | None
    workers: int


@dataclass
class _Job:
    images: list[bytes]
    future: Future[ScoredRows] = field(default_factory=Future)

    @property
    def nbytes(self) -> int:
        return sum(len(image) for image in self.images)


@dataclass(frozen=True)
class ScoredRows:
    """What a job gets back: the predict batch's column names and one dict per image."""

    columns: list[str]
    rows: list[Row]


class MicroBatcher:
    """Scores lists of image bytes with ``model``, batching concurrent submissions.

    ``max_batch``: images per core call (a request larger than that is one call of its own);
    ``max_wait_s``: how long the first request of a batch waits for others (seconds);
    ``threads``: core threads (None: `cxrlake.predict`'s default); ``start=False`` queues
    without scoring until `start`; ``workers``: batches scored at once (2: one batch decodes
    while the other runs the model).
    """

    def __init__(
        self,
        model: ModelLike,
        max_batch: int = 16,
        max_wait_s: float = 0.004,
        max_queued_images: int = 256,
        max_queued_bytes: int = 256 * 1024 * 1024,
        threads: int | None = None,
        start: bool = True,
        workers: int = 1,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued_images = max_queued_images
        self.max_queued_bytes = max_queued_bytes
        self.threads = threads
        self._jobs: deque[_Job] = deque()
        self._queued_images = 0
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # core calls made (for tests and the benchmark)
        self.batched_images = 0
        self._columns: list[str] | None = None
        self._workers = [
            threading.Thread(target=self._run, name=f"cxrlake-batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        if start:
            self.start()

    def start(self) -> None:
        """Start scoring (for a batcher made with ``start=False``: requests queue until then)."""
        for worker in self._workers:
            worker.start()

    def submit(self, images: Sequence[bytes]) -> Future[ScoredRows]:
        """Queue ``images`` for scoring; the future resolves to `ScoredRows`.

        Raises `QueueFull` when accepting them would exceed the queue bounds, and
        RuntimeError after `close`.
        """
        job = _Job(list(images))
        if not job.images:
            job.future.set_result(ScoredRows(self.columns(), []))
            return job.future
        size = job.nbytes
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            # An empty queue always takes one request (else a single large request could never
            # be served); otherwise both bounds hold.
            if self._jobs and (
                self._queued_images + len(job.images) > self.max_queued_images
                or self._queued_bytes + size > self.max_queued_bytes
            ):
                raise QueueFull(
                    f"{self._queued_images} images ({self._queued_bytes} bytes) already waiting"
                )
            self._jobs.append(job)
            self._queued_images += len(job.images)
            self._queued_bytes += size
            self._cond.notify()
        return job.future

    def columns(self) -> list[str]:
        """The predict batch's column names (one empty core call, cached)."""
        if self._columns is None:
            self._columns = list(predict(pa.array([], pa.binary()), model=self.model).schema.names)
        return list(self._columns)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            jobs = [self._jobs.popleft()]
            count = len(jobs[0].images)
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_batch:
                if self._jobs:
                    if count + len(self._jobs[0].images) > self.max_batch:
                        break
                    job = self._jobs.popleft()
                    jobs.append(job)
                    count += len(job.images)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            for job in jobs:
                self._queued_images -= len(job.images)
                self._queued_bytes -= job.nbytes
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            images = [image for job in jobs for image in job.images]
            try:
                batch = predict(
                    pa.array(images, pa.binary()), model=self.model, threads=self.threads
                )
                rows = batch.to_pylist()
                columns = batch.schema.names
            except BaseException as error:  # a core failure fails these requests, not the server
                for job in jobs:
                    job.future.set_exception(error)
                continue
            with self._cond:
                self.batches += 1
                self.batched_images += len(images)
            start = 0
            for job in jobs:
                n = len(job.images)
                job.future.set_result(ScoredRows(columns, rows[start : start + n]))
                start += n

    def close(self) -> None:
        """Score what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
