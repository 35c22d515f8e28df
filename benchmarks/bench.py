"""How fast is bnlit? A benchmark, not a test: it prints a table and saves it.

For each shape, dtype and thread count it times a training forward, a backward
and both, for bnlit's two engines (``numpy``; ``numba`` when installed), bnlit's
staged layer and (when importable) PyTorch's CPU ``F.batch_norm`` with
autograd. The implementations are measured interleaved, repetition by
repetition, in one process, so that a noisy shared machine slows them alike;
each repetition runs them in a rotated order, so that none always runs right
after another's cache-flushing work. Every ratio is taken within one
repetition, and the table gives its spread over the repetitions
(min / median / max), not the median alone:

- ``x torch``: fwd+bwd time over PyTorch's, same repetition and thread count;
- ``x floor``: fwd+bwd time over the memory floor of that repetition: the
  bytes that must move (``PASSES`` passes over the input's bytes: the forward
  reads ``x`` for the statistics, then reads ``x`` and writes ``y``; the
  backward reads ``x`` and ``dout`` for the sums, then reads them again and
  writes ``dx``) at the bandwidth of a copy of the input (``np.copyto``, which
  reads and writes: two passes) timed in the same repetition;
- ``peak mem``: memory at the peak of a forward+backward, over the input's
  bytes, outputs included: NumPy's allocations (tracemalloc) and the process's
  resident memory (Linux's peak RSS, which sees numba's and PyTorch's too).

Two more experiments for the numba engine (run when numba is installed):

- threads: on the largest shape, one thread against two, interleaved in one
  process, with fresh outputs and with ``out=`` buffers reused; and the best
  read and copy bandwidth of one and two threads, which bound the speed-up;
- first call: a new process's first forward+backward (import included), with
  an empty compilation cache and with the cache the first run left on disk.

Usage: ``python benchmarks/bench.py [--quick | --shapes 64,64,56,56 ...] [--threads 1 2] [--save PATH]``.
Each thread count runs in its own process, with the thread variables set
before NumPy loads: ``BNLIT_NUM_THREADS`` for bnlit's engines, the BLAS/OpenMP
ones, and ``torch.set_num_threads`` for PyTorch. Each timed call follows an
untimed call of the same implementation, so that every implementation is
measured in its own steady state: PyTorch's OpenMP threads spin on the cores
for a while after a call (slowing whatever else runs next), and idle worker
threads, of PyTorch or bnlit, take time to wake.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

SHAPES = [(64, 64, 56, 56), (32, 256, 14, 14), (8, 16, 8, 8), (4096, 1024)]
QUICK_SHAPES = [(16, 64, 28, 28), (8, 16, 8, 8), (1024, 256)]
DTYPES = ["float32", "float64"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BNLIT_NUM_THREADS")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAVE = ROOT / "docs" / "data" / "benchmark.json"
#: Passes over the input's bytes that a forward+backward must make (see above).
PASSES = 8


def repetitions(nbytes: int) -> int:
    """More repetitions for small inputs, whose times are short and noisy."""
    return int(min(200, max(11, 2e8 // max(nbytes, 1))))


def spread(values: list[float]) -> dict:
    import numpy as np

    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def engines() -> list[str]:
    from bnlit.engines import ENGINES, get_engine

    names = []
    for name in ENGINES:
        try:
            get_engine(name)
        except ImportError:
            continue
        names.append(name)
    return names


def measure(threads: int, shapes: list[tuple[int, ...]]) -> list[dict]:
    """Run in a child process whose thread variables are already set."""
    import numpy as np

    from bnlit import BatchNormalization

    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
    except ImportError:
        torch = None

    rows = []
    for shape in shapes:
        for dtype in DTYPES:
            rng = np.random.default_rng(0)
            x = rng.normal(1.0, 2.0, size=shape).astype(dtype)
            dout = rng.normal(size=shape).astype(dtype)
            channels = shape[1]
            layers = {
                f"bnlit {name}": BatchNormalization(np.ones(channels), np.zeros(channels), epsilon=1e-5, engine=name)
                for name in engines()
            }
            layers["bnlit staged"] = BatchNormalization(np.ones(channels), np.zeros(channels), epsilon=1e-5, staged=True)
            runners = {name: _numpy_runner(layer, x, dout) for name, layer in layers.items()}
            if torch is not None:
                runners["torch"] = _torch_runner(torch, F, x, dout)
            copy_src, copy_dst = x.copy(), np.empty_like(x)

            times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
            copies = []
            for run in runners.values():  # warm up every path once (and compile)
                run()
            names = list(runners)
            for rep in range(repetitions(x.nbytes)):
                start = time.perf_counter()
                np.copyto(copy_dst, copy_src)
                copies.append(time.perf_counter() - start)
                for k in range(len(names)):  # a different order each time: no one always runs first
                    name = names[(rep + k) % len(names)]
                    runners[name]()  # untimed: every implementation starts from its own warm state
                    times[name].append(runners[name]())
            floors = [PASSES * copy / 2 for copy in copies]  # PASSES passes at the copy's bytes per second
            totals = {name: [f + b for f, b in samples] for name, samples in times.items()}
            for name, samples in times.items():
                memory = _peak_memory(runners[name], x.nbytes, numpy=name != "torch")
                rows.append({
                    "shape": list(shape), "dtype": dtype, "threads": threads, "implementation": name,
                    "forward_ms": 1e3 * float(np.median([f for f, _ in samples])),
                    "backward_ms": 1e3 * float(np.median([b for _, b in samples])),
                    "total_ms": 1e3 * float(np.median(totals[name])),
                    "vs_torch": spread([t / u for t, u in zip(totals[name], totals["torch"])]) if "torch" in totals else None,
                    "vs_floor": spread([t / f for t, f in zip(totals[name], floors)]),
                    "floor_ms": 1e3 * float(np.median(floors)),
                    "copy_GBps": 2 * x.nbytes / float(np.median(copies)) / 1e9,
                    "repetitions": len(copies),
                    "input_bytes": int(x.nbytes),
                    **memory,
                })
    return rows


def _numpy_runner(layer, x, dout):
    def run() -> tuple[float, float]:
        start = time.perf_counter()
        y = layer.forward(x, train_flg=True)  # kept until the backward ends, as in training
        middle = time.perf_counter()
        layer.backward(dout)
        end = time.perf_counter()
        del y
        return middle - start, end - middle

    return run


def _torch_runner(torch, F, x, dout):
    tx = torch.from_numpy(x).requires_grad_(True)
    tdout = torch.from_numpy(dout)
    channels = x.shape[1]
    weight = torch.ones(channels, dtype=tx.dtype, requires_grad=True)
    bias = torch.zeros(channels, dtype=tx.dtype, requires_grad=True)
    running_mean = torch.zeros(channels, dtype=tx.dtype)
    running_var = torch.ones(channels, dtype=tx.dtype)

    def run() -> tuple[float, float]:
        tx.grad = weight.grad = bias.grad = None
        start = time.perf_counter()
        y = F.batch_norm(tx, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=1e-5)
        middle = time.perf_counter()
        y.backward(tdout)
        return middle - start, time.perf_counter() - middle

    return run


def _rss_kib() -> tuple[int, int] | None:
    """Resident memory now and at its peak (KiB), or None where Linux's /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
        now, peak = (int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))
        return now, peak
    except (OSError, AttributeError):
        return None


