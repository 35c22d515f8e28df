"""The whole steps the Engine base class composes from an engine's four halves.

The NumPy engine replaces every whole step with its own, and the numba engine (which
keeps them) is optional: an engine that implements only the four halves, here by
borrowing the NumPy engine's, runs the base class's train_forward and backward,
checked against formulas written out with NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnlit.engines._base import Engine
from bnlit.engines.numpy import NumpyEngine


class HalvesOnly(Engine):
    """The four halves and nothing else."""

    name = "halves"
    _numpy = NumpyEngine()

    def moments(self, x3):
        return self._numpy.moments(x3)

    def normalize(self, x3, mean, scale, shift, out3, centred):
        self._numpy.normalize(x3, mean, scale, shift, out3, centred)

    def grad_sums(self, x3, dout3, mean, centred):
        return self._numpy.grad_sums(x3, dout3, mean, centred)

    def input_grad(self, x3, dout3, mean, scale, slope, offset, out3, centred):
        self._numpy.input_grad(x3, dout3, mean, scale, slope, offset, out3, centred)


def by_hand(x3, dout3, gamma, beta, eps, count=None):
    n = count or x3.shape[0] * x3.shape[2]
    mean = x3.mean(axis=(0, 2))
    var = x3.var(axis=(0, 2))
    std = np.sqrt(var + eps)
    x_hat = (x3 - mean[:, None]) / std[:, None]
    out = gamma[:, None] * x_hat + beta[:, None]
    sum_dout = dout3.sum(axis=(0, 2))
    sum_dout_xmu = (dout3 * (x3 - mean[:, None])).sum(axis=(0, 2))
    dx = (gamma / std / n)[:, None] * (n * dout3 - sum_dout[:, None] - x_hat * (sum_dout_xmu / std)[:, None])
    return mean, var, std, out, sum_dout, sum_dout_xmu, dx


@pytest.mark.parametrize("shape", [(7, 3, 1), (4, 2, 6)])
def test_whole_steps_from_the_halves(shape, rng) -> None:
    x3 = rng.normal(size=shape) * 2 + 3
    dout3 = rng.normal(size=shape)
    gamma, beta, eps = rng.normal(size=shape[1]), rng.normal(size=shape[1]), 1e-5
    mean, var, std, out, s1, s2, dx = by_hand(x3, dout3, gamma, beta, eps)
    engine = HalvesOnly()

    got_out = np.empty_like(x3)
    stats = engine.train_forward(x3, gamma, beta, eps, got_out)
    np.testing.assert_allclose(got_out, out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-14)
    np.testing.assert_allclose(stats.var, var, rtol=1e-13)
    np.testing.assert_allclose(stats.inv_std, 1 / std, rtol=1e-14)

    got_dx = np.empty_like(x3)
    sums = engine.backward(x3, dout3, stats, gamma, got_dx)
    np.testing.assert_allclose(sums.sum_dout, s1, rtol=1e-13)
    np.testing.assert_allclose(sums.sum_dout_xmu, s2, rtol=1e-13)
    np.testing.assert_allclose(got_dx, dx, rtol=1e-12, atol=1e-12)
