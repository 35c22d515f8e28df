"""How fast is bnlit? A benchmark, not a test: it prints a table and saves it.

For each shape, dtype and thread count it times a training forward, a backward
and both, for bnlit's default layer, bnlit's staged layer and (when importable)
PyTorch's CPU ``F.batch_norm`` with autograd. The implementations are measured
interleaved, repetition by repetition, in one process, so that a noisy shared
machine slows them alike; each repetition runs them in a rotated order, so
that none always runs right after another's cache-flushing work. The table
reports medians and ratios:

- ``x torch``: fwd+bwd time over PyTorch's at the same thread count;
- ``x floor``: fwd+bwd time over the memory-traffic floor, 8 passes over the
  input's bytes at the copy bandwidth measured in the same loop (a copy reads
  and writes, so one copy of the input moves 2 passes' worth);
- ``peak mem``: extra memory at the peak of a forward+backward, outputs
  included, as a multiple of the input's bytes (tracemalloc, which sees
  NumPy's allocations, not PyTorch's).

Usage: ``python benchmarks/bench.py [--quick | --shapes 64,64,56,56 ...] [--threads 1 2] [--save PATH]``.
Each thread count runs in its own process, with the thread variables set
before NumPy loads: ``BNLIT_NUM_THREADS`` for bnlit's streaming kernels (NumPy's
own element-wise loops use one thread), the BLAS/OpenMP ones, and
``torch.set_num_threads`` for PyTorch. Each timed call follows an untimed call
of the same implementation, so that every implementation is measured in its
own steady state: PyTorch's OpenMP threads spin on the cores for a while after
a call (slowing whatever else runs next), and idle worker threads, of
PyTorch or bnlit, take time to wake.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

SHAPES = [(64, 64, 56, 56), (32, 256, 14, 14), (8, 16, 8, 8), (4096, 1024)]
QUICK_SHAPES = [(16, 64, 28, 28), (8, 16, 8, 8), (1024, 256)]
DTYPES = ["float32", "float64"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BNLIT_NUM_THREADS")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAVE = ROOT / "docs" / "data" / "benchmark.json"


def repetitions(nbytes: int) -> int:
    """More repetitions for small inputs, whose times are short and noisy."""
    return int(min(200, max(11, 2e8 // max(nbytes, 1))))


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
                "bnlit": BatchNormalization(np.ones(channels), np.zeros(channels), epsilon=1e-5),
                "bnlit staged": BatchNormalization(np.ones(channels), np.zeros(channels), epsilon=1e-5, staged=True),
            }
            runners = {name: _numpy_runner(layer, x, dout) for name, layer in layers.items()}
            if torch is not None:
                runners["torch"] = _torch_runner(torch, F, x, dout)
            copy_src, copy_dst = x.copy(), np.empty_like(x)

            times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
            copies = []
            for run in runners.values():  # warm up every path once
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
            copy_time = float(np.median(copies))
            floor = 8 * x.nbytes / (2 * x.nbytes / copy_time)  # 8 passes at the copy's bytes per second
            torch_total = float(np.median([f + b for f, b in times["torch"]])) if "torch" in times else None
            for name, samples in times.items():
                fwd = float(np.median([f for f, _ in samples]))
                bwd = float(np.median([b for _, b in samples]))
                total = float(np.median([f + b for f, b in samples]))
                rows.append({
                    "shape": list(shape), "dtype": dtype, "threads": threads, "implementation": name,
                    "forward_ms": 1e3 * fwd, "backward_ms": 1e3 * bwd, "total_ms": 1e3 * total,
                    "vs_torch": None if torch_total is None else total / torch_total,
                    "vs_floor": total / floor, "floor_ms": 1e3 * floor,
                    "copy_GBps": 2 * x.nbytes / copy_time / 1e9,
                    "peak_memory_x_input": _peak_memory(layers[name], x, dout) if name in layers else None,
                })
    return rows


def _numpy_runner(layer, x, dout):
    def run() -> tuple[float, float]:
        start = time.perf_counter()
        layer.forward(x, train_flg=True)
        middle = time.perf_counter()
        layer.backward(dout)
        return middle - start, time.perf_counter() - middle

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


def _peak_memory(layer, x, dout) -> float:
    """Peak of NumPy allocations during a forward+backward, over the input's bytes."""
    layer.forward(x)
    layer.backward(dout)  # warm: the layer already holds the last batch's small state
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = layer.forward(x)
    dx = layer.backward(dout)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del out, dx
    return peak / x.nbytes


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
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "not installed"
    return info


def table(rows: list[dict]) -> str:
    header = f"{'shape':<18} {'dtype':<8} {'thr':>3} {'implementation':<13} {'fwd ms':>8} {'bwd ms':>8} {'total ms':>9} {'x torch':>13} {'x floor':>8} {'peak mem':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        vs_torch = "not installed" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
        memory = "n/a" if r["peak_memory_x_input"] is None else f"{r['peak_memory_x_input']:.2f}"
        lines.append(
            f"{shape:<18} {r['dtype']:<8} {r['threads']:>3} {r['implementation']:<13} {r['forward_ms']:>8.2f} "
            f"{r['backward_ms']:>8.2f} {r['total_ms']:>9.2f} {vs_torch:>13} {r['vs_floor']:>8.2f} {memory:>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    parser.add_argument("--shapes", nargs="+", help="shapes to run instead, such as 64,64,56,56 4096,1024")
    parser.add_argument("--save", type=Path, default=None, help=f"write the results as JSON (the book reads {DEFAULT_SAVE.relative_to(ROOT)})")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    shapes = (
        [tuple(int(v) for v in text.split(",")) for text in args.shapes]
        if args.shapes else QUICK_SHAPES if args.quick else SHAPES
    )
    if args.child is not None:
        json.dump(measure(args.child, shapes), sys.stdout)
        return

    rows = []
    for threads in args.threads:
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
        command = [sys.executable, __file__, "--child", str(threads), "--shapes"] + [",".join(map(str, s)) for s in shapes]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows += json.loads(result.stdout)
    info = machine()
    if info["torch"] == "not installed":
        print("PyTorch is not installed: no PyTorch rows (pip install torch==2.13.0 installs the CPU build).")
    print(table(rows))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        record = {"date": datetime.date.today().isoformat(), "machine": info, "quick": args.quick, "rows": rows}
        args.save.write_text(json.dumps(record, indent=1) + "\n")
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
