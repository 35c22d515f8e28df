"""Synchronized batch normalization (issue 13): K workers holding slices of a batch get
what one layer gets on the whole batch.

The contract, checked on every worker: the output slice, the dx slice, dgamma, dbeta
and the moving statistics agree with one plain bnlit layer on the whole batch to
1e-12 relative in float64 (float32: its own precision), for 2-D and 4-D input, equal,
unequal and empty slices, K = 1, 2, 4; what every worker shares is bitwise equal on
every worker; a call refused on one worker is refused on all, together, and changes
nothing. Checked three ways: workers simulated by threads (fast, always), real
processes over MPI (``mpiexec -n K``) and over torch.distributed (gloo on 127.0.0.1).
The reference, the single-process layer, is itself checked against SymPy, finite
differences and PyTorch by the other test modules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _optional import require
from bnlit import BatchNormalization, LayerStateError
from bnlit.distributed import (
    MPICommunicator,
    PeerError,
    ThreadGroup,
    TorchCommunicator,
    as_communicator,
    buffer_bytes,
    split_rows,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
TOL64, TOL32 = 1e-12, 2e-6
#: Seconds a simulated worker waits for the others (they take milliseconds); `make mutation`
#: shortens it, as a mutant that breaks the exchange makes workers wait it out.
WORKER_TIMEOUT = float(os.environ.get("BNLIT_TEST_WORKER_TIMEOUT", "20"))
TIMEOUT = 120  # seconds for a whole multi-process run; a hang fails, it does not block CI


# ------------------------------------------------------------ simulated workers
def run_workers(k: int, work: Callable[[Any], Any], timeout: float = WORKER_TIMEOUT, **kw: Any) -> list[Any]:
    return ThreadGroup(k, timeout=timeout).run(work, **kw)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-300)
    return float(np.abs(np.asarray(a, np.float64) - b).max(initial=0.0) / scale)


def by_hand(x: np.ndarray, dout: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple:
    """Batch normalization of the whole batch written out independently of bnlit
    (per channel over every axis but 1), for the synchronized layer's expected values."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    shape = [1] * x.ndim
    shape[1] = -1
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(shape)
    var = (xc**2).mean(axis=axes)
    x_hat = xc / np.sqrt(var + eps).reshape(shape)
    out = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    dx = (gamma / np.sqrt(var + eps) / n).reshape(shape) * (
        n * dout - dbeta.reshape(shape) - x_hat * dgamma.reshape(shape))
    return out, dx, dgamma, dbeta, mean, var


SIZES = {  # rows per worker, for a batch of 10 rows
    1: {"equal": [10]},
    2: {"equal": [5, 5], "unequal": [3, 7], "empty": [0, 10]},
    4: {"equal": [3, 3, 2, 2], "unequal": [1, 2, 3, 4], "empty": [4, 0, 6, 0]},
}
CASES = [(k, kind, sizes) for k, kinds in SIZES.items() for kind, sizes in kinds.items()]


