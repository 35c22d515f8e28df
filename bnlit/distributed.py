"""Synchronized batch normalization: what crosses the network between workers, and how.

When a batch is split across ``K`` processes, a layer given ``comm=`` normalises
every slice with the statistics of the *whole* batch, and its backward gives every
worker the gradient of the whole batch's loss. What the workers exchange is small
and does not depend on the batch size:

* forward: each worker's per-channel :class:`~bnlit.stats.Moments` of its slice
  (count, mean, variance: ``2 C + 1`` numbers), merged by Chan's update
  (:func:`bnlit.stats.merge_moments`), never by ``sum(x**2) - n * mean**2``;
* backward: each worker's two per-channel sums ``sum(dout)`` and
  ``sum(dout * (x - mean))`` (``2 C`` numbers); each worker then computes its own
  slice of ``dx`` locally.

One all-reduce per call carries them. Each worker writes its numbers into its own
row of a ``(K, 2 C + 3)`` float64 buffer of zeros (the other rows stay zero), so
the all-reduce's sum delivers every worker's numbers exactly (adding zeros is
exact), and every worker merges them in rank order: the results are bitwise the
same on every worker whatever order the transport adds in, so replicas never
drift apart. A training step (forward and backward) thus all-reduces
``2 K (2 C + 3)`` float64 numbers, ``16 K (2 C + 3)`` bytes (:func:`buffer_bytes`).

Transports are existing libraries, wrapped in a few lines each:
:class:`MPICommunicator` (mpi4py, ``pip install "bnlit[mpi]"``),
:class:`TorchCommunicator` (``torch.distributed``, e.g. the gloo backend on CPU),
and :class:`ThreadGroup`, workers simulated by threads in one process (for
teaching and tests; not a transport between machines). Anything with ``rank``,
``size`` and ``allreduce_sum`` works too (:class:`Communicator`).

Faults: every check of a call happens before its one collective, and a worker
whose call is refused still joins that collective, flagged as refusing; then
every worker raises together (the refusing one its own error, the others
:class:`PeerError`) and no worker's state changes. No worker waits on another
that has given up. Every worker must make the same training calls in the same
order; prediction (``train_flg=False``) is local and exchanges nothing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from .stats import GradSums, Moments, Stats, is_centred, merge_moments, stats_from

__all__ = [
    "Communicator",
    "MPICommunicator",
    "TorchCommunicator",
    "ThreadGroup",
    "PeerError",
    "as_communicator",
    "buffer_bytes",
]

F64 = NDArray[np.float64]
T = TypeVar("T")

#: Call tags, so that workers making different calls are told so instead of mixing numbers.
FORWARD, BACKWARD = 1.0, 2.0
_CALLS = {FORWARD: "training forward", BACKWARD: "backward"}
#: A row of the exchange: call tag, refused flag, count, then two per-channel vectors.
_HEAD = 3


class PeerError(RuntimeError):
    """Another worker refused its part of a synchronized call (or made another call), so
    this worker refuses too; its layer is unchanged. The other worker's own exception
    says why."""


@runtime_checkable
class Communicator(Protocol):
    """What a synchronized layer needs from a transport: its place in the group and a sum.

    ``allreduce_sum(buffer)`` returns, on every worker, the elementwise sum of the
    float64 ``buffer`` over all ``size`` workers (a new array, or ``buffer`` filled in).
    """

    rank: int
    size: int

    def allreduce_sum(self, buffer: F64) -> F64: ...


class MPICommunicator:
    """An mpi4py communicator (``MPI.COMM_WORLD`` or a split of it) as a :class:`Communicator`."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI  # noqa: F401  (bnlit[mpi]; imported only when used)

        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())

    def allreduce_sum(self, buffer: F64) -> F64:
        from mpi4py import MPI

        total = np.empty_like(buffer)
        self.comm.Allreduce(buffer, total, op=MPI.SUM)
        return total


