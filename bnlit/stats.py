"""Per-channel statistics as values of their own: the seam between the halves of a step.

A training forward is two halves: reduce the batch to per-channel
:class:`Moments` (count, mean, variance), then normalize with them. A backward
is two halves too: reduce ``dout`` and ``x`` to per-channel :class:`GradSums`,
then compute the input gradient from them. Between the halves, moments of
parts of a batch merge exactly (:func:`merge_moments`) and gradient sums add,
which is all a synchronized layer across processes needs to exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
from numpy.typing import NDArray

__all__ = ["Moments", "merge_moments", "Stats", "stats_from", "GradSums", "input_grad_coefficients"]

F64 = NDArray[np.float64]

#: How many spreads from zero a channel's mean may lie for the shorter formulas.
CENTRED_RATIO = 8.0


@dataclass(frozen=True)
class Moments:
    """Per-channel count, mean and biased variance of (part of) a batch.

    ``count`` is the number of values each channel's statistics run over
    (``N`` for 2-D input, ``N * H * W`` for 4-D input).
    """

    count: int
    mean: F64
    var: F64

    @property
    def m2(self) -> F64:
        """The centred sum of squares ``sum((x - mean)**2)``, per channel."""
        return self.var * self.count


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of two parts of a batch together (Chan, Golub & LeVeque's update).

    Exact in exact arithmetic and stable in floating point: it never forms
    ``sum(x**2) - n * mean**2``.
    """
    count = a.count + b.count
    if a.count == 0 or b.count == 0:
        return b if a.count == 0 else a
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / count)
    m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / count)
    return Moments(count, mean, m2 / count)


def is_centred(mean: F64, spread: F64) -> bool:
    """Whether every channel's mean lies within ``CENTRED_RATIO`` spreads of zero.

    Then ``x * scale + (shift - mean * scale)`` rounds no worse than about
    ``CENTRED_RATIO`` units in the last place of the output, and the engines may
    skip the explicit ``x - mean`` (one operation per element fewer). Otherwise
    they subtract the mean first, exactly.
    """
    return bool(np.all(np.abs(mean) <= CENTRED_RATIO * spread))


@dataclass(frozen=True)
class Stats:
    """What a training forward leaves for the backward pass (per-channel, float64)."""

    mean: F64
    var: F64  # biased
    inv_std: F64  # 1 / sqrt(var + epsilon)
    centred: bool  # see is_centred
    centred_x: Optional[NDArray[np.float64]] = None  # x - mean, kept by an engine that has it at hand


def stats_from(mean: F64, var: F64, epsilon: float) -> Stats:
    """Stats of a batch whose mean and variance are already known."""
    inv_std = 1.0 / np.sqrt(var + epsilon)
    return Stats(mean, var, inv_std, is_centred(mean, 1.0 / inv_std))


class GradSums(NamedTuple):
    """Per channel ``sum(dout)`` (= dbeta) and ``sum(dout * (x - mean))`` over the batch."""

    sum_dout: F64
    sum_dout_xmu: F64


def input_grad_coefficients(stats: Stats, gamma: F64, sums: GradSums, count: int) -> tuple[F64, F64, F64]:
    """``scale, slope, offset`` with ``dx = scale * (dout + slope * (x - mean) + offset)``.

    This is the closed form
    ``dx = gamma * inv_std / n * (n * dout - sum(dout) - x_std * sum(dout * x_std))``
    rearranged, with ``slope = -inv_std**2 * sum(dout * (x - mean)) / n`` and
    ``offset = -sum(dout) / n``.
    """
    inv_std = stats.inv_std
    return gamma * inv_std, -(inv_std**2) * sums.sum_dout_xmu / count, -sums.sum_dout / count
