"""The seed's two example cells, against values worked out by hand.

Hand work, per channel with values x_1..x_n, mean m and biased variance v:
training output (x - m) / sqrt(v + eps); after one step the moving statistics
are 0.1 m and 0.1 v, so prediction gives (x - 0.1 m) / sqrt(0.1 v + eps).
The seed's dout is x / 10, for which the closed form reduces to
dx = (x - m) / (10 s) * eps / s**2 with s = sqrt(v + eps) (see the book's page
on the seed's examples), dgamma = n v / (10 s) and dbeta = sum(x) / 10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnlit import BatchNormalization

EPS = 1e-8

X_2D = np.array([[1, 2, 3], [2, 3, 2], [3, 4, 4], [4, 1, 2]])
# Column means and biased variances, worked out by hand.
MEAN_2D = [10 / 4, 10 / 4, 11 / 4]
VAR_2D = [5 / 4, 5 / 4, 11 / 16]  # (2.25+0.25+0.25+2.25)/4, same, (1/16+9/16+25/16+9/16)/4

# 4-D: x = arange(108).reshape(2, 6, 3, 3). Channel c holds 9c + k and 54 + 9c + k,
# k = 0..8: mean 9c + 31, variance mean((k-4)^2) + 27^2 = 20/3 + 729.
MEAN_4D = [9 * c + 31 for c in range(6)]
VAR_4D = [20 / 3 + 729] * 6


def expected(x: np.ndarray, mean: list[float], var: list[float], axis: int) -> dict:
    """Pure-Python evaluation of the hand formulas above, value by value."""
    shape = [1] * x.ndim
    shape[axis] = -1
    m = np.array(mean).reshape(shape)
    v = np.array(var).reshape(shape)
    s = np.vectorize(math.sqrt)(v + EPS)
    n = x.size // len(mean)
    xf = x.astype(float)
    return {
        "train": (xf - m) / s,
        "predict": (xf - 0.1 * m) / np.vectorize(math.sqrt)(0.1 * v + EPS),
        "dx": (xf - m) / (10 * s) * EPS / s**2,
        "dgamma": (n * v / (10 * s)).reshape(-1),
        "dbeta": xf.sum(axis=tuple(i for i in range(x.ndim) if i != axis)) / 10,
    }


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
def test_seed_2d_cell(staged: bool) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), staged=staged)
    want = expected(X_2D, MEAN_2D, VAR_2D, axis=1)
    np.testing.assert_allclose(bn.forward(X_2D, train_flg=True), want["train"], rtol=1e-12)
    np.testing.assert_allclose(bn.forward(X_2D, train_flg=False), want["predict"], rtol=1e-12)
    dout = np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.2], [0.3, 0.4, 0.4], [0.4, 0.1, 0.2]])
    dx = bn.backward(dout)
    # dx is ~1e-9: an absolute tolerance far below it (cancellation leaves ~1e-16).
    np.testing.assert_allclose(dx, want["dx"], rtol=0, atol=1e-15)
    assert np.max(np.abs(dx)) > 1e-10
    np.testing.assert_allclose(bn.dgamma, want["dgamma"], rtol=1e-12)
    np.testing.assert_allclose(bn.dbeta, want["dbeta"], rtol=1e-12)
    # Literal values from the hand work: 3/sqrt(5), 1/sqrt(5).
    assert bn.forward(X_2D)[0, 0] == pytest.approx(-3 / math.sqrt(5), rel=1e-8)
    assert bn.batch_size == 4


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
def test_seed_4d_cell(staged: bool) -> None:
    n, c, h, w = 2, 6, 3, 3
    bn = BatchNormalization(np.ones(c), np.zeros(c), staged=staged)
    x = np.arange(n * c * h * w).reshape(n, c, h, w)
    want = expected(x, MEAN_4D, VAR_4D, axis=1)
    out = bn.forward(x, train_flg=True)
    assert out.shape == (n, c, h, w) and out.dtype == np.float64
    np.testing.assert_allclose(out, want["train"], rtol=1e-12)
    np.testing.assert_allclose(bn.forward(x, train_flg=False), want["predict"], rtol=1e-12)
    dx = bn.backward(x / 10)
    np.testing.assert_allclose(dx, want["dx"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(bn.dgamma, want["dgamma"], rtol=1e-12)
    np.testing.assert_allclose(bn.dbeta, want["dbeta"], rtol=1e-12)
    assert bn.batch_size == n * h * w
    np.testing.assert_allclose(bn.moving_mean, 0.1 * np.array(MEAN_4D), rtol=1e-14)
    np.testing.assert_allclose(bn.moving_var, 0.1 * np.array(VAR_4D), rtol=1e-14)
