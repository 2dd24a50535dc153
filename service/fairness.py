"""Sharing the worker threads fairly between clients, by what their requests cost.

Every blocking job (decode, embed, search, add) names its client and its cost, in work units
(about a megapixel of decoding each; see `service.engine` for how a request's cost is
estimated). Jobs wait in one queue per client. Each job is stamped, on a virtual clock that
advances with the work started, with where it starts (its client's previous job's end, or now if
that is past) and where it ends (start + cost); the waiting job that ends first goes first. Over
time every client gets an equal share of work units: a client sending costly uploads back to back
queues behind itself, and one sending an ordinary search is next as soon as a thread is free.

Expensive jobs cannot be interrupted (a 6000 x 6000 PNG costs 0.63 s of decoding here, a tile
search about 10 ms), so they may hold at most ``workers`` threads, and while any runs one more
thread takes cheap jobs only: a cheap job never waits for a large decode to finish. They run on
threads of lower scheduling priority (nice +10 on Linux), so that a cheap job running beside
them, and the event loop, get the cores first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.errors import ErrorCode, ServiceError

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    client: str
    start: float
    finish: float
    heavy: bool
    function: Callable[[], Any]
    done: asyncio.Future[Any]
    order: int = field(default=0)


class FairScheduler:
    """A bounded thread pool whose waiting jobs are started fairly between clients.

    Everything but the job bodies runs on the event loop thread, so the state needs no lock.
    """

    def __init__(
        self,
        *,
        workers: int,
        max_pending: int,
        max_in_flight_per_client: int,
        heavy_cost: float,
    ) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self.max_in_flight_per_client = max_in_flight_per_client
        self.heavy_cost = heavy_cost
        # The extra thread takes cheap jobs while expensive ones run.
        self._executor = ThreadPoolExecutor(
            max_workers=workers + 1, thread_name_prefix="histosearch"
        )
        self._heavy_executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="histosearch-heavy",
            initializer=_lower_thread_priority,
        )
        self._queues: dict[str, deque[_Job]] = {}
        self._last_finish: dict[str, float] = {}
        self._in_flight: Counter[str] = Counter()
        self._virtual_time = 0.0
        self._waiting = 0
        self._running = 0
        self._running_heavy = 0
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run(self, function: Callable[[], T], *, client: str, cost: float) -> T:
        """Run ``function`` on a worker when this client's turn comes; 429 when the client
        already has its most requests in flight, 503 when too many jobs wait altogether."""
        if self._in_flight[client] >= self.max_in_flight_per_client:
            raise ServiceError(
                429,
                ErrorCode.TOO_MANY_REQUESTS,
                f"this client already has {self._in_flight[client]} requests in flight, the "
                f"most one client may have; wait for an answer before sending more",
                headers={"Retry-After": "1"},
            )
        if self._waiting >= self.max_pending:
            raise ServiceError(
                503,
                ErrorCode.SERVER_BUSY,
                f"{self._waiting} requests are already waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        job = self._enqueue(function, client, cost)
        self._in_flight[client] += 1
        try:
            self._dispatch()
            result: T = await job.done
            return result
        except asyncio.CancelledError:
            self._withdraw(job)
            raise
        finally:
            self._in_flight[client] -= 1
            if not self._in_flight[client]:
                del self._in_flight[client]
                self._forget_if_idle(client)

    def _enqueue(self, function: Callable[[], Any], client: str, cost: float) -> _Job:
        start = max(self._virtual_time, self._last_finish.get(client, 0.0))
        finish = start + max(cost, 0.0)
        self._last_finish[client] = finish
        job = _Job(
            client=client,
            start=start,
            finish=finish,
            heavy=cost >= self.heavy_cost,
            function=function,
            done=asyncio.get_running_loop().create_future(),
            order=next(self._arrivals),
        )
        self._queues.setdefault(client, deque()).append(job)
        self._waiting += 1
        return job

    def _withdraw(self, job: _Job) -> None:
        """A request given up while waiting (its client left) is taken out of the queue."""
        queue = self._queues.get(job.client)
        if queue is not None and job in queue:
            queue.remove(job)
            self._waiting -= 1
            if not queue:
                del self._queues[job.client]

    def _forget_if_idle(self, client: str) -> None:
        # A client's past is kept only while it could still put it ahead of others.
        if client not in self._queues and self._last_finish.get(client, 0.0) <= self._virtual_time:
            self._last_finish.pop(client, None)

    def _may_start(self, job: _Job) -> bool:
        if job.heavy:
            return self._running < self.workers
        return self._running < self.workers + (self._running_heavy > 0)

    def _next_job(self) -> _Job | None:
        best: _Job | None = None
        for queue in self._queues.values():
            head = queue[0]
            if not self._may_start(head):
                continue
            if best is None or (head.finish, head.order) < (best.finish, best.order):
                best = head
        return best

    def _dispatch(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            queue = self._queues[job.client]
            queue.popleft()
            if not queue:
                del self._queues[job.client]
            self._waiting -= 1
            self._start(job)

    def _start(self, job: _Job) -> None:
        self._virtual_time = max(self._virtual_time, job.start)
        self._running += 1
        self._running_heavy += job.heavy
        loop = asyncio.get_running_loop()
        executor = self._heavy_executor if job.heavy else self._executor
        running = loop.run_in_executor(executor, job.function)

        def finished(outcome: asyncio.Future[Any]) -> None:
            self._running -= 1
            self._running_heavy -= job.heavy
            if not job.done.done():
                if outcome.cancelled():
                    job.done.cancel()
                elif (error := outcome.exception()) is not None:
                    job.done.set_exception(error)
                else:
                    job.done.set_result(outcome.result())
            self._dispatch()

        running.add_done_callback(finished)

    def close(self) -> None:
        """Finish the running jobs; jobs still waiting are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._heavy_executor.shutdown(wait=True, cancel_futures=True)


# How much nicer the threads that run expensive jobs are than the process: 10 steps give a thread
# about a tenth of the share of the others when both want the same core.
HEAVY_NICENESS_STEPS = 10
_MOST_NICE = 19


def _lower_thread_priority() -> None:
    """Lower this thread's own priority (Linux schedules threads by their own nice value); a
    no-op where the platform cannot."""
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + HEAVY_NICENESS_STEPS
        os.setpriority(os.PRIO_PROCESS, thread, min(niceness, _MOST_NICE))
