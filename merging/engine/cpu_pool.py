"""Element-wise CPU writes as single-threaded chunks on a few persistent worker threads.

Why: torch runs each CPU kernel as one OpenMP fork-join over all intra-op threads with a static
split. A merge plan is hundreds of kernels (a 1.5 B decoder's attention: 196 tensors of 0.4–4.7 MB),
and on a CPU where the cores are shared — other processes, the web server, a test run — one
preempted OpenMP thread stalls every join for a scheduler slice (milliseconds). Measured at 1.8 B
on a loaded 2-core machine (load average 6–9): the attention-only apply took 0.54–1.6 s with 2
OpenMP threads and 0.15 s with 1 (6.2 GB/s, the copy bandwidth); the full apply 3.0 s vs 1.5 s.

Here each job (a restore copy, or a purely element-wise method such as `linear`) is cut into chunks
of `POOL_JOB_ELEMENTS`; `workers` threads, each with one intra-op thread, take chunks from one queue.
No barrier per kernel, dynamic balancing (a preempted worker delays only its own chunk), and all
cores in use when they are free. Element-wise results do not depend on where a tensor is cut
(torch.lerp, copy: checked bit for bit in tests/test_device_cache.py), so the weights are the same
as one whole-tensor call. `finish()` waits for every queued chunk and re-raises the first error.
"""

from __future__ import annotations

import queue
import os
import threading
import weakref
from typing import Callable

import torch

POOL_JOB_ELEMENTS = 1 << 21       # 4 MiB of bf16: a few hundred µs of work, cache-friendly
POOL_MIN_ELEMENTS = 0             # smaller element-wise writes go to the caller's group calls
#                                   (merging/engine/fused.py) instead: 0 = all on the pool, which
#                                   benchmarks/switch.py measured faster on a shared CPU


def default_workers() -> int:
    """One worker per intra-op thread torch would use, at most 8 (memory bandwidth saturates)."""
    return max(1, min(8, torch.get_num_threads()))


class _Shared:
    """What the workers see: the queue and the completion state (never the pool itself, so an
    unreferenced pool is collected and its finalizer stops the threads)."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        self.done = threading.Condition()
        self.error: BaseException | None = None


def _work(shared: _Shared, ready: threading.Barrier) -> None:
    torch.set_num_threads(1)
    ready.wait()
    while True:
        job = shared.queue.get()
        if job is None:  # the pool was collected
            return
        try:
            with torch.no_grad():
                job()
        except BaseException as exc:  # handed to the caller by finish()
            with shared.done:
                shared.error = shared.error or exc
        finally:
            job = None  # a finished job's tensors (views of parameters) must not outlive it
            with shared.done:
                shared.pending -= 1
                if shared.pending == 0:
                    shared.done.notify_all()


def _stop(shared: _Shared, workers: int) -> None:
    for _ in range(workers):
        shared.queue.put(None)


class CpuPool:
    """`submit(fn, out, *inputs)` runs `fn(out_chunk, *input_chunks)` over matching flat chunks.
    Its threads start on the first submit and end when the pool is garbage-collected."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()
        self._shared = _Shared()
        self._started = False
        self._pid = os.getpid()  # threads do not survive a fork: a forked process starts its own
        self._batch: list[Callable[[], None]] = []  # small calls, handed over together
        self._batch_elements = 0

    def _start(self) -> None:
        # torch.set_num_threads(1) in a worker sets that thread's OpenMP count, but also the default
        # new threads start with: put the caller's value back once every worker has set its own.
        previous = torch.get_num_threads()
        ready = threading.Barrier(self.workers + 1)
        for i in range(self.workers):
            threading.Thread(target=_work, args=(self._shared, ready), name=f"mergescope-write-{i}",
                             daemon=True).start()
        ready.wait()
        torch.set_num_threads(previous)
        weakref.finalize(self, _stop, self._shared, self.workers)
        self._started, self._pid = True, os.getpid()

    @staticmethod
    def fits(*tensors: torch.Tensor | None) -> bool:
        """Whether the tensors can be cut into matching flat chunks (CPU, contiguous, one numel)."""
        real = [t for t in tensors if t is not None]
        return all(t.device.type == "cpu" and t.is_contiguous() and t.numel() == real[0].numel() for t in real)

    @staticmethod
    def worth(*tensors: torch.Tensor) -> bool:
        """For CPU tensors (the caller knows): whether they can be cut into matching flat chunks
        (contiguous, one numel) and hold at least POOL_MIN_ELEMENTS elements."""
        n = tensors[0].numel()
        return n >= POOL_MIN_ELEMENTS and all(t.is_contiguous() and t.numel() == n for t in tensors)

    def submit(self, fn: Callable[..., None], out: torch.Tensor, *inputs: torch.Tensor | None) -> None:
        """Queue `fn(out_chunk, *input_chunks)` for every chunk (None inputs stay None). Tensors smaller
        than a chunk are gathered into one hand-over of about a chunk's worth of calls."""
        n = out.numel()
        if n < POOL_JOB_ELEMENTS:
            self._batch.append(lambda: fn(out, *inputs))
            self._batch_elements += n
            if self._batch_elements >= POOL_JOB_ELEMENTS:
                self._flush()
            return
        flats = [t.view(-1) if t is not None else None for t in (out, *inputs)]
        for start in range(0, n, POOL_JOB_ELEMENTS):
            parts = [f[start:start + POOL_JOB_ELEMENTS] if f is not None else None for f in flats]
            self._put(lambda parts=parts: fn(*parts))

    def _flush(self) -> None:
        if self._batch:
            calls, self._batch, self._batch_elements = self._batch, [], 0
            self._put(lambda: [call() for call in calls])

    def _put(self, job: Callable[[], object]) -> None:
        if self._started and self._pid != os.getpid():  # forked (a ZeroGPU worker): this process has no workers
            self._shared, self._started = _Shared(), False
        if not self._started:
            self._start()
        with self._shared.done:
            self._shared.pending += 1
        self._shared.queue.put(job)

    def finish(self, raise_error: bool = True) -> None:
        """Wait for every submitted chunk; raise the first error any of them raised (if `raise_error`)."""
        self._flush()
        shared = self._shared
        with shared.done:
            while shared.pending:
                shared.done.wait()
            error, shared.error = shared.error, None
        if error is not None and raise_error:
            raise error
