"""Gathering concurrent requests into one forward pass.

Requests become jobs (one row per choice) in a bounded queue. One asyncio task takes the first waiting job, then
keeps taking jobs for a short gather window (while fewer rows are waiting than the last batch answered plus those
that waited for it: the clients it answered are sending again; a lone client never waits) or until the batch holds
`max_batch` rows, and runs the batch on the model's single worker thread (`Engine.run`); while it runs, new jobs
wait, and the next batch starts with all of them. A full queue refuses a new job at once (`Overloaded`: the server
answers 503 with Retry-After); a job not answered within its timeout is dropped (`TimedOut`: 504; rows already
decoding are ended at the next step).
Streaming jobs receive their rows' text as the worker produces it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("meg")

IDLE_S = 1.0  # after this long without a batch, the next one does not wait for company


class Overloaded(Exception):
    """The queue is full."""


class TimedOut(Exception):
    """The request was not answered within its timeout."""


@dataclass(eq=False)
class Job:
    rows: list[Any]  # meg.serve.engine.Row
    future: asyncio.Future
    deadline: float  # loop time
    events: asyncio.Queue | None = None  # streaming: ("route", i, info), ("text", i, delta), ("done", results)
    cancelled: bool = False
    started: bool = False
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """See the module docstring. `engine` needs `run(rows, on_text, cancelled, on_route)`."""

    def __init__(self, engine: Any, max_batch: int = 32, gather_s: float = 0.005, max_queue: int = 256,
                 timeout_s: float = 120.0):
        self.engine, self.max_batch, self.gather_s = engine, max_batch, gather_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._waiting: collections.deque[Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "refused": 0, "dropped": 0,
                      "sizes": {}}

    # --- life cycle ---

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meg-model")
        self._task = asyncio.create_task(self._loop(), name="meg-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._waiting.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # --- requests ---

    def submit(self, rows: Sequence[Any], stream: bool = False, timeout_s: float | None = None) -> Job:
        """Queue a job, or raise Overloaded when `max_queue` jobs are already waiting."""
        if self._arrived is None:
            raise RuntimeError("the batcher is not started")
        if len(self._waiting) >= self.max_queue:
            self.stats["refused"] += 1
            raise Overloaded(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_queue})")
        loop = asyncio.get_running_loop()
        job = Job(list(rows), loop.create_future(), loop.time() + (timeout_s or self.timeout_s),
                  asyncio.Queue() if stream else None)
        job.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read: never "never retrieved"
        self._waiting.append(job)
        self._arrived.set()
        return job

    async def result(self, job: Job) -> list[Any]:
        """The job's (RowResult, info) per row; TimedOut after its deadline (the job is then dropped)."""
        remaining = job.deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(remaining, 0.0))
        except TimeoutError:
            self._drop(job)
            raise TimedOut(f"no answer within {self.timeout_s:g} s") from None

    async def events(self, job: Job) -> AsyncIterator[tuple]:
        """A streaming job's events, ending with ("done", results); TimedOut after its deadline."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = job.deadline - loop.time()
                try:
                    event = await asyncio.wait_for(job.events.get(), max(remaining, 0.0))
                except TimeoutError:
                    raise TimedOut(f"no answer within {self.timeout_s:g} s") from None
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "done":
                    return
        finally:
            if not job.future.done():
                self._drop(job)  # the client went away or timed out: free its rows

    def _drop(self, job: Job) -> None:
        job.cancelled = True
        self.stats["dropped"] += 1
        try:
            self._waiting.remove(job)
        except ValueError:
            pass  # already in a batch: its rows end at the next step

    # --- the gathering task ---

    async def _next(self, deadline: float | None) -> Job | None:
        """The next live job; wait until `deadline` (None: for ever) for one."""
        loop = asyncio.get_running_loop()
        while True:
            while self._waiting:
                job = self._waiting.popleft()
                if not job.cancelled:
                    return job
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        expected, ended = 1, 0.0  # rows the next batch may expect, and when the last one ended
        while True:
            first = await self._next(None)
            batch, size = [first], len(first.rows)
            # Under load, the clients the last batch answered send again while this one gathers: wait up to the
            # gather window for them too (after an idle second, for nobody; a lone client never waits).
            expected = min(self.max_batch, expected if loop.time() - ended < IDLE_S else 1)
            deadline = loop.time() + self.gather_s
            while size < self.max_batch:
                if size >= expected and not self._waiting:
                    break
                job = await self._next(deadline)
                if job is None:
                    break
                if size + len(job.rows) > self.max_batch:
                    self._waiting.appendleft(job)  # first in the next batch
                    break
                batch.append(job)
                size += len(job.rows)
            await self._run(batch)
            backlog = sum(len(job.rows) for job in self._waiting if not job.cancelled)
            expected, ended = size + backlog, loop.time()  # those answered come back; those waiting are there

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        rows, owner = [], []
        for job in batch:
            job.started = True
            for k, row in enumerate(job.rows):
                rows.append(row)
                owner.append((job, k))

        def send(i: int, event: tuple) -> None:  # from the worker thread
            job, k = owner[i]
            if job.events is not None and not job.cancelled:
                loop.call_soon_threadsafe(job.events.put_nowait, (event[0], k, event[1]))

        streamed = {i for i, (job, _) in enumerate(owner) if job.events is not None}

        def run() -> list[Any]:
            return self.engine.run(rows, on_text=(lambda i, delta: send(i, ("text", delta))) if streamed else None,
                                   cancelled=lambda i: owner[i][0].cancelled,
                                   on_route=(lambda i, info: send(i, ("route", info))) if streamed else None,
                                   stream_rows=streamed)

        try:
            results = await loop.run_in_executor(self._executor, run)
        except Exception as err:  # noqa: BLE001 (every job of the batch is answered with the error)
            log.error("batch of %d rows failed: %s: %s", len(rows), type(err).__name__, err)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
                if job.events is not None:
                    job.events.put_nowait(("error", err))
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        sizes = self.stats["sizes"]
        sizes[str(len(rows))] = sizes.get(str(len(rows)), 0) + 1
        start = 0
        for job in batch:
            mine = results[start:start + len(job.rows)]
            start += len(job.rows)
            if not job.future.done():
                job.future.set_result(mine)
            if job.events is not None:
                job.events.put_nowait(("done", mine))