@pytest.mark.parametrize("shape", [(10, 3), (10, 2, 3, 4)], ids=["2-D", "4-D"])
@pytest.mark.parametrize("k,kind,sizes", CASES, ids=[f"K={k}-{kind}" for k, kind, _ in CASES])
def test_simulated_workers_equal_the_whole_batch(shape: tuple, k: int, kind: str, sizes: list, rng) -> None:
    c = shape[1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    moving_mean, moving_var = rng.normal(size=c), rng.uniform(0.5, 2, c)
    rho, eps = 0.8, 1e-5
    xs = [rng.normal(size=shape) * 3 + 50 for _ in range(2)]
    douts = [rng.normal(size=shape) for _ in range(2)]

    def work(comm):
        bn = BatchNormalization(gamma, beta, rho, moving_mean, moving_var, epsilon=eps, comm=comm,
                                unbiased_moving_var=True)
        steps = []
        for x, dout in zip(xs, douts):
            out = bn.forward(split_rows(x, k, sizes)[comm.rank])
            dx = bn.backward(split_rows(dout, k, sizes)[comm.rank])
            steps.append((out, dx, bn.dgamma, bn.dbeta, bn.moving_mean, bn.moving_var, bn.batch_size))
        return steps

    results = run_workers(k, work)
    mm, mv = moving_mean, moving_var
    for step, (x, dout) in enumerate(zip(xs, douts)):
        out, dx, dgamma, dbeta, mean, var = by_hand(x, dout, gamma, beta, eps)
        n = x.size // c
        mm, mv = rho * mm + (1 - rho) * mean, rho * mv + (1 - rho) * var * n / (n - 1)
        outs = np.concatenate([r[step][0] for r in results])
        dxs = np.concatenate([r[step][1] for r in results])
        assert rel(outs, out) <= TOL64 and rel(dxs, dx) <= TOL64
        for r in results:
            got = r[step]
            assert rel(got[2], dgamma) <= TOL64 and rel(got[3], dbeta) <= TOL64
            assert rel(got[4], mm) <= TOL64 and rel(got[5], mv) <= TOL64
            assert got[6] == n
            # every worker holds the same bits (one merge, in rank order, on each)
            for mine, first in zip(got[2:6], results[0][step][2:6]):
                assert mine.tobytes() == first.tobytes()


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_each_engine_and_float32(engine: str, rng) -> None:
    if engine == "numba":
        require("numba", install='pip install "bnlit[fast]"')
    x = (rng.normal(size=(64, 3, 5, 5)) * 2 + 7).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    whole = BatchNormalization(np.ones(3), np.zeros(3), engine=engine)
    out, dx = whole.forward(x), whole.backward(dout)

    def work(comm):
        bn = BatchNormalization(np.ones(3), np.zeros(3), engine=engine, comm=comm)
        part = split_rows(x, 4, [10, 30, 4, 20])[comm.rank]
        return bn.forward(part), bn.backward(split_rows(dout, 4, [10, 30, 4, 20])[comm.rank]), bn.dgamma

    parts = run_workers(4, work)
    assert all(p[0].dtype == np.float32 and p[1].dtype == np.float32 for p in parts)
    assert rel(np.concatenate([p[0] for p in parts]), out) <= TOL32
    assert rel(np.concatenate([p[1] for p in parts]), dx) <= TOL32
    assert rel(parts[2][2], whole.dgamma) <= TOL32


@settings(max_examples=int(os.environ.get('BNLIT_SYNC_EXAMPLES', 40)), deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4).filter(lambda s: sum(s) >= 2),
    four_d=st.booleans(),
    offset=st.sampled_from([0.0, 1e3, -1e6]),
    spread=st.sampled_from([1e-3, 1.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_split_of_any_batch_gives_the_whole_batch(sizes, four_d, offset, spread, seed) -> None:
    """Any number of workers, any slice sizes (empty ones too), data near or far from zero:
    the synchronized layer agrees with one layer on the whole batch as the docstring says."""
    rng = np.random.default_rng(seed)
    shape = (sum(sizes), 2, 2, 3) if four_d else (sum(sizes), 3)
    x = rng.normal(size=shape) * spread + offset
    dout = rng.normal(size=shape)
    c = shape[1]
    whole = BatchNormalization(np.ones(c), np.zeros(c))
    out, dx = whole.forward(x), whole.backward(dout)

    def work(comm):
        bn = BatchNormalization(np.ones(c), np.zeros(c), comm=comm)
        return (bn.forward(split_rows(x, len(sizes), sizes)[comm.rank]),
                bn.backward(split_rows(dout, len(sizes), sizes)[comm.rank]), bn.dgamma, bn.dbeta)

    parts = run_workers(len(sizes), work)
    tol = 1e-12 + 1e-15 * abs(offset) / spread  # the docstring's bound
    # dx is a difference of terms of size gamma / std * dout, which may nearly cancel
    # (two rows give dx ~ 0): its rounding is relative to the terms, in either layer
    terms = float(np.abs(dout).max() / whole.std.min())  # gamma = 1
    assert rel(np.concatenate([p[0] for p in parts]), out) <= tol
    assert np.abs(np.concatenate([p[1] for p in parts]) - dx).max() <= tol * max(terms, np.abs(dx).max())
    # dgamma, dbeta: sums whose terms may cancel; their rounding is relative to the terms
    sum_terms = np.abs(dout).sum(axis=tuple(a for a in range(x.ndim) if a != 1)) * np.abs(whole.x_std).max()
    for p in parts:
        assert (np.abs(p[2] - whole.dgamma) <= tol * sum_terms).all()
        assert (np.abs(p[3] - whole.dbeta) <= tol * sum_terms).all()
    if offset == 0:  # and the whole-batch layer is itself right (by hand, independently)
        expected = by_hand(x, dout, np.ones(c), np.zeros(c), 1e-8)
        assert rel(out, expected[0]) <= 1e-12 and rel(whole.dgamma, expected[2]) <= 1e-12


def test_moments_merge_is_stable_far_from_zero(rng) -> None:
    """Data at 1e9 with spread 1: naive sum-of-squares merging loses every digit here
    (x**2 ~ 1e18, float64 keeps 16), Chan's merge of the slices' moments does not."""
    x = rng.normal(size=(40, 2)) + 1e9

    def work(comm):
        bn = BatchNormalization(np.ones(2), np.zeros(2), comm=comm)
        bn.forward(split_rows(x, 4, [1, 9, 20, 10])[comm.rank])
        return bn.moving_var / 0.1  # rho 0.9 from zeros: one tenth of the batch variance

    exact = np.var(x - 1e9, axis=0)  # subtracting 1e9 first is exact here
    for var in run_workers(4, work):
        assert rel(var, exact) <= 1e-7  # the data itself holds 1e9's rounding, ~1e-7 of 1


def test_prediction_exchanges_nothing_and_uses_the_shared_statistics(rng) -> None:
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(5, 3))
    calls = [0, 0]

    class Counting:
        def __init__(self, comm):
            self.comm, self.rank, self.size = comm, comm.rank, comm.size

        def allreduce_sum(self, buffer):
            calls[self.rank] += 1
            return self.comm.allreduce_sum(buffer)

    def work(comm):
        bn = BatchNormalization(np.ones(3), np.zeros(3), comm=Counting(comm))
        bn.forward(split_rows(x, 2)[comm.rank])
        return bn.forward(y if comm.rank == 0 else y[:1], train_flg=False)  # any batch, any size

    preds = run_workers(2, work)
    assert calls == [1, 1]
    whole = BatchNormalization(np.ones(3), np.zeros(3))
    whole.forward(x)
    assert rel(preds[0], whole.forward(y, train_flg=False)) <= TOL64


def test_buffer_size_is_what_crosses(rng) -> None:
    """The documented K * (2C + 3) float64 per call, whatever the batch size."""
    seen: list[int] = []

    class Sizes:
        def __init__(self, comm):
            self.comm, self.rank, self.size = comm, comm.rank, comm.size

        def allreduce_sum(self, buffer):
            seen.append(buffer.nbytes)
            return self.comm.allreduce_sum(buffer)

    for n in (8, 800):
        x = rng.normal(size=(n, 5, 2, 2))

        def work(comm):
            bn = BatchNormalization(np.ones(5), np.zeros(5), comm=Sizes(comm))
            bn.forward(split_rows(x, 4)[comm.rank])
            bn.backward(split_rows(x, 4)[comm.rank])

        run_workers(4, work)
    assert seen == [buffer_bytes(5, 4)] * 16 and buffer_bytes(5, 4) == 8 * 4 * (2 * 5 + 3)


# ----------------------------------------------------------------------- faults
def _state(bn: BatchNormalization) -> tuple:
    return (bn.moving_mean.tobytes(), bn.moving_var.tobytes(), bn.steps, bn.batch_size,
            None if bn.dgamma is None else bn.dgamma.tobytes())


FAULTS = {
    "x with another channel count": lambda bn, x, d: bn.forward(x[:, :2]),
    "x of strings": lambda bn, x, d: bn.forward(x.astype(str)),
    "train_flg not a bool": lambda bn, x, d: bn.forward(x, train_flg="False"),
    "gamma rebound to another length": lambda bn, x, d: (setattr(bn, "gamma", np.ones(4)), bn.forward(x)),
    "out of another dtype": lambda bn, x, d: bn.forward(x, out=np.empty(x.shape, np.float32)),
    "staged switched on": lambda bn, x, d: (setattr(bn, "staged", True), bn.forward(x)),
    "dout of another shape": lambda bn, x, d: (bn.forward(x), bn.backward(d[:-1])),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_refusal_on_one_worker_is_shared_and_changes_nothing(fault: str, rng) -> None:
    x, dout = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    bad = 1

    def work(comm):
        bn = BatchNormalization(np.ones(3), np.zeros(3), comm=comm)
        mine = split_rows(x, 3)[comm.rank], split_rows(dout, 3)[comm.rank]
        bn.forward(mine[0])
        bn.backward(mine[1])
        before = _state(bn)
        try:
            if comm.rank == bad:
                FAULTS[fault](bn, *mine)
            elif fault.startswith("dout"):
                bn.forward(mine[0])
                bn.backward(mine[1])
            else:
                bn.forward(mine[0])
        except Exception as err:
            error = err
        else:
            error = None
        bn.gamma, bn.staged = np.ones(3), False
        if not fault.startswith("dout"):
            assert _state(bn) == before, "a refused call changed the layer"
        # nobody was left behind: the next step is synchronized again
        out = bn.forward(mine[0])
        return error, out, bn.backward(mine[1]), bn.dgamma

    results = run_workers(3, work)
    errors = [r[0] for r in results]
    assert isinstance(errors[bad], (TypeError, ValueError)) and not isinstance(errors[bad], PeerError)
    for rank in (0, 2):
        assert isinstance(errors[rank], PeerError)
        call = "backward" if fault.startswith("dout") else "training forward"
        assert str(errors[rank]) == (
            f"worker {bad} refused its part of this {call} call (see the error there), "
            f"so worker {rank} refuses too; nothing changed")
    whole = BatchNormalization(np.ones(3), np.zeros(3))
    out, dx = whole.forward(x), whole.backward(dout)
    assert rel(np.concatenate([r[1] for r in results]), out) <= TOL64
    assert rel(np.concatenate([r[2] for r in results]), dx) <= TOL64


def test_backward_before_any_forward_is_refused_by_every_worker_itself() -> None:
    errors = run_workers(2, lambda comm: BatchNormalization(np.ones(2), np.zeros(2), comm=comm).backward(
        np.ones((2, 2))), return_exceptions=True)
    for e in errors:
        assert type(e) is LayerStateError and str(e) == (
            "backward needs a training forward first (forward(x, train_flg=True)); none has run")


def test_workers_making_different_calls_are_told(rng) -> None:
    x = rng.normal(size=(8, 3))

    def work(comm):
        bn = BatchNormalization(np.ones(3), np.zeros(3), comm=comm)
        bn.forward(split_rows(x, 2)[comm.rank])
        return bn.backward(x[:4]) if comm.rank == 0 else bn.forward(split_rows(x, 2)[1])

    errors = run_workers(2, work, return_exceptions=True)
    assert str(errors[0]) == ("worker 0 made a backward call but worker 1: training forward; "
                              "every worker must make the same calls")
    assert str(errors[1]) == ("worker 1 made a training forward call but worker 0: backward; "
                              "every worker must make the same calls")


def test_a_worker_that_never_calls_times_out_instead_of_hanging(rng) -> None:
    x = rng.normal(size=(8, 3))

    def work(comm):
        if comm.rank == 1:
            raise KeyError("this worker died before the layer's call")
        return BatchNormalization(np.ones(3), np.zeros(3), comm=comm).forward(x)

    results = run_workers(2, work, timeout=0.5, return_exceptions=True)
    assert isinstance(results[1], KeyError)
    assert str(results[0]) == ("worker 0 waited 0.5 s for the other workers' all-reduce; "
                               "they made no call (or gave up)")


def test_whole_batch_needs_two_values_per_channel_together(rng) -> None:
    def work(comm):
        bn = BatchNormalization(np.ones(2), np.zeros(2), comm=comm)
        return bn.forward(np.ones((1, 2)) if comm.rank == 0 else np.ones((0, 2)))

    errors = run_workers(2, work, return_exceptions=True)
    for e in errors:
        assert isinstance(e, ValueError) and str(e) == (
            "training needs at least 2 values per channel to estimate a variance; "
            "the 2 workers' slices hold 1 together")
    # one value on each of two workers is enough
    outs = run_workers(2, lambda comm: BatchNormalization(np.ones(2), np.zeros(2), comm=comm).forward(
        np.array([[1.0, 2.0]]) * (comm.rank + 1)))
    assert np.allclose(np.concatenate(outs), [[-1, -1], [1, 1]], rtol=0, atol=1e-7)


def test_gradient_sums_that_overflow_together_are_refused_on_every_worker() -> None:
    """Each worker's sum(dout) fits float64, their total does not: every worker refuses."""
    big = np.finfo(np.float64).max / 1.5
    x = np.array([[0.0], [1.0]])

    def work(comm):
        bn = BatchNormalization(np.ones(1), np.zeros(1), comm=comm)
        bn.forward(x)
        return bn.backward(np.full((2, 1), big / 2))

    errors = run_workers(2, work, return_exceptions=True)
    for e in errors:
        assert isinstance(e, ValueError) and str(e) == (
            "the per-channel gradient sums of the 2 workers together overflow float64 (dout, or dout "
            "times the centred input, is too large); scale dout down")


def test_constructor_checks(rng) -> None:
    with pytest.raises(TypeError, match=r"^comm must be an mpi4py communicator, a torch.distributed process "
                                        r"group, or an object with rank, size and allreduce_sum\(buffer\); got str$"):
        BatchNormalization(np.ones(2), np.zeros(2), comm="world")

    class Bad:
        rank, size = 3, 2

        def allreduce_sum(self, buffer):
            return buffer

    with pytest.raises(ValueError, match=r"^a communicator needs integers 0 <= rank < size; got rank=3, size=2$"):
        BatchNormalization(np.ones(2), np.zeros(2), comm=Bad())
    with pytest.raises(ValueError, match="cannot be synchronized"):
        BatchNormalization(np.ones(2), np.zeros(2), staged=True, comm=ThreadGroup(1).communicators[0])
    with pytest.raises(ValueError, match=r"^size must be a positive int; got 0$"):
        ThreadGroup(0)
    with pytest.raises(ValueError, match=r"^sizes must be 2 numbers summing to 4; got \[1, 2\]$"):
        split_rows(np.ones((4, 1)), 2, [1, 2])
    assert BatchNormalization(np.ones(2), np.zeros(2)).comm is None
    one = ThreadGroup(1).communicators[0]
    assert BatchNormalization(np.ones(2), np.zeros(2), comm=one).comm is one
    with pytest.raises(LayerStateError):
        BatchNormalization(np.ones(2), np.zeros(2), comm=one).backward(np.ones((2, 2)))


# --------------------------------------------------------------- real processes
def _program_beside_python(name: str, install: str) -> str:
    """A program installed into this Python's environment (the mpich wheel's mpiexec)."""
    for folder in (Path(sys.executable).parent, *map(Path, os.environ.get("PATH", "").split(os.pathsep))):
        if (folder / name).is_file():
            return str(folder / name)
    from _optional import require_program

    return require_program(name, install)


def _run(cmd: list[str], envs: list[dict[str, str]] | None = None, cwd: Path = ROOT,
         check: bool = True) -> list[str]:
    """Start one process per environment (or ``cmd`` once), wait with a timeout, kill on expiry."""
    base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen(cmd, cwd=cwd, env={**base, **e}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) for e in (envs or [{}])]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"{' '.join(cmd)} did not finish within {TIMEOUT} s (a worker hangs)")
    for p, text in zip(procs, outputs):
        assert p.returncode == 0 or not check, f"{' '.join(cmd)} failed:\n{text[-4000:]}"
    return [f"exit {p.returncode}\n{text}" for p, text in zip(procs, outputs)] if not check else outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_reports(out: Path, k: int, backend: str) -> list[dict]:
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(k)]
    assert [r["rank"] for r in reports] == list(range(k)) and {r["size"] for r in reports} == {k}
    kinds = {"equal", "unequal"} | ({"empty"} if k > 1 else set())
    for r in reports:
        assert {c["slices"] for c in r["cases"]} == kinds
        assert {(len(c["shape"]), c["dtype"]) for c in r["cases"]} == {(2, "float64"), (4, "float64"),
                                                                        (2, "float32"), (4, "float32")}
        for case in r["cases"]:
            tol = TOL64 if case["dtype"] == "float64" else TOL32
            assert max(case["worst"].values()) <= tol, (backend, r["rank"], case)
            assert len(case["worst"]) == 8
    for i in range(len(reports[0]["cases"])):  # the shared results are the same bits on every worker
        assert len({r["cases"][i]["digest"] for r in reports}) == 1
    for f in range(len(reports[0]["faults"])):
        bad = reports[0]["faults"][f]["bad_rank"]
        for r in reports:
            fault = r["faults"][f]
            assert fault["unchanged"] and fault["recovered"] <= TOL64, fault
            if r["rank"] == bad:
                assert fault["error"].startswith(("ValueError", "TypeError")), fault
            else:
                assert fault["error"].startswith(f"PeerError: worker {bad} refused its part"), fault
    assert len(reports[0]["faults"]) == (3 if k > 1 else 0)
    return reports


