"""How many threads bnlit's engines may use, and a pool to run work on them.

Engine-neutral: the NumPy engine splits its blocks between the pool's threads
(NumPy releases the GIL inside its loops); a compiled engine reads
:func:`get_num_threads` and sets its own threading layer from it. Off (one
thread) unless asked for.
"""

from __future__ import annotations

import numbers
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, TypeVar

import numpy as np

__all__ = ["set_num_threads", "get_num_threads", "run_split"]

T = TypeVar("T")
U = TypeVar("U")


def _threads_from_environment() -> int:
    text = os.environ.get("BNLIT_NUM_THREADS", "").strip() or "1"
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not re.fullmatch("[0-9]+", text) or int(text) < 1:
        raise ValueError(f"BNLIT_NUM_THREADS must be a whole number of at least 1; got {text!r}")
    return int(text)


_threads = _threads_from_environment()
_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in bnlit's engines (1, the default, uses none).

    The environment variable ``BNLIT_NUM_THREADS`` sets the starting value.
    Results can differ in the last bits between thread counts (the partial sums
    are added in another grouping), never between runs with the same count.
    Safe to call at any time, from any thread: calls already running finish
    on the threads they started with.

    Raises
    ------
    TypeError
        ``n`` is not a whole number (a float such as ``2.0`` or ``inf``, a bool, a string).
    ValueError
        ``n`` is less than 1.
    """
    global _threads, _pool
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"the number of threads must be a whole number (int); got {n!r} ({type(n).__name__})")
    if int(n) < 1:
        raise ValueError(f"the number of threads must be at least 1; got {n!r}")
    with _pool_lock:
        old = _pool if int(n) != _threads else None
        if old is not None:
            _pool = None  # the next call makes a pool of the new size
        _threads = int(n)
    if old is not None:
        # Work already handed to the old pool still runs; its threads then end.
        old.shutdown(wait=False)


def get_num_threads() -> int:
    """The number of threads bnlit's engines use."""
    return _threads


def run_split(work: Callable[[Sequence[T]], U], items: Sequence[T], threads: int) -> list[U]:
    """``work`` on ``items`` in one go, or split into ``threads`` contiguous groups
    run at once on the pool. Results come back in item order."""
    global _pool
    threads = min(threads, _threads, len(items))
    if threads <= 1:
        return [work(items)]
    size, extra = divmod(len(items), threads)
    bounds = [k * size + min(k, extra) for k in range(threads + 1)]
    groups = [items[bounds[k] : bounds[k + 1]] for k in range(threads)]
    # Hand the work over under the lock, so that set_num_threads cannot shut the
    # pool down between taking it and submitting to it.
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="bnlit")
        futures = [_pool.submit(work, group) for group in groups]
    return [future.result() for future in futures]
