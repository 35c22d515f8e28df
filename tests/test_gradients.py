"""Gradient checks by central differences, and the two backward paths agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from bnlit import BatchNormalization

from _checks import numerical_gradient, relative_error

SHAPES = [(5, 4), (3, 2, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "4d"])
@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
def test_gradients_match_central_differences(shape, staged, rng) -> None:
    channels = shape[1]
    x = rng.normal(1.5, 2.0, size=shape)
    gamma = rng.normal(1.0, 0.5, size=channels)
    beta = rng.normal(0.0, 0.5, size=channels)
    dout = rng.normal(size=shape)  # random and non-constant: all-ones gives dx = 0
    bn = BatchNormalization(gamma, beta, epsilon=1e-5, staged=staged)

    def loss() -> float:
        return float(np.sum(bn.forward(x, train_flg=True) * dout))

    bn.forward(x)
    dx = bn.backward(dout)
    errors = {
        "dx": relative_error(dx, numerical_gradient(loss, x)),
        "dgamma": relative_error(bn.dgamma, numerical_gradient(loss, gamma)),
        "dbeta": relative_error(bn.dbeta, numerical_gradient(loss, beta)),
    }
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 5, 2), (64, 1)], ids=["2d", "4d", "one-channel"])
def test_staged_and_closed_form_agree(shape, rng) -> None:
    x = rng.normal(-3.0, 4.0, size=shape)
    dout = rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    fast = BatchNormalization(gamma, beta)
    staged = BatchNormalization(gamma, beta, staged=True)
    np.testing.assert_allclose(fast.forward(x), staged.forward(x), rtol=0, atol=1e-12)
    dx_fast, dx_staged = fast.backward(dout), staged.backward(dout)
    scale = np.max(np.abs(dx_staged))
    assert np.max(np.abs(dx_fast - dx_staged)) <= 1e-12 * scale
    np.testing.assert_allclose(fast.dgamma, staged.dgamma, rtol=1e-12)
    np.testing.assert_allclose(fast.dbeta, staged.dbeta, rtol=1e-12)
    np.testing.assert_allclose(fast.moving_mean, staged.moving_mean, rtol=1e-12)
    np.testing.assert_allclose(fast.moving_var, staged.moving_var, rtol=1e-12)


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
def test_4d_equals_2d_on_the_nhwc_reshape(staged, rng) -> None:
    n, c, h, w = 3, 4, 5, 2
    x = rng.normal(size=(n, c, h, w))
    dout = rng.normal(size=(n, c, h, w))
    gamma, beta = rng.normal(size=c), rng.normal(size=c)

    def to_2d(a: np.ndarray) -> np.ndarray:  # the seed's NHWC reshape
        return a.transpose(0, 2, 3, 1).reshape(n * h * w, c)

    def to_4d(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    bn4 = BatchNormalization(gamma, beta, staged=staged)
    bn2 = BatchNormalization(gamma, beta, staged=staged)
    np.testing.assert_allclose(bn4.forward(x), to_4d(bn2.forward(to_2d(x))), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn4.backward(dout), to_4d(bn2.backward(to_2d(dout))), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(bn4.dgamma, bn2.dgamma, rtol=1e-12)
    np.testing.assert_allclose(bn4.forward(x, False), to_4d(bn2.forward(to_2d(x), False)), rtol=1e-12)
    assert bn4.batch_size == bn2.batch_size == n * h * w


def test_staged_steps_follow_the_seed_names(rng) -> None:
    """The a1..a9 aliases are the named steps, and each obeys its local rule."""
    x = rng.normal(size=(6, 3))
    dout = rng.normal(size=(6, 3))
    gamma = rng.normal(size=3)
    bn = BatchNormalization(gamma, np.zeros(3), staged=True)
    bn.forward(x)
    bn.backward(dout)
    f, b = bn.forward_steps, bn.backward_steps
    assert f is not None and b is not None
    n = 6
    np.testing.assert_allclose(b.a1, gamma * dout)
    np.testing.assert_allclose(b.a2, b.a1 / np.sqrt(x.var(axis=0) + 1e-8))
    np.testing.assert_allclose(b.a3, (b.a1 * (x - x.mean(axis=0))).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(b.a4, -b.a3 / (x.var(axis=0) + 1e-8))
    np.testing.assert_allclose(b.a5, b.a4 / (2 * np.sqrt(x.var(axis=0) + 1e-8)))
    np.testing.assert_allclose(b.a6, b.a5 / n)
    np.testing.assert_allclose(b.a7, 2 * (x - x.mean(axis=0)) * b.a6)
    np.testing.assert_allclose(b.a8, -(b.a2 + b.a7).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(b.a9, b.a8 / n)
    np.testing.assert_allclose(b.dx, b.a2 + b.a7 + b.a9)
    np.testing.assert_allclose(f.x_mu, x - x.mean(axis=0))
    np.testing.assert_allclose(bn.x_std, (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-8))
    np.testing.assert_allclose(bn.std, np.sqrt(x.var(axis=0) + 1e-8))
