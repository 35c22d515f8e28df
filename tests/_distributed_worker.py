"""One worker of the multi-process tests; tests/test_distributed.py starts K of them.

    mpiexec -n K python tests/_distributed_worker.py mpi OUT_DIR
    RANK=r WORLD_SIZE=K MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/_distributed_worker.py torch OUT_DIR

Every worker builds the same batches (same seeds), runs a synchronized layer on its
own slice and one plain bnlit layer on the whole batch, and writes
``OUT_DIR/rank<r>.json``: per case the largest relative difference of each result
from the whole-batch layer's, digests of what must be bitwise equal on every worker,
what each planted fault raised, and (torch) the comparison with PyTorch. The test
asserts on those files; this script only measures.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = {"2-D": (13, 3), "4-D": (6, 4, 3, 5)}
STEPS = 3


def slice_sizes(n: int, k: int, kind: str) -> list[int]:
    """Rows per worker: as equal as can be, unequal (growing with the rank), or one empty slice."""
    if kind == "equal":
        return [len(a) for a in np.array_split(np.arange(n), k)]
    if kind == "unequal":
        sizes = [max(1, n * (r + 1) // (k * (k + 1) // 2)) for r in range(k)]
        sizes[-1] += n - sum(sizes)
        return sizes
    return [0] + [len(a) for a in np.array_split(np.arange(n), k - 1)]  # "empty"


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-300)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_case(comm: Any, shape: tuple[int, ...], kind: str, dtype: type) -> dict[str, Any]:
    from bnlit import BatchNormalization

    rank, k = comm.rank, comm.size
    sizes = slice_sizes(shape[0], k, kind)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    rng = np.random.default_rng(7)
    c = shape[1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    kw = dict(moving_mean=rng.normal(size=c), moving_var=rng.uniform(0.5, 2, c), unbiased_moving_var=True)
    sync = BatchNormalization(gamma, beta, comm=comm, **kw)
    whole = BatchNormalization(gamma, beta, **kw)
    worst: dict[str, float] = {}

    def note(name: str, value: float) -> None:
        worst[name] = max(worst.get(name, 0.0), value)

    for _ in range(STEPS):
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3, c).reshape((1, c) + (1,) * (len(shape) - 2))
             + 10.0).astype(dtype)
        dout = rng.normal(size=shape).astype(dtype)
        out_whole, dx_whole = whole.forward(x), whole.backward(dout)
        out, dx = sync.forward(x[lo:hi]), sync.backward(dout[lo:hi])
        note("out", rel(out, out_whole[lo:hi]) if hi > lo else 0.0)
        note("dx", rel(dx, dx_whole[lo:hi]) if hi > lo else 0.0)
        for name in ("dgamma", "dbeta", "moving_mean", "moving_var"):
            note(name, rel(getattr(sync, name), getattr(whole, name)))
        note("batch_size", float(sync.batch_size != whole.batch_size))
    x = rng.normal(size=shape).astype(dtype)
    note("prediction", rel(sync.forward(x[lo:hi], train_flg=False), whole.forward(x, train_flg=False)[lo:hi])
         if hi > lo else 0.0)
    return {"shape": list(shape), "slices": kind, "sizes": sizes, "dtype": np.dtype(dtype).name, "worst": worst,
            "digest": digest(sync.dgamma, sync.dbeta, sync.moving_mean, sync.moving_var)}


def run_faults(comm: Any) -> list[dict[str, Any]]:
    """A bad call on one worker: who raised what, whether any layer changed, and whether
    the next good step still matches the whole-batch layer (nobody left behind)."""
    from bnlit import BatchNormalization

    rank, k = comm.rank, comm.size
    rng = np.random.default_rng(11)
    x, dout = rng.normal(size=(4 * k, 3)), rng.normal(size=(4 * k, 3))
    mine = slice(4 * rank, 4 * rank + 4)
    results = []
    for fault, bad_rank in (("forward: x with 2 channels", k - 1), ("backward: dout of another shape", 0),
                            ("forward: train_flg='yes'", k - 1)):
        sync = BatchNormalization(np.ones(3), np.zeros(3), comm=comm)
        whole = BatchNormalization(np.ones(3), np.zeros(3))
        sync.forward(x[mine])
        whole.forward(x)
        before = digest(sync.moving_mean, sync.moving_var, np.array([sync.steps]))
        error = None
        try:
            if fault.startswith("forward: x") and rank == bad_rank:
                sync.forward(x[mine, :2])
            elif fault.startswith("forward: t") and rank == bad_rank:
                sync.forward(x[mine], train_flg="yes")
            elif fault.startswith("forward"):
                sync.forward(x[mine])
            else:
                sync.backward(dout[mine][:3] if rank == bad_rank else dout[mine])
        except Exception as err:  # noqa: BLE001 (recorded for the test)
            error = f"{type(err).__name__}: {err}"
        unchanged = before == digest(sync.moving_mean, sync.moving_var, np.array([sync.steps])) and sync.dgamma is None
        sync.forward(x[mine]), whole.forward(x)
        recovered = max(rel(sync.backward(dout[mine]), whole.backward(dout)[mine]), rel(sync.dgamma, whole.dgamma))
        results.append({"fault": fault, "bad_rank": bad_rank, "error": error, "unchanged": unchanged,
                        "recovered": recovered})
    return results


def torch_comparison(comm: Any) -> dict[str, Any]:
    """The synchronized layer against PyTorch's BatchNorm on the gathered batch, and
    whether nn.SyncBatchNorm runs on CPU in this torch (its error if not)."""
    import torch
    import torch.distributed as dist

    from bnlit import BatchNormalization

    rank, k = comm.rank, comm.size
    rng = np.random.default_rng(100 + rank)  # each worker its own slice of different size
    n_mine = 2 + rank
    x_mine, dout_mine = rng.normal(3, 2, size=(n_mine, 4, 3, 3)), rng.normal(size=(n_mine, 4, 3, 3))
    parts: list[Any] = [None] * k
    dist.all_gather_object(parts, (x_mine, dout_mine))
    x = torch.tensor(np.concatenate([p[0] for p in parts]), requires_grad=True)
    dout = torch.tensor(np.concatenate([p[1] for p in parts]))
    lo = sum(len(p[0]) for p in parts[:rank])
    torch_bn = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    out_t = torch_bn(x)
    out_t.backward(dout)
    ours = BatchNormalization.like_pytorch(4, comm=comm)
    out, dx = ours.forward(x_mine), ours.backward(dout_mine)
    worst = {
        "out": rel(out, out_t.detach().numpy()[lo:lo + n_mine]),
        "dx": rel(dx, x.grad.numpy()[lo:lo + n_mine]),
        "dgamma": rel(ours.dgamma, torch_bn.weight.grad.numpy()),
        "dbeta": rel(ours.dbeta, torch_bn.bias.grad.numpy()),
        "moving_mean": rel(ours.moving_mean, torch_bn.running_mean.numpy()),
        "moving_var": rel(ours.moving_var, torch_bn.running_var.numpy()),
    }
    try:
        sync_bn = torch.nn.SyncBatchNorm(4, dtype=torch.float64)
        sync_bn(torch.tensor(x_mine))
        sync_error = None
    except Exception as err:  # noqa: BLE001 (recorded: does SyncBatchNorm run on CPU?)
        sync_error = f"{type(err).__name__}: {err}"
    return {"worst": worst, "rows": n_mine, "syncbatchnorm_error": sync_error, "torch": torch.__version__}


def fail_before_the_call(comm: Any, mode: str) -> None:
    """Worker 1 fails in its own code before the layer's call ("die": it exits; "stall":
    it is stuck for 12 s); the others call forward."""
    import time

    from bnlit import BatchNormalization

    bn = BatchNormalization(np.ones(3), np.zeros(3), comm=comm)
    if comm.rank == 1:
        if mode == "stall":
            time.sleep(12)
        raise RuntimeError("worker 1 failed before its call")
    bn.forward(np.ones((4, 3)))


def main(backend: str, out_dir: str, mode: str = "check") -> None:
    from bnlit.distributed import as_communicator

    if backend == "mpi":
        from mpi4py import MPI

        comm = as_communicator(MPI.COMM_WORLD)
    else:
        import datetime

        import torch.distributed as dist

        seconds = 5 if mode in ("die", "stall") else 60
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds))  # env:// from the test
        comm = as_communicator(dist.group.WORLD)
    if mode in ("die", "stall"):
        return fail_before_the_call(comm, mode)
    kinds = ["equal", "unequal"] + (["empty"] if comm.size > 1 else [])
    report: dict[str, Any] = {"rank": comm.rank, "size": comm.size, "backend": backend, "cases": []}
    for dims, shape in SHAPES.items():
        for kind in kinds:
            for dtype in (np.float64, np.float32):
                report["cases"].append(run_case(comm, shape, kind, dtype))
    report["faults"] = run_faults(comm) if comm.size > 1 else []
    if backend == "torch":
        report["torch"] = torch_comparison(comm)
    Path(out_dir, f"rank{comm.rank}.json").write_text(json.dumps(report, indent=1))
    if backend == "torch":
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
