"""Work computed ahead: `map` in worker threads, in order, that tells its caller when the next result is late."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import NamedTuple

WAITING = object()  # `prefetched`: the next result is not ready yet
_END = object()


class _Failed(NamedTuple):
    error: BaseException


def prefetched(function, items: Iterable, *, depth: int, workers: int = 1, patience: float = 0.0) -> Iterator:
    """`map(function, items)` computed ahead in `workers` threads, at most `depth` in flight, in order.

    A feeder thread reads `items`, so a source that blocks (a camera) never blocks the caller
    while results are ready. When the next result has not come within `patience` seconds, the
    generator yields `WAITING` once before it waits on, so the caller can use the time.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed(pool: ThreadPoolExecutor) -> None:
        try:
            for item in items:
                if not put(pool.submit(function, item)):
                    return
        except BaseException as error:  # the caller raises it, after the results before it
            put(_Failed(error))
        put(_END)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agestimate-prepare") as pool:
        feeder = threading.Thread(target=feed, args=(pool,), name="agestimate-feed", daemon=True)
        feeder.start()
        try:
            while True:
                deadline = time.monotonic() + patience
                try:
                    entry = ready.get(timeout=patience) if patience > 0 else ready.get_nowait()
                except queue.Empty:
                    yield WAITING
                    entry, deadline = ready.get(), None
                if entry is _END:
                    return
                if isinstance(entry, _Failed):
                    raise entry.error
                if deadline is not None and not futures_wait([entry], timeout=max(0.0, deadline - time.monotonic())).done:
                    yield WAITING
                yield entry.result()
        finally:
            stop.set()  # a feeder blocked on a full queue returns; one blocked reading `items` is a daemon
            while True:  # cancel what was submitted but is not needed any more
                try:
                    entry = ready.get_nowait()
                except queue.Empty:
                    break
                if isinstance(entry, Future):
                    entry.cancel()
