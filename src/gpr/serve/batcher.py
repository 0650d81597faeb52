"""Micro-batching: concurrent requests are queued and handed to the engine as one list.

One worker task takes the first waiting request, then gathers more until `max_batch` are in hand
or `max_wait_ms` have passed, and runs `fn(batch)` in one worker thread, so the event loop never
blocks on the model; requests that arrive meanwhile form the next batch. When a batch fails, its
requests are retried one by one, so one bad request cannot fail the others. `close()` stops
taking new requests and finishes every queued and running one (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("gpr.serve.batcher")


class Overloaded(Exception):
    """The queue is full: the caller should retry later."""


class Closed(Exception):
    """The batcher is shutting down (or not started) and takes no new requests."""


@dataclass
class Served(Generic[R]):
    """One request's result: what `fn` returned for it, the size of the batch that served it,
    and the seconds it waited in the queue and spent in `fn`."""

    result: R
    batch_size: int
    queue_s: float
    run_s: float


@dataclass
class _Item(Generic[T, R]):
    request: T
    future: asyncio.Future[Served[R]]
    queued_at: float


class MicroBatcher(Generic[T, R]):
    """Batches calls of `fn(list[T]) -> list[R]` (one result per request, in order)."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # called with (batch size, seconds in fn) after each batch
        self._queue: deque[_Item[T, R]] = deque()
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._accepting = False
        self.pending = 0  # queued or running requests

    @property
    def running(self) -> bool:
        return self._accepting and self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker (inside the event loop that will submit); again after `close`."""
        if self.running:
            return
        self._closing = False
        self._queue.clear()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gpr-engine")
        self._task = asyncio.create_task(self._work(), name="gpr-batcher")
        self._accepting = True

    async def submit(self, request: T) -> Served[R]:
        """Queue one request and wait for its result; raises what `fn` raised for it alone."""
        if not self._accepting or self._wake is None:
            raise Closed("the service is shutting down")
        if self.pending >= self.max_queue:
            raise Overloaded(f"{self.pending} requests are already waiting (max {self.max_queue})")
        fut: asyncio.Future[Served[R]] = asyncio.get_running_loop().create_future()
        self.pending += 1
        self._queue.append(_Item(request, fut, time.perf_counter()))
        self._wake.set()
        try:
            return await fut
        finally:
            self.pending -= 1

    async def close(self, timeout: float | None = None) -> None:
        """Take no new requests; finish the queued and running ones, then stop the worker."""
        self._accepting = False
        self._closing = True
        if self._task is None or self._wake is None:
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("batcher: %d requests unfinished at shutdown", self.pending)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._task = self._pool = self._wake = None

    # --- the worker -------------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._wake is not None
        q, wake = self._queue, self._wake
        while True:
            if not q:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            # up to max_batch, waiting at most max_wait from the first one's arrival (a wait that
            # has already passed while the previous batch ran is not waited again)
            deadline = q[0].queued_at + self.max_wait
            while len(q) < self.max_batch and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                wake.clear()
                try:  # losing a wake-up here is harmless: the queue is the state
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    break
            n = min(len(q), self.max_batch)
            batch = [q.popleft() for _ in range(n)]
            live = [b for b in batch if not b.future.done()]  # a client may have gone
            if live:
                await self._run(live)

    async def _run(self, batch: list[_Item[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._pool, self._call, [b.request for b in batch])
        except Exception as e:
            if len(batch) == 1:
                self._done(batch[0], e)
                return
            for b in batch:  # isolate the request that failed
                await self._run([b])
            return
        run_s = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(batch), run_s)
        for b, r in zip(batch, results, strict=True):
            self._done(b, Served(r, len(batch), start - b.queued_at, run_s))

    def _call(self, requests: list[T]) -> list[R]:
        out = list(self.fn(requests))
        if len(out) != len(requests):
            raise RuntimeError(f"the engine returned {len(out)} results for {len(requests)}")
        return out

    @staticmethod
    def _done(item: _Item[T, R], res: Served[R] | Exception) -> None:
        if item.future.done():
            return
        if isinstance(res, Exception):
            item.future.set_exception(res)
        else:
            item.future.set_result(res)
