"""Dynamic batching with a bounded queue, inside the model (kserve's own batcher is a separate
v1 component that sits in front of a model).

Requests wait in an asyncio queue of at most `max_queue` requests. One worker takes the first
request, then keeps taking requests until the batch holds `max_batch` images or `max_delay`
has passed since the first, runs them as one `session.run` in a worker thread, and hands each
request its own rows. A request that finds the queue full is turned away at once
(`QueueFull`, HTTP 503 with Retry-After): the queue never grows without limit, and a request
that was accepted is always answered.

`max_batch=1` switches batching off (each request runs alone), for the benchmark's
comparison.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The batcher's queue is full: the server answers 503 with Retry-After."""

    def __init__(self, model: str, depth: int, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"model {model}: {depth} requests already wait; try again in {retry_after:g} s")


@dataclass
class _Item:
    feed: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Batches `run(feed) -> {output name: array}` calls of one model."""

    def __init__(self, name: str, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], max_batch: int = 8,
                 max_delay: float = 0.002, max_queue: int = 64, observe=None):
        self.name, self._run = name, run
        self.max_batch, self.max_delay, self.max_queue = max(1, int(max_batch)), float(max_delay), max(1, int(max_queue))
        self._observe = observe  # observe(batch_rows, queue_depth): the server's metrics
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the session runs in its own thread, one batch at a time: never in the event loop's
        #: shared executor, where threads waiting for a batch could take every worker
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        """Bind the queue and the worker to the running event loop (once)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use (or a new event loop): the queue and worker live on it
            self._loop = loop
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._worker = loop.create_task(self._work())

    async def submit(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This request's outputs; QueueFull at once when the queue is full."""
        self.start()
        rows = {len(v) for v in feed.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs with different batch sizes {sorted(rows)}")
        item = _Item(feed, rows.pop(), self._loop.create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(self.name, self._queue.qsize(), max(0.05, self.max_delay * 10)) from None
        return await item.future

    def submit_threadsafe(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`submit` from a worker thread (the busi endpoint's Predictor runs in threads)."""
        if self._loop is None:
            raise RuntimeError("the batcher has not started on the server's event loop")
        return asyncio.run_coroutine_threadsafe(self.submit(feed), self._loop).result()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items, rows = [first], first.rows
            deadline = loop.time() + self.max_delay
            while rows < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if rows + nxt.rows > self.max_batch:  # it starts the next batch
                    await self._run_batch(items)
                    items, rows = [nxt], nxt.rows
                    deadline = loop.time() + self.max_delay
                    continue
                items.append(nxt)
                rows += nxt.rows
            await self._run_batch(items)

    async def _run_batch(self, items: list[_Item]) -> None:
        live = [it for it in items if not it.future.done()]  # a client that went away is not run
        if not live:
            return
        if self._observe is not None:
            self._observe(sum(it.rows for it in live), self.depth)
        names = list(live[0].feed)
        try:
            if any(list(it.feed) != names for it in live):
                raise ValueError("requests with different inputs in one batch")
            feed = {n: np.concatenate([it.feed[n] for it in live]) if len(live) > 1 else live[0].feed[n] for n in names}
            outs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feed)
        except Exception as e:  # every request of the batch gets the error
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        start = 0
        for it in live:
            part = {k: v[start:start + it.rows] for k, v in outs.items()}
            start += it.rows
            if not it.future.done():
                it.future.set_result(part)
