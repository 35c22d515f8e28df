"""Synchronized batch normalization on K local processes: what a training step costs.

A benchmark, not a test. Run it under MPI or torch.distributed (gloo), K processes::

    mpiexec -n 4 python -m mpi4py benchmarks/distributed.py mpi
    torchrun --nproc-per-node 4 --master-addr 127.0.0.1 --master-port 29500 benchmarks/distributed.py torch

(``make bench-distributed`` runs both with K = 4.) Every process holds a quarter of
one batch. Each repetition, measured interleaved in the one run:

- ``sync``: a synchronized training forward + backward on every process (its slice),
  timed from a barrier to the last process's finish (the step's time is the
  slowest worker's);
- ``local``: the same step, unsynchronized, on every process's slice (what the
  exchange adds is sync - local);
- ``whole``: one plain layer on the whole batch, in process 0 alone, while the
  others wait;
- ``allreduce``: the transport alone, two all-reduces of a step's buffer size
  (what ``sync - local`` should be, if bnlit adds nothing of its own).

Ratios are taken within each repetition; the report gives min / median / max
over the repetitions, the bytes each call all-reduces (counted by wrapping the
communicator) and the bytes of the batch. On this 2-core machine 4 processes
share 2 cores, so ``sync`` is not expected to beat ``whole``: the point is the
cost of the exchange against the compute.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

SHAPE = (128, 32, 28, 28)  # N, C, H, W: 3.2 M values, 12.8 MB in float32
REPEATS = 15


class Counting:
    """A communicator that counts the bytes and calls it all-reduces."""

    def __init__(self, comm: Any) -> None:
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.calls = 0
        self.bytes = 0

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.bytes += buffer.nbytes
        return self.comm.allreduce_sum(buffer)


def main(backend: str) -> None:
    from bnlit import BatchNormalization
    from bnlit.distributed import as_communicator

    if backend == "mpi":
        from mpi4py import MPI

        raw = as_communicator(MPI.COMM_WORLD)
        barrier = MPI.COMM_WORLD.Barrier
    else:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        raw = as_communicator(dist.group.WORLD)
        barrier = dist.barrier
    comm = Counting(raw)
    rank, k = comm.rank, comm.size
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, SHAPE).astype(np.float32)
    dout = rng.normal(size=SHAPE).astype(np.float32)
    rows = np.array_split(np.arange(SHAPE[0]), k)[rank]
    x_mine, dout_mine = x[rows], dout[rows]
    c = SHAPE[1]
    sync = BatchNormalization(np.ones(c), np.zeros(c), comm=comm)
    local = BatchNormalization(np.ones(c), np.zeros(c))
    whole = BatchNormalization(np.ones(c), np.zeros(c))
    probe = np.zeros(k * (2 * c + 3))

    def timed(step: Any, everyone: bool) -> float:
        """Seconds from a common start to the last process's end (the slowest worker)."""
        barrier()
        start = time.perf_counter()
        if everyone or rank == 0:
            step()
        end = np.array([time.perf_counter() - start])
        if backend == "mpi":
            from mpi4py import MPI

            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, end, op=MPI.MAX)
        else:
            import torch
            import torch.distributed as dist

            t = torch.from_numpy(end)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(end[0])

    steps = {
        "sync": (lambda: (sync.forward(x_mine), sync.backward(dout_mine)), True),
        "local": (lambda: (local.forward(x_mine), local.backward(dout_mine)), True),
        "whole": (lambda: (whole.forward(x), whole.backward(dout)), False),
        # the transport alone: two all-reduces of a step's buffers (latency, not bnlit)
        "allreduce": (lambda: (raw.allreduce_sum(probe), raw.allreduce_sum(probe)), True),
    }
    for name, (step, everyone) in steps.items():  # warm up (compilation, first touches)
        timed(step, everyone)
    comm.calls = comm.bytes = 0
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(REPEATS):
        order = list(steps)[rep % len(steps):] + list(steps)[: rep % len(steps)]  # rotated, so none always runs first
        for name in order:
            times[name].append(timed(*steps[name]))
    if rank != 0:
        return

    def spread(values: list[float]) -> dict[str, float]:
        return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}

    t = {name: np.array(v) for name, v in times.items()}
    report = {
        "backend": backend,
        "processes": k,
        "shape": list(SHAPE),
        "dtype": "float32",
        "engine": sync.engine,
        "threads per process": os.environ.get("BNLIT_NUM_THREADS", "default"),
        "repeats": REPEATS,
        "seconds": {name: spread(list(v)) for name, v in t.items()},
        "sync / whole": spread(list(t["sync"] / t["whole"])),
        "sync / local": spread(list(t["sync"] / t["local"])),
        "(sync - local) / allreduce": spread(list((t["sync"] - t["local"]) / t["allreduce"])),
        "allreduce calls per step": comm.calls / REPEATS,
        "bytes all-reduced per step": comm.bytes / REPEATS,
        "bytes of the batch (x)": int(x.nbytes),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mpi")
