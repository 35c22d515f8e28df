"""The contract every engine keeps: four halves, and the whole steps made of them."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.typing import NDArray

from ..stats import GradSums, Moments, Stats, input_grad_coefficients, stats_from

F64 = NDArray[np.float64]
Array = NDArray[np.floating]


class Engine(ABC):
    """Compute kernels of batch normalization on ``(N, C, S)`` views of the data.

    Channels are on axis 1; a channel's statistics run over axes 0 and 2
    (``S = H * W`` for 4-D input, ``S = 1`` for 2-D input). Inputs come
    validated: C-contiguous float32 or float64 arrays, per-channel vectors in
    float64, outputs preallocated. An engine implements the four halves; the
    whole steps the layer calls are made of them, and an engine may replace a
    whole step with a fused one that gives the same result.
    """

    #: The name ``BatchNormalization(engine=...)`` and ``BNLIT_ENGINE`` use.
    name: str = ""

    # ------------------------------------------------------------- the halves
    @abstractmethod
    def moments(self, x3: Array) -> Moments:
        """Per-channel count, mean and biased variance of ``x3``."""

    @abstractmethod
    def normalize(self, x3: Array, mean: F64, scale: F64, shift: F64, out3: Array, centred: bool) -> None:
        """``out3 = (x3 - mean) * scale + shift``, per channel."""

    @abstractmethod
    def grad_sums(self, x3: Array, dout3: Array, mean: F64, centred: bool) -> GradSums:
        """Per channel ``sum(dout3)`` and ``sum(dout3 * (x3 - mean))``."""

    @abstractmethod
    def input_grad(
        self, x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array, centred: bool
    ) -> None:
        """``out3 = scale * (dout3 + slope * (x3 - mean) + offset)``, per channel."""

    # ------------------------------------------------------ the whole steps
    def train_forward(self, x3: Array, gamma: F64, beta: F64, epsilon: float, out3: Array) -> Stats:
        """Normalise ``x3`` with its own statistics into ``out3``; return the statistics."""
        m = self.moments(x3)
        stats = stats_from(m.mean, m.var, epsilon)
        self.normalize_with(x3, stats, gamma, beta, out3)
        return stats

    def normalize_with(self, x3: Array, stats: Stats, gamma: F64, beta: F64, out3: Array) -> None:
        """Normalise ``x3`` with given statistics (the batch's, merged ones, or moving ones)."""
        self.normalize(x3, stats.mean, gamma * stats.inv_std, beta, out3, stats.centred)

    def backward(self, x3: Array, dout3: Array, stats: Stats, gamma: F64, out3: Array) -> GradSums:
        """Input gradient into ``out3`` by the closed form; return the per-channel sums."""
        sums = self.grad_sums(x3, dout3, stats.mean, stats.centred)
        self.input_grad_from(x3, dout3, stats, gamma, sums, out3)
        return sums

    def input_grad_from(
        self, x3: Array, dout3: Array, stats: Stats, gamma: F64, sums: GradSums, out3: Array
    ) -> None:
        """Input gradient from given per-channel sums over ``x3``."""
        scale, slope, offset = input_grad_coefficients(stats, gamma, sums, x3.shape[0] * x3.shape[2])
        self.input_grad(x3, dout3, stats.mean, scale, slope, offset, out3, stats.centred)