class TorchCommunicator:
    """A ``torch.distributed`` process group (``None``: the default one) as a :class:`Communicator`.

    The backend must reduce float64 CPU tensors (gloo does).
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first")
        self.group = group
        self.rank = int(dist.get_rank(group))
        self.size = int(dist.get_world_size(group))

    def allreduce_sum(self, buffer: F64) -> F64:
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(buffer.copy())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor.numpy()


class ThreadGroup:
    """``size`` workers simulated by threads of one process, for teaching and testing.

    Each worker gets ``group.communicators[rank]``; :meth:`run` starts one thread
    per worker. A worker that waits longer than ``timeout`` seconds for the others
    raises :class:`PeerError` (so a mistake cannot hang the process).

    Examples
    --------
    >>> import numpy as np
    >>> from bnlit import BatchNormalization
    >>> from bnlit.distributed import ThreadGroup
    >>> x = np.arange(12.0).reshape(6, 2) ** 2
    >>> def worker(comm):
    ...     bn = BatchNormalization(np.ones(2), np.zeros(2), comm=comm)
    ...     part = np.array_split(x, comm.size)[comm.rank]
    ...     return bn.forward(part)
    >>> parts = ThreadGroup(3, timeout=5).run(worker)
    >>> whole = BatchNormalization(np.ones(2), np.zeros(2)).forward(x)
    >>> bool(np.allclose(np.concatenate(parts), whole, rtol=1e-12, atol=0))
    True
    """

    def __init__(self, size: int, timeout: float = 60.0) -> None:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int; got {size!r}")
        self.size = int(size)
        self.timeout = float(timeout)
        self._barrier = threading.Barrier(self.size, timeout=self.timeout)
        self._buffers: list[Optional[F64]] = [None] * self.size
        self.communicators = [_ThreadCommunicator(self, rank) for rank in range(self.size)]

    def _allreduce(self, rank: int, buffer: F64) -> F64:
        self._buffers[rank] = np.array(buffer, dtype=np.float64)
        try:
            self._barrier.wait()  # every buffer is in
            total = np.zeros_like(self._buffers[rank])
            for part in self._buffers:
                total += part  # in rank order, the same on every worker
            self._barrier.wait()  # every worker has read them
        except threading.BrokenBarrierError:
            raise PeerError(
                f"worker {rank} waited {self.timeout} s for the other workers' all-reduce; "
                f"they made no call (or gave up)"
            ) from None
        return total

    def run(self, work: Callable[[Communicator], T], *, return_exceptions: bool = False) -> list[Any]:
        """Run ``work(communicator)`` on every worker, each in a thread; the results in rank order.

        An exception raised by a worker is re-raised here (the lowest rank's), or,
        with ``return_exceptions=True``, returned in that worker's place.
        """
        results: list[Any] = [None] * self.size
        failed = [False] * self.size

        def target(rank: int) -> None:
            try:
                results[rank] = work(self.communicators[rank])
            except BaseException as err:  # noqa: B036 (handed to the caller)
                results[rank], failed[rank] = err, True

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._barrier.reset()
        if not return_exceptions:
            for rank in range(self.size):
                if failed[rank]:
                    raise results[rank]
        return results


class _ThreadCommunicator:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size

    def allreduce_sum(self, buffer: F64) -> F64:
        return self.group._allreduce(self.rank, buffer)


def as_communicator(comm: object) -> Communicator:
    """The :class:`Communicator` for ``comm``: an mpi4py communicator, a ``torch.distributed``
    process group, or an object that already has ``rank``, ``size`` and ``allreduce_sum``."""
    module = type(comm).__module__ or ""
    if isinstance(comm, Communicator):
        wrapped: Communicator = comm
    elif module.startswith("mpi4py"):
        wrapped = MPICommunicator(comm)
    elif module.startswith("torch"):
        wrapped = TorchCommunicator(comm)
    else:
        raise TypeError(
            "comm must be an mpi4py communicator, a torch.distributed process group, or an object with "
            f"rank, size and allreduce_sum(buffer); got {type(comm).__name__}"
        )
    rank, size = wrapped.rank, wrapped.size
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (rank, size)) or not (
        0 <= rank < size
    ):
        raise ValueError(f"a communicator needs integers 0 <= rank < size; got rank={rank!r}, size={size!r}")
    return wrapped


def buffer_bytes(channels: int, workers: int) -> int:
    """Bytes of float64 all-reduced by one synchronized call (forward or backward)."""
    return 8 * workers * (2 * channels + _HEAD)


# ----------------------------------------------------------------- the exchange
def _exchange(comm: Communicator, call: float, channels: int, row: Optional[tuple[float, F64, F64]]) -> F64:
    """All-reduce this worker's row (``None``: it refuses); every worker's rows, checked."""
    buffer = np.zeros((comm.size, _HEAD + 2 * channels))
    buffer[comm.rank, 0] = call
    if row is None:
        buffer[comm.rank, 1] = 1.0
    else:
        buffer[comm.rank, 2] = row[0]
        buffer[comm.rank, _HEAD : _HEAD + channels] = row[1]
        buffer[comm.rank, _HEAD + channels :] = row[2]
    rows = np.asarray(comm.allreduce_sum(buffer.reshape(-1)), dtype=np.float64).reshape(buffer.shape)
    if row is None:
        return rows  # this worker raises its own error
    others = [r for r in range(comm.size) if rows[r, 0] != call]
    if others:
        made = ", ".join(f"worker {r}: {_CALLS.get(rows[r, 0], 'another call')}" for r in others)
        raise PeerError(f"worker {comm.rank} made a {_CALLS[call]} call but {made}; every worker must make the same calls")
    refused = np.flatnonzero(rows[:, 1])
    if refused.size:
        which = ", ".join(str(r) for r in refused)
        raise PeerError(
            f"worker {which} refused its part of this {_CALLS[call]} call (see the error there), "
            f"so worker {comm.rank} refuses too; nothing changed"
        )
    return rows


@contextmanager
def refusing(comm: Optional[Communicator], call: float, channels: int) -> Iterator[None]:
    """Around a call's checks: if they raise, join the call's exchange as refusing, then re-raise."""
    try:
        yield
    except Exception:
        if comm is not None:
            _exchange(comm, call, channels, None)
        raise


def synchronized_moments(comm: Communicator, local: Moments) -> Moments:
    """The moments of the whole batch from every worker's ``local`` moments (one all-reduce)."""
    channels = local.mean.shape[0]
    rows = _exchange(comm, FORWARD, channels, (float(local.count), local.mean, local.var))
    merged = Moments(0, np.zeros(channels), np.zeros(channels))
    with np.errstate(all="ignore"):  # out-of-range statistics are refused by the layer's checks
        for r in range(comm.size):  # in rank order, so that every worker gets the same bits
            part = Moments(int(rows[r, 2]), rows[r, _HEAD : _HEAD + channels], rows[r, _HEAD + channels :])
            merged = merge_moments(merged, part)
    return merged


def synchronized_stats(m: Moments, epsilon: float) -> Stats:
    """Stats of merged moments, marked centred only when the mean lies within a few spreads
    of the data itself (not of ``sqrt(var + epsilon)``), as the gradient sums of a slice
    are then taken about the mean exactly."""
    with np.errstate(all="ignore"):
        stats = stats_from(m.mean, m.var, epsilon)
        return replace(stats, centred=stats.centred and is_centred(m.mean, np.sqrt(m.var)))


def synchronized_grad_sums(comm: Communicator, local: GradSums) -> tuple[GradSums, bool]:
    """The whole batch's gradient sums from every worker's (one all-reduce), and whether
    every worker's own sums were finite (then a non-finite total is an overflow)."""
    channels = local.sum_dout.shape[0]
    rows = _exchange(comm, BACKWARD, channels, (0.0, local.sum_dout, local.sum_dout_xmu))
    total = np.zeros((2, channels))
    with np.errstate(all="ignore"):  # an overflow is refused by the layer's check
        for r in range(comm.size):  # in rank order, so that every worker gets the same bits
            total[0] += rows[r, _HEAD : _HEAD + channels]
            total[1] += rows[r, _HEAD + channels :]
    return GradSums(total[0], total[1]), bool(np.isfinite(rows[:, _HEAD:]).all())


def split_rows(x: NDArray[Any], parts: int, sizes: Optional[Sequence[int]] = None) -> list[NDArray[Any]]:
    """``x`` split along axis 0 into ``parts`` slices (of the given ``sizes``, or as equal as can be)."""
    if sizes is None:
        return list(np.array_split(x, parts))
    if len(sizes) != parts or sum(sizes) != x.shape[0]:
        raise ValueError(f"sizes must be {parts} numbers summing to {x.shape[0]}; got {list(sizes)}")
    return list(np.split(x, np.cumsum(sizes)[:-1]))
