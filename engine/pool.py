"""CPU work beside the network: a small pool of worker processes that runs each image's
writer (the dense CRF, encoding, the file writes) while the main process feeds the network.

``WorkPool(n)`` with n > 0 forks n processes at once (before the network's threads exist,
when made early) and keeps at most ``backlog`` images queued, so memory stays bounded: when
the queue is full the main process waits (the time is counted in ``blocked_s``). Results
come back in submission order, and an exception a worker raises (a ``UserError`` included)
is raised again in the main process at the next submit or at ``close``. n = 0 runs every job
inline. Each writer writes its files atomically, so a killed run leaves only complete
outputs; under torchrun every process has its own pool.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Deque, Optional

from utils.args import available_cores


def default_workers(loader_workers: int, processes_per_node: Optional[int] = None) -> int:
    """The ``--crf_workers`` default: this process's share of the cores (torchrun's
    ``LOCAL_WORLD_SIZE`` processes share them) less one for the process itself (the network)
    and one per data-loader worker; at least 1."""
    if processes_per_node is None:
        processes_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = available_cores() // max(1, processes_per_node)
    return max(1, share - 1 - max(0, loader_workers))


def _worker_start() -> None:
    # Ctrl-C reaches the whole process group: the main process shuts the pool down
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ready() -> int:
    return os.getpid()


class WorkPool:
    """Run ``job(*args)`` in ``workers`` processes (0: inline), ``backlog`` jobs at most in
    flight (default 2 per worker)."""

    def __init__(self, workers: int, backlog: Optional[int] = None):
        self.workers = max(0, int(workers))
        self.backlog = backlog or 2 * self.workers
        self.blocked_s = 0.0
        self._pending: Deque[Future] = collections.deque()
        self._pool = None
        if self.workers:
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("fork"),
                                             initializer=_worker_start)
            for f in [self._pool.submit(_ready) for _ in range(self.workers)]:
                f.result()      # all processes exist now

    def submit(self, job: Callable, *args) -> None:
        if self._pool is None:
            job(*args)
            return
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        if len(self._pending) >= self.backlog:
            start = time.perf_counter()
            self._pending.popleft().result()
            self.blocked_s += time.perf_counter() - start
        self._pending.append(self._pool.submit(job, *args))

    def submit_to(self, job: Callable) -> Callable:
        """``job`` as a function that queues its calls in this pool."""
        return lambda *args: self.submit(job, *args)

    def close(self) -> None:
        """Wait for every job (raising the first error), then stop the processes."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "WorkPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._shutdown()


def limit_torch_threads(workers: int, device_type: str) -> None:
    """With ``workers`` CRF processes beside a network on the CPU, leave them their cores:
    torch's intra-op threads = the remaining cores (at least 1)."""
    if workers and device_type == "cpu":
        import torch
        torch.set_num_threads(max(1, available_cores() - workers))
