"""Test helpers for the robustness and stateful tests: an exact reference of the
layer, written independently of bnlit, and a byte-for-byte snapshot of a layer's state.

The reference takes each channel's statistics exactly (``fractions.Fraction``
sums of the float values) and rounds once to float64; the per-element results are
then float64 expressions of those exact statistics. Comparisons allow the
rounding of the result's dtype, scaled by the size of the terms the result is
made of (and, for float64, by the input's conditioning ``|x| / std``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np


class Unrepresentable(Exception):
    """A result of the reference does not fit in float64."""


def _float(q: Fraction) -> float:
    try:
        return float(q)
    except OverflowError:
        raise Unrepresentable(str(q)[:40]) from None


def by_channel(a: np.ndarray) -> np.ndarray:
    """``(N, D)`` or ``(N, C, H, W)`` as ``(C, values)`` float64."""
    return np.moveaxis(np.asarray(a, dtype=np.float64), 1, 0).reshape(a.shape[1], -1)


def from_channels(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    moved = (shape[1], shape[0]) + tuple(shape[2:])
    return np.moveaxis(a.reshape(moved), 0, 1)


def exact_moments(values: np.ndarray) -> tuple[Fraction, Fraction]:
    """Exact mean and biased variance of float values."""
    v = [Fraction(float(t)) for t in values]
    n = len(v)
    mean = sum(v, Fraction(0)) / n
    return mean, sum(((t - mean) ** 2 for t in v), Fraction(0)) / n


@dataclass
class Reference:
    """What a training forward (and, given dout, a backward) must give, in float64."""

    out: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    std: np.ndarray  # sqrt(var + epsilon)
    x_std: np.ndarray  # by channel
    dx: Optional[np.ndarray] = None
    dgamma: Optional[np.ndarray] = None
    dbeta: Optional[np.ndarray] = None


def reference_training(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float, dout: Optional[np.ndarray] = None
) -> Reference:
    """Training forward (and backward) of batch normalization from exact statistics.

    Raises :class:`Unrepresentable` when a statistic or a gradient sum does not fit in float64.
    """
    xc = by_channel(x)
    channels, n = xc.shape
    mean, var, std = np.empty(channels), np.empty(channels), np.empty(channels)
    x_std = np.empty(xc.shape)
    out = np.empty(xc.shape)
    for c in range(channels):
        m, v = exact_moments(xc[c])
        mean[c], var[c] = _float(m), _float(v)
        std[c] = math.sqrt(_float(v + Fraction(epsilon)))
        x_std[c] = [_float(Fraction(float(t)) - m) / std[c] for t in xc[c]]
        out[c] = gamma[c] * x_std[c] + beta[c]
    ref = Reference(from_channels(out, x.shape), mean, var, std, x_std)
    if dout is None:
        return ref
    dc = by_channel(dout)
    dx = np.empty(xc.shape)
    ref.dgamma, ref.dbeta = np.empty(channels), np.empty(channels)
    for c in range(channels):
        d = [Fraction(float(t)) for t in dc[c]]
        sd = sum(d, Fraction(0))
        sdx = sum((a * Fraction(float(s)) for a, s in zip(d, x_std[c])), Fraction(0))
        ref.dbeta[c], ref.dgamma[c] = _float(sd), _float(sdx)
        mean_d, mean_dx = _float(sd / n), _float(sdx / n)
        dx[c] = gamma[c] / std[c] * (dc[c] - mean_d - x_std[c] * mean_dx)
    ref.dx = from_channels(dx, x.shape)
    return ref


def reference_prediction(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> np.ndarray:
    """``gamma * (x - mean) / sqrt(var + epsilon) + beta`` per channel, in float64 (on halves,
    so that ``x - mean`` cannot overflow)."""
    shape = [1] * x.ndim
    shape[1] = -1
    col = lambda v: np.asarray(v, dtype=np.float64).reshape(shape)  # noqa: E731
    with np.errstate(over="ignore"):
        centred = (np.asarray(x, np.float64) * 0.5 - col(mean) * 0.5) / col(np.sqrt(np.asarray(var) + epsilon))
        return col(gamma) * centred * 2.0 + col(beta)


def channel_max(a: np.ndarray) -> np.ndarray:
    return np.abs(by_channel(a)).max(axis=1) if a.size else np.zeros(a.shape[1])


def assert_close(actual: np.ndarray, expected: np.ndarray, size: np.ndarray, dtype: np.dtype,
                 condition: Optional[np.ndarray] = None, what: str = "") -> None:
    """``actual`` within the rounding of ``dtype`` of ``expected``, per channel.

    ``size`` is, per channel, the size of the terms the result is made of (so a
    result that cancels to near zero is judged against its terms); ``condition``
    (float64 only) how many times an error in the inputs' last bit is magnified.
    """
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), what
    if dtype == np.float32:
        tol = 4e-6 * size
    else:
        tol = 1e-12 * size * (1.0 if condition is None else 1.0 + condition * 1e-3)
    shape = [1] * actual.ndim
    shape[min(1, actual.ndim - 1)] = -1  # channels: axis 1, or axis 0 of a per-channel vector
    diff = np.abs(actual - expected)
    diff[np.isnan(diff)] = 0.0
    bad = diff > np.reshape(tol, shape) + 1e-300
    assert not np.any(bad), f"{what}: largest error {diff.max():.3g}, allowed {np.min(tol):.3g}..{np.max(tol):.3g}"


def snapshot(bn: object) -> dict:
    """Every attribute of ``bn``, deep-copied, arrays as (dtype, shape, bytes)."""
    return {key: _freeze(value) for key, value in vars(bn).items()}


def _freeze(value: object) -> object:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__, tuple((k, _freeze(getattr(value, k))) for k in value.__dataclass_fields__))
    if isinstance(value, (int, float, str, bool, type(None), np.generic)):
        return (type(value).__name__, repr(value))
    return (type(value).__name__, id(value), copy.copy(repr(value)))


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), set(before) ^ set(after)
    for key in before:
        assert before[key] == after[key], f"the layer's {key} changed"
