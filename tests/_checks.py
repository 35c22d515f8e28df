"""Independent reference tools for the tests: central differences and a relative error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], a: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``a``, changed in place."""
    grad = np.zeros_like(a, dtype=np.float64)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        up = f()
        flat[i] = saved - h
        down = f()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * h)
    return grad


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest expected magnitude."""
    scale = np.max(np.abs(expected))
    assert scale > 0, "a gradient check against an all-zero gradient proves nothing"
    return float(np.max(np.abs(np.asarray(actual) - expected)) / scale)