@pytest.mark.processes
@pytest.mark.parametrize("k", [1, 2, 4])
def test_mpi_processes_equal_the_whole_batch(k: int, tmp_path: Path) -> None:
    require("mpi4py", install='pip install "bnlit[mpi]"')
    mpiexec = _program_beside_python("mpiexec", 'pip install "bnlit[mpi]" (the mpich wheel brings mpiexec)')
    # python -m mpi4py: an exception on one worker aborts them all (no worker left waiting)
    _run([mpiexec, "-n", str(k), sys.executable, "-m", "mpi4py", str(WORKER), "mpi", str(tmp_path)])
    _check_reports(tmp_path, k, "mpi")


def _torch_env(k: int) -> list[dict[str, str]]:
    port = str(_free_port())
    return [dict(RANK=str(r), WORLD_SIZE=str(k), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            for r in range(k)]


@pytest.mark.processes
@pytest.mark.parametrize("k", [1, 2, 4])
def test_torch_distributed_processes_equal_the_whole_batch_and_pytorch(k: int, tmp_path: Path) -> None:
    require("torch", install="pip install torch==2.13.0")
    _run([sys.executable, str(WORKER), "torch", str(tmp_path)], envs=_torch_env(k))
    reports = _check_reports(tmp_path, k, "torch")
    for r in reports:
        comparison = r["torch"]
        # PyTorch's BatchNorm2d on the gathered batch (eps 1e-5, momentum 0.1, unbiased running var)
        assert max(comparison["worst"].values()) <= TOL64, comparison
        # nn.SyncBatchNorm does not run on CPU in the pinned torch; when it does, compare with it too
        assert comparison["syncbatchnorm_error"] == (
            "ValueError: SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone"), comparison


@pytest.mark.processes
@pytest.mark.processes
def test_a_worker_dying_outside_the_layer_ends_every_worker(tmp_path: Path) -> None:
    """Worker 1 raises in its own code and never calls; the others are in the forward's
    all-reduce. Under ``python -m mpi4py`` its exception aborts the whole job; under
    torch.distributed the others' all-reduce fails when its connection closes, or times
    out (here after 5 s) while it is stuck elsewhere. Nobody hangs."""
    require("mpi4py", install='pip install "bnlit[mpi]"')
    require("torch", install="pip install torch==2.13.0")
    mpiexec = _program_beside_python("mpiexec", 'pip install "bnlit[mpi]" (the mpich wheel brings mpiexec)')
    text = _run([mpiexec, "-n", "3", sys.executable, "-m", "mpi4py", str(WORKER), "mpi", str(tmp_path), "die"],
                check=False)[0]
    assert not text.startswith("exit 0") and "RuntimeError: worker 1 failed before its call" in text, text
    for mode, symptom in (("die", "connection closed by peer"), ("stall", "timed out")):
        texts = _run([sys.executable, str(WORKER), "torch", str(tmp_path), mode], envs=_torch_env(3), check=False)
        assert "RuntimeError: worker 1 failed before its call" in texts[1]
        for rank in (0, 2):
            assert not texts[rank].startswith("exit 0") and symptom in texts[rank].lower(), texts[rank][-2000:]


@pytest.mark.processes
def test_the_examples_launch_commands_run(tmp_path: Path) -> None:
    """The two commands the example's docstring (and the book) give, run as written."""
    require("mpi4py", install='pip install "bnlit[mpi]"')
    require("torch", install="pip install torch==2.13.0")
    example = ROOT / "examples" / "synchronized_bn.py"
    doc = example.read_text()
    commands = [line.strip().split() for line in doc.splitlines()
                if line.strip().startswith(("mpiexec ", "torchrun "))]
    assert [c[0] for c in commands] == ["mpiexec", "torchrun"]
    for cmd in commands:
        program = _program_beside_python(cmd[0], 'pip install "bnlit[mpi]" torch==2.13.0')
        if cmd[0] == "torchrun":
            cmd = [c if c != "29500" else str(_free_port()) for c in cmd]
        argv = [program] + [sys.executable if c == "python" else c for c in cmd[1:]]
        text = _run(argv)[0]
        assert "4 processes, 8 of 32 rows here" in text
        line = text[text.index("  output"):].splitlines()[0].replace(",", "").split()
        numbers = [float(line[i]) for i in (1, 3, 5)]
        assert max(numbers) <= 1e-12 and line[0::2] == ["output", "dx", "dgamma"], line


def test_adapters_refuse_without_their_transport() -> None:
    """The adapters name what is missing instead of failing later."""
    torch = require("torch", install="pip install torch==2.13.0")
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"^torch.distributed is not initialised: call "
                                           r"torch.distributed.init_process_group first$"):
        TorchCommunicator()
    mpi = require("mpi4py.MPI", install='pip install "bnlit[mpi]"')
    comm = as_communicator(mpi.COMM_SELF)
    assert isinstance(comm, MPICommunicator) and (comm.rank, comm.size) == (0, 1)
    buffer = np.arange(4.0)
    assert comm.allreduce_sum(buffer).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert torch is not None
