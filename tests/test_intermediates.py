"""The seed's intermediates (x_mu, x_std, std, mean, var) against a hand computation.

The reference works channel by channel on plain slices (``x[:, c]``), so a
per-channel vector broadcast along the wrong axis cannot agree with it. 4-D
inputs come with W != C (a wrong axis raises or mixes channels) and W == C (a
wrong axis broadcasts silently and gives wrong values).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnlit import BatchNormalization

EPS = 1e-5

SHAPES = {
    "2d": (7, 3),
    "4d-w-ne-c": (2, 3, 4, 5),
    "4d-w-eq-c": (2, 3, 2, 3),
    "4d-h-eq-c": (3, 4, 4, 2),
}


def by_hand(x: np.ndarray) -> dict[str, np.ndarray]:
    """Each channel's values as a flat list, and its statistics, in plain Python."""
    channels = x.shape[1]
    x_mu, x_std = np.empty(x.shape), np.empty(x.shape)
    mean, var, std = [], [], []
    for c in range(channels):
        values = [float(v) for v in x[:, c].ravel()]
        m = math.fsum(values) / len(values)
        v = math.fsum((u - m) ** 2 for u in values) / len(values)
        s = math.sqrt(v + EPS)
        x_mu[:, c] = x[:, c] - m
        x_std[:, c] = (x[:, c] - m) / s
        mean.append(m)
        var.append(v)
        std.append(s)
    return {"x_mu": x_mu, "x_std": x_std, "mean": np.array(mean), "var": np.array(var), "std": np.array(std)}


def distinct_channels(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Channels with clearly different means and spreads, so that mixing two shows."""
    channels = shape[1]
    per_channel = [1, channels] + [1] * (len(shape) - 2)
    location = np.arange(1, channels + 1).reshape(per_channel) * 10.0
    spread = np.arange(1, channels + 1).reshape(per_channel) * 0.5
    return location + spread * rng.standard_normal(shape)


@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_intermediates_match_a_per_channel_hand_computation(shape, staged, rng) -> None:
    x = distinct_channels(shape, rng)
    bn = BatchNormalization(rng.normal(size=shape[1]), rng.normal(size=shape[1]), epsilon=EPS, staged=staged)
    bn.forward(x)
    want = by_hand(x)
    assert bn.x_mu.shape == x.shape and bn.x_std.shape == x.shape
    np.testing.assert_allclose(bn.x_mu, want["x_mu"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.x_std, want["x_std"], rtol=1e-12, atol=1e-12)
    for name in ("mean", "var", "std"):
        value = getattr(bn, name)
        assert value.shape == (shape[1],), name
        np.testing.assert_allclose(value.ravel(), want[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
def test_intermediates_keep_float32(staged, rng) -> None:
    x = distinct_channels((4, 3, 2, 3), rng).astype(np.float32)
    bn = BatchNormalization(np.ones(3), np.zeros(3), epsilon=EPS, staged=staged)
    bn.forward(x)
    want = by_hand(x.astype(np.float64))
    # The staged graph computes its nodes in float64 (issue 12: as accurate as the default path).
    dtype = np.float64 if staged else np.float32
    assert bn.x_mu.dtype == dtype and bn.x_std.dtype == dtype
    np.testing.assert_allclose(bn.x_mu, want["x_mu"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.x_std, want["x_std"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
def test_intermediates_are_none_before_training_and_kept_by_prediction(staged, rng) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), epsilon=EPS, staged=staged,
                            moving_mean=np.zeros(3), moving_var=np.ones(3))
    bn.forward(rng.normal(size=(5, 3)), train_flg=False)
    for name in ("x_mu", "x_std", "std", "mean", "var", "forward_steps", "backward_steps", "batch_size",
                 "dgamma", "dbeta"):
        assert getattr(bn, name) is None, name
    x = distinct_channels((6, 3), rng)
    bn.forward(x)
    bn.forward(rng.normal(size=(5, 3)), train_flg=False)  # prediction leaves the last training forward
    np.testing.assert_allclose(bn.x_std, by_hand(x)["x_std"], rtol=1e-12, atol=1e-12)
    assert (bn.forward_steps is not None) == staged


def test_every_staged_node_by_hand_and_in_the_inputs_dtype(rng) -> None:
    """forward_steps and backward_steps hold float32 data's nodes in float64 (computed as
    accurately as the default path, issue 12) while the layer's output and dx stay float32,
    and hold what their names say (the a1..a9 rules are checked in test_gradients.py)."""
    x = distinct_channels((4, 3, 2, 3), rng).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    bn = BatchNormalization(np.array([0.5, 1.0, 2.0]), np.array([1.0, 0.0, -1.0]), epsilon=EPS, staged=True)
    out = bn.forward(x)
    bn.backward(dout)
    f, b = bn.forward_steps, bn.backward_steps
    assert out.dtype == np.float32
    for name in ("mu", "x_mu", "x_mu_sq", "var", "std", "std_inv", "x_std"):
        assert getattr(f, name).dtype == np.float64, name
    for name in ("a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"):
        assert getattr(b, name).dtype == np.float64, name
    want = by_hand(x.astype(np.float64))
    np.testing.assert_array_equal(f.x, x)
    np.testing.assert_array_equal(b.dout, dout)
    assert f.epsilon == EPS and f.n == 4 * 2 * 3
    np.testing.assert_array_equal(f.out.astype(np.float32), out)  # the float64 node, rounded once
    np.testing.assert_allclose(f.x_mu_sq, want["x_mu"] ** 2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(f.mu.ravel(), want["mean"], rtol=1e-6)
    np.testing.assert_allclose(f.var.ravel(), want["var"], rtol=1e-5)
    np.testing.assert_allclose(f.std.ravel(), want["std"], rtol=1e-5)
    np.testing.assert_allclose(f.std_inv.ravel(), 1 / want["std"], rtol=1e-5)
    np.testing.assert_array_equal(f.gamma.ravel(), [0.5, 1.0, 2.0])
    assert f.mu.shape == f.var.shape == f.std.shape == f.std_inv.shape == f.gamma.shape == (1, 3, 1, 1)
    assert b.dbeta.shape == b.dgamma.shape == (3,)
    np.testing.assert_allclose(b.dbeta, dout.sum(axis=(0, 2, 3)), rtol=1e-5)
