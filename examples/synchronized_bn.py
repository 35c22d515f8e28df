"""Synchronized batch normalization: 4 processes, each with a slice of one batch.

Run it with MPI (``pip install "bnlit[mpi]"`` brings mpi4py and MPICH; ``-m mpi4py``
makes an exception on one process abort them all instead of leaving the others waiting)::

    mpiexec -n 4 python -m mpi4py examples/synchronized_bn.py mpi

or with torch.distributed (gloo, on this machine's loopback)::

    torchrun --nproc-per-node 4 --master-addr 127.0.0.1 --master-port 29500 examples/synchronized_bn.py torch

Every process normalises its slice with the whole batch's statistics; the first
one prints how far the result is from one layer on the whole batch.
"""

import sys

import numpy as np

from bnlit import BatchNormalization


def communicator(backend: str) -> object:
    if backend == "mpi":
        from mpi4py import MPI

        return MPI.COMM_WORLD
    import torch.distributed as dist

    dist.init_process_group("gloo")  # rank, size and address from torchrun's environment
    return dist.group.WORLD


def main(backend: str) -> None:
    comm = communicator(backend)
    bn_sync = BatchNormalization(np.ones(3), np.zeros(3), comm=comm)
    rank, size = bn_sync.comm.rank, bn_sync.comm.size

    rng = np.random.default_rng(0)  # the same batch on every process
    x = rng.normal(5.0, 2.0, size=(32, 3, 8, 8))
    dout = rng.normal(size=x.shape)
    mine = np.array_split(np.arange(len(x)), size)[rank]  # this process's rows

    out = bn_sync.forward(x[mine])
    dx = bn_sync.backward(dout[mine])

    if rank == 0:
        bn_whole = BatchNormalization(np.ones(3), np.zeros(3))
        out_whole = bn_whole.forward(x)
        dx_whole = bn_whole.backward(dout)
        print(f"{size} processes, {len(mine)} of {len(x)} rows here")
        print("largest difference from one layer on the whole batch:")
        print(f"  output {np.abs(out - out_whole[mine]).max():.1e}, dx {np.abs(dx - dx_whole[mine]).max():.1e}, "
              f"dgamma {np.abs(bn_sync.dgamma - bn_whole.dgamma).max():.1e}")

    if backend == "torch":
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mpi")