def _peak_memory(run, nbytes: int, numpy: bool = True) -> dict:
    """Peak memory of one forward+backward (outputs kept until its end), over the input's bytes."""
    import gc

    run()  # warm: the implementation already holds the last batch's small state
    gc.collect()
    result = {"peak_memory_x_input": None, "peak_rss_x_input": None}
    try:  # the peak of resident memory, reset first (Linux)
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib()
    except OSError:
        before = None
    if numpy:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    run()
    if numpy:
        result["peak_memory_x_input"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    after = _rss_kib()
    if before is not None and after is not None:
        result["peak_rss_x_input"] = 1024 * (after[1] - before[0])
    return {key: None if value is None else value / nbytes for key, value in result.items()}


def measure_threads(shape: tuple[int, ...], dtype: str) -> list[dict]:
    """The numba engine on one thread against two, interleaved in this process,
    with fresh outputs and with ``out=`` buffers reused."""
    import numpy as np

    import bnlit
    from bnlit import BatchNormalization

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    y, dx = np.empty_like(x), np.empty_like(x)
    layer = BatchNormalization(np.ones(shape[1]), np.zeros(shape[1]), epsilon=1e-5, engine="numba")

    def runner(threads: int, reuse: bool):
        def run() -> float:
            bnlit.set_num_threads(threads)
            start = time.perf_counter()
            layer.forward(x, out=y if reuse else None)
            layer.backward(dout, out=dx if reuse else None)
            return time.perf_counter() - start
        return run

    cases = {(t, reuse): runner(t, reuse) for reuse in (True, False) for t in (1, 2)}
    samples: dict = {case: [] for case in cases}
    for run in cases.values():
        run()
    keys = list(cases)
    for rep in range(repetitions(x.nbytes)):
        for k in range(len(keys)):
            case = keys[(rep + k) % len(keys)]
            cases[case]()
            samples[case].append(cases[case]())
    bnlit.set_num_threads(1)
    bandwidth = _bandwidth(x)
    rows = []
    for reuse in (True, False):
        one, two = samples[(1, reuse)], samples[(2, reuse)]
        rows.append({
            "shape": list(shape), "dtype": dtype, "outputs": "reused" if reuse else "fresh",
            "one_thread_ms": 1e3 * float(np.median(one)), "two_threads_ms": 1e3 * float(np.median(two)),
            "speedup": spread([a / b for a, b in zip(one, two)]), "repetitions": len(one),
            "bandwidth": bandwidth,
        })
    return rows


def _bandwidth(x) -> dict:
    """What one and two threads can move at best (fastest of the repetitions): a read of
    ``x`` and a copy of it into a reused array, as compiled parallel loops. The fused
    engine's forward+backward is about four reads and two copies (statistics and
    gradient sums: three reads; normalize: a copy; input gradient: a read and a
    copy), which bounds what a second thread can gain."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, fastmath={"reassoc"})
    def read(x2):
        sums = np.zeros(x2.shape[0])
        for i in numba.prange(x2.shape[0]):
            row = x2[i]
            total = 0.0
            for j in range(row.size):
                total += row[j]
            sums[i] = total
        return sums

    @numba.njit(parallel=True)
    def copy(x2, o2):
        for i in numba.prange(x2.shape[0]):
            o2[i, :] = x2[i, :]

    x2 = x.reshape(x.shape[0], -1)
    out = np.empty_like(x2)
    best = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        read(x2), copy(x2, out)  # compile, warm
    for rep in range(max(51, repetitions(x.nbytes))):  # the best of many: a machine's capacity
        for threads in (1, 2):
            numba.set_num_threads(threads)
            for name, run in (("read", lambda: read(x2)), ("copy", lambda: copy(x2, out))):
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                best[name, threads] = min(best.get((name, threads), elapsed), elapsed)
    numba.set_num_threads(1)

    def step(threads: int) -> float:
        return 4 * best["read", threads] + 2 * best["copy", threads]

    return {
        "read_GBps": {str(t): x.nbytes / best["read", t] / 1e9 for t in (1, 2)},
        "copy_GBps": {str(t): 2 * x.nbytes / best["copy", t] / 1e9 for t in (1, 2)},
        "speedup_bound": step(1) / step(2),
    }


FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
from bnlit import BatchNormalization
for shape in [(8, 16, 8, 8), (64, 16)]:
    for dtype in ("float32", "float64"):
        x = np.random.default_rng(0).normal(size=shape).astype(dtype)
        bn = BatchNormalization(np.ones(shape[1]), np.zeros(shape[1]), engine="numba")
        bn.backward(bn.forward(x))
        bn.forward(x, train_flg=False)
print(time.perf_counter() - start)
"""


def measure_first_call() -> dict:
    """Seconds from a new process's start of import to the end of its first training step
    and prediction (2-D and 4-D, float32 and float64), with an empty compilation cache and
    with the one that run left."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold, warm = (
            float(subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True,
                                 check=True).stdout)
            for _ in range(2)
        )
    return {"cold_s": cold, "cached_s": warm}


def machine() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    info["numpy"] = numpy.__version__
    for name in ("torch", "numba"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    return info


def _ratio(value: dict | None) -> str:
    return "n/a" if value is None else f"{value['min']:.2f}/{value['median']:.2f}/{value['max']:.2f}"


def table(rows: list[dict]) -> str:
    header = (f"{'shape':<16} {'dtype':<8} {'thr':>3} {'implementation':<13} {'fwd ms':>8} {'bwd ms':>8} "
              f"{'total ms':>9} {'x torch min/med/max':>20} {'x floor min/med/max':>20} {'peak mem':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        memory = r["peak_memory_x_input"] if r["peak_memory_x_input"] is not None else r["peak_rss_x_input"]
        lines.append(
            f"{shape:<16} {r['dtype']:<8} {r['threads']:>3} {r['implementation']:<13} {r['forward_ms']:>8.2f} "
            f"{r['backward_ms']:>8.2f} {r['total_ms']:>9.2f} {_ratio(r['vs_torch']):>20} {_ratio(r['vs_floor']):>20} "
            f"{'n/a' if memory is None else format(memory, '.2f'):>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    parser.add_argument("--shapes", nargs="+", help="shapes to run instead, such as 64,64,56,56 4096,1024")
    parser.add_argument("--no-extras", action="store_true", help="skip the thread and first-call experiments")
    parser.add_argument("--save", type=Path, default=None, help=f"write the results as JSON (the book reads {DEFAULT_SAVE.relative_to(ROOT)})")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    shapes = (
        [tuple(int(v) for v in text.split(",")) for text in args.shapes]
        if args.shapes else QUICK_SHAPES if args.quick else SHAPES
    )
    if args.child_threads:
        json.dump(measure_threads(max(shapes, key=lambda s: _size(s)), "float32"), sys.stdout)
        return
    if args.child is not None:
        json.dump(measure(args.child, shapes), sys.stdout)
        return

    rows = []
    shape_args = ["--shapes"] + [",".join(map(str, s)) for s in shapes]
    for threads in args.threads:
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
        command = [sys.executable, __file__, "--child", str(threads)] + shape_args
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows += json.loads(result.stdout)
    info = machine()
    extras: dict = {"threads": None, "first_call": None}
    if info["numba"] != "not installed" and not args.no_extras:
        env = dict(os.environ, **{name: "2" for name in THREAD_VARIABLES})
        result = subprocess.run([sys.executable, __file__, "--child-threads"] + shape_args, env=env,
                                capture_output=True, text=True, check=True)
        extras["threads"] = json.loads(result.stdout)
        extras["first_call"] = measure_first_call()
    if info["torch"] == "not installed":
        print("PyTorch is not installed: no PyTorch rows (pip install torch==2.13.0 installs the CPU build).")
    if info["numba"] == "not installed":
        print('numba is not installed: no rows for the numba engine (pip install "bnlit[fast]").')
    print(table(rows))
    for row in extras["threads"] or []:
        print(f"numba engine, {'x'.join(map(str, row['shape']))} {row['dtype']}, outputs {row['outputs']}: "
              f"1 thread {row['one_thread_ms']:.2f} ms, 2 threads {row['two_threads_ms']:.2f} ms, "
              f"speed-up {_ratio(row['speedup'])} (min/median/max)")
    if extras["first_call"]:
        print(f"first call in a new process: {extras['first_call']['cold_s']:.1f} s with an empty compilation cache, "
              f"{extras['first_call']['cached_s']:.2f} s with the cache on disk")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        record = {"date": datetime.date.today().isoformat(), "machine": info, "quick": args.quick,
                  "passes": PASSES, "rows": rows, **extras}
        args.save.write_text(json.dumps(record, indent=1) + "\n")
        print(f"saved to {args.save}")


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for n in shape:
        size *= n
    return size


if __name__ == "__main__":
    main()
