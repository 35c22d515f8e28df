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
from typing import Optional, Union

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
    NaN and infinity in ``gamma``, ``beta`` or ``dout`` propagate, silently.
    """
    with np.errstate(all="ignore"):
        return _reference_training(x, gamma, beta, epsilon, dout)


def _reference_training(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float, dout: Optional[np.ndarray]
) -> Reference:
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
    """``gamma / sqrt(var + epsilon) * (x - mean) + beta`` per channel, in float64 (on halves,
    so that ``x - mean`` cannot overflow; a zero scale gives exactly ``beta``)."""
    shape = [1] * x.ndim
    shape[1] = -1
    col = lambda v: np.asarray(v, dtype=np.float64).reshape(shape)  # noqa: E731
    with np.errstate(all="ignore"):
        scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + epsilon)
        out = (np.asarray(x, np.float64) * 0.5 - col(mean) * 0.5) * col(scale) * 2.0 + col(beta)
        return np.where(col(scale) == 0, col(beta), out)  # gamma = 0: exactly beta


def channel_max(a: np.ndarray) -> np.ndarray:
    """Per channel the largest magnitude (of a batch, or of a per-channel vector itself)."""
    if a.ndim == 1:
        return np.abs(np.asarray(a, np.float64))
    return np.abs(by_channel(a)).max(axis=1) if a.size else np.zeros(a.shape[1])


def tolerance(dtype: np.dtype, size: np.ndarray, wobble: Union[np.ndarray, float] = 0.0) -> np.ndarray:
    """Allowed error per channel: the rounding of ``dtype`` on terms of ``size`` (at least a
    subnormal step of ``dtype``), plus for
    float64 the ``wobble`` its own rounding of the inputs and of the mean can cause
    (an ulp of ``|x|`` magnified by ``1 / std``: float64 holds no better mean).
    float32 data is computed with float64 sums, so nothing magnifies its rounding."""
    floor = 2 * float(np.finfo(dtype).smallest_subnormal)  # a result below the normal range rounds to this
    if dtype == np.float32:
        return 4e-6 * np.asarray(size) + floor
    return 1e-12 * np.asarray(size) + wobble + floor


def ulps_over_std(x: np.ndarray, std: np.ndarray) -> np.ndarray:
    """A few ulps of each channel's largest ``|x|``, relative to its ``std``."""
    return 4e-15 * channel_max(x) / std


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: np.ndarray, what: str = "",
                 dtype: Optional[np.dtype] = None) -> None:
    """``actual`` within ``tol`` (per channel: axis 1, or axis 0 of a per-channel vector)
    of ``expected``. Where ``expected`` is NaN or infinite (NaN or infinity in the
    inputs propagate) ``actual`` must be too, NaN or infinite. With ``dtype``, a finite
    expected value beyond its range must come out as the infinity it rounds to."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    propagated = ~np.isfinite(expected)
    assert not np.any(np.isfinite(actual[propagated])), f"{what}: a NaN or infinity did not propagate"
    assert not np.any(np.isnan(actual[~propagated])), f"{what}: NaN from finite numbers"
    expected, actual = np.where(propagated, 0.0, expected), np.where(propagated, 0.0, actual)
    shape = [1] * actual.ndim
    shape[min(1, actual.ndim - 1)] = -1
    if dtype is not None:  # beyond the dtype's largest number (by more than tol): inf; near it: inf allowed
        limit, allowed = float(np.finfo(dtype).max), np.reshape(tol, shape) + 0 * expected
        must = np.abs(expected) - allowed > limit
        wrong = must & ~(np.isinf(actual) & (np.sign(actual) == np.sign(expected)))
        assert not np.any(wrong), f"{what}: values beyond {np.dtype(dtype)} must be inf"
        may = (np.abs(expected) + allowed > limit) & np.isinf(actual)
        expected, actual = np.where(must | may, 0.0, expected), np.where(must | may, 0.0, actual)
    diff = np.abs(actual - expected)
    diff[np.isnan(diff)] = 0.0
    bad = diff > np.reshape(tol, shape) + 1e-300  # a NaN tolerance: a channel whose NaN propagates
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


def check_against_reference(ref: Reference, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                            out: Optional[np.ndarray] = None, dout: Optional[np.ndarray] = None,
                            dx: Optional[np.ndarray] = None, dgamma: Optional[np.ndarray] = None,
                            dbeta: Optional[np.ndarray] = None) -> None:
    """A training forward's ``out`` and a backward's results against ``ref``, each within
    the rounding of ``x``'s dtype on the size of the terms it is made of."""
    with np.errstate(all="ignore"):  # NaN and infinity in the inputs propagate into the sizes too
        _check_against_reference(ref, x, gamma, beta, out, dout, dx, dgamma, dbeta)


def _check_against_reference(ref: Reference, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                             out: Optional[np.ndarray], dout: Optional[np.ndarray], dx: Optional[np.ndarray],
                             dgamma: Optional[np.ndarray], dbeta: Optional[np.ndarray]) -> None:
    dtype = x.dtype
    wobble = ulps_over_std(x, ref.std)
    x_std_max = np.abs(ref.x_std).max(axis=1)
    if out is not None:
        size = np.abs(gamma) * x_std_max + np.abs(beta)
        assert_close(out, ref.out, tolerance(dtype, size, np.abs(gamma) * wobble), "out", dtype)
    if dout is None:
        return
    d = by_channel(dout)
    dx_std = np.abs(d * ref.x_std)
    assert_close(dbeta, ref.dbeta, tolerance(dtype, np.abs(d).sum(axis=1)), "dbeta", dtype)
    assert_close(dgamma, ref.dgamma, tolerance(dtype, dx_std.sum(axis=1), wobble * np.abs(d).sum(axis=1)), "dgamma", dtype)
    terms = np.abs(d).max(axis=1) + np.abs(d).mean(axis=1) + x_std_max * dx_std.mean(axis=1)
    spread = np.abs(d).max(axis=1) + x_std_max * np.abs(d).mean(axis=1)
    with np.errstate(over="ignore"):
        finite = np.isfinite(ref.dx)
    assert_close(np.where(finite, dx, 0.0), np.where(finite, ref.dx, 0.0),
                 tolerance(dtype, np.abs(gamma) / ref.std * terms, np.abs(gamma) / ref.std * wobble * spread), "dx", dtype)
