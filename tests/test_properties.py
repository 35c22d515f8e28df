"""Properties that hold for every input (hypothesis), and float32 numerics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnlit import BatchNormalization
from bnlit.engines import numpy as _kernels

finite = st.floats(-100, 100, allow_nan=False, width=64)


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D or 4-D batch whose channels are far from constant, with gamma and beta."""
    four_d = draw(st.booleans())
    shape = (
        draw(st.tuples(st.integers(2, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
        if four_d
        else draw(st.tuples(st.integers(2, 8), st.integers(1, 4)))
    )
    x = draw(arrays(np.float64, shape, elements=finite))
    # Spread every channel so its variance is well above epsilon.
    axes = (0, 2, 3) if four_d else (0,)
    spread = np.zeros(shape)
    spread[0, :, ...] = -300.0  # elements lie in [-100, 100]: the spread survives
    spread[1, :, ...] = 300.0
    x = x + spread
    channels = shape[1]
    gamma = draw(arrays(np.float64, channels, elements=st.floats(0.1, 5) | st.floats(-5, -0.1)))
    beta = draw(arrays(np.float64, channels, elements=finite))
    assert np.all(x.var(axis=axes) > 1)
    return x, gamma, beta


def channel_axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) if x.ndim == 2 else (0, 2, 3)


@given(batches())
@settings(max_examples=60, deadline=None)
def test_training_output_has_mean_beta_and_std_abs_gamma(batch) -> None:
    x, gamma, beta = batch
    out = BatchNormalization(gamma, beta).forward(x)
    axes = channel_axes(x)
    np.testing.assert_allclose(out.mean(axis=axes), beta, atol=1e-9)
    np.testing.assert_allclose(out.std(axis=axes), np.abs(gamma), rtol=1e-6)


@given(batches(), st.floats(-1e3, 1e3), st.floats(0.01, 100))
@settings(max_examples=60, deadline=None)
def test_output_invariant_to_shift_and_positive_scale(batch, shift, scale) -> None:
    x, gamma, beta = batch
    shape = [1] * x.ndim
    shape[1] = -1
    per_channel_shift = shift * np.arange(1, x.shape[1] + 1).reshape(shape)
    reference = BatchNormalization(gamma, beta).forward(x)
    moved = BatchNormalization(gamma, beta, epsilon=1e-12).forward((x + per_channel_shift) * scale)
    np.testing.assert_allclose(moved, reference, atol=1e-6 * np.max(np.abs(gamma)) + 1e-9)


@given(batches(), st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_input_gradient_is_orthogonal_to_ones_and_x_std(batch, seed) -> None:
    """sum(dx) = 0, and sum(dx * x_std) = 0 up to the epsilon residue
    gamma / std * eps / (var + eps) * sum(dout * x_std), worked out by hand."""
    x, gamma, beta = batch
    dout = np.random.default_rng(seed).normal(size=x.shape)
    eps = 1e-8
    bn = BatchNormalization(gamma, beta, epsilon=eps)
    bn.forward(x)
    dx = bn.backward(dout)
    axes = channel_axes(x)
    x_std = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    var = x.var(axis=axes)
    std = np.sqrt(var + eps)
    residue = gamma / std * eps / (var + eps) * (dout * x_std).sum(axis=axes)
    # Rounding is relative to the terms the gradient is built from.
    size = np.abs(gamma) / std * np.abs(dout).sum(axis=axes) * (1 + np.abs(x_std).max())
    assert np.all(np.abs(dx.sum(axis=axes)) <= 1e-12 * size)
    assert np.all(np.abs((dx * x_std).sum(axis=axes) - residue) <= 1e-12 * size)


@given(
    st.lists(arrays(np.float64, (5, 3), elements=finite), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
)
@settings(max_examples=60, deadline=None)
def test_moving_average_recurrence_after_k_steps(steps, rho) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), rho=rho)
    for x in steps:
        bn.forward(x)
    # Unrolled from zero: moving = sum_i (1 - rho) rho^(k-1-i) stat_i.
    k = len(steps)
    weights = [(1 - rho) * rho ** (k - 1 - i) for i in range(k)]
    want_mean = sum(w * x.mean(axis=0) for w, x in zip(weights, steps))
    want_var = sum(w * x.var(axis=0) for w, x in zip(weights, steps))
    np.testing.assert_allclose(bn.moving_mean, want_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bn.moving_var, want_var, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(32768, 3), (64, 3, 32, 32)], ids=["2d", "4d"])
def test_float32_large_mean_small_std(shape, rng, monkeypatch, bnlit_engine) -> None:
    """mean 1e4, std 0.1: E[x^2] - E[x]^2 would lose every digit in float32.

    The inputs are larger than the small-input threshold, so the streaming kernels
    run (the spies below record it), not the plain float64 path.
    """
    ran = []
    for name in ("channel_stats", "normalize", "backward_sums", "input_grad"):
        kernel = getattr(_kernels, name)
        monkeypatch.setattr(_kernels, name, lambda *a, _k=kernel, _n=name, **kw: ran.append(_n) or _k(*a, **kw))
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    assert x.nbytes > _kernels.SMALL_BYTES
    dout = rng.standard_normal(shape).astype(np.float32)
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    out = bn.forward(x)
    dx = bn.backward(dout)
    if bnlit_engine == "numpy":  # the NumPy engine's streaming kernels, not its plain path
        assert ran == ["channel_stats", "normalize", "backward_sums", "input_grad"]
    axes = channel_axes(x)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out.astype(np.float64).var(axis=axes), 1.0, rtol=1e-4)
    # Against float64 on the same (float32-rounded) data.
    bn64 = BatchNormalization(np.ones(3), np.zeros(3))
    out64 = bn64.forward(x.astype(np.float64))
    assert np.max(np.abs(out - out64)) < 1e-4
    np.testing.assert_allclose(bn.var, x.astype(np.float64).var(axis=axes), rtol=1e-5)
    dx64 = bn64.backward(dout.astype(np.float64))
    assert np.max(np.abs(dx - dx64)) <= 1e-4 * np.max(np.abs(dx64))


def test_float32_stays_float32_and_integers_become_float64(rng) -> None:
    x32 = rng.normal(size=(8, 3)).astype(np.float32)
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    assert bn.forward(x32).dtype == np.float32
    assert bn.backward(rng.normal(size=(8, 3))).dtype == np.float32
    assert bn.dgamma.dtype == np.float32
    assert bn.forward(np.arange(24).reshape(8, 3)).dtype == np.float64
    assert bn.forward(x32.astype(np.float16)).dtype == np.float32


def test_inputs_are_not_modified_and_outputs_are_fresh(rng) -> None:
    x = rng.normal(size=(6, 4))
    dout = rng.normal(size=(6, 4))
    x_copy, dout_copy = x.copy(), dout.copy()
    bn = BatchNormalization(np.ones(4), np.zeros(4))
    y1 = bn.forward(x)
    dx1 = bn.backward(dout)
    y2 = bn.forward(x)
    dx2 = bn.backward(dout)
    assert np.array_equal(x, x_copy) and np.array_equal(dout, dout_copy)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    assert not np.shares_memory(y1, x) and not np.shares_memory(dx1, dout)


def test_out_buffers_are_used_and_checked(rng) -> None:
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    want_y = BatchNormalization(np.ones(3), np.zeros(3)).forward(x)
    y = np.empty_like(x)
    assert bn.forward(x, out=y) is y
    np.testing.assert_array_equal(y, want_y)
    dx = np.full_like(x, np.nan)
    assert bn.backward(dout, out=dx) is dx
    want_dx = BatchNormalization(np.ones(3), np.zeros(3))
    want_dx.forward(x)
    np.testing.assert_array_equal(dx, want_dx.backward(dout))
    with pytest.raises(ValueError, match="dtype float32"):
        bn.forward(x, out=np.empty(x.shape))
    with pytest.raises(ValueError, match="share memory"):
        bn.forward(x, out=x)


@given(st.integers(1, 30), st.floats(0.05, 0.99), st.booleans())
@settings(max_examples=40, deadline=None)
def test_bias_correction_recovers_a_constant_statistic(steps, rho, start_at_ones) -> None:
    """With the same batch every step, the corrected moving statistics equal its statistics."""
    x = np.array([[1.0, -2.0], [3.0, 0.0], [2.0, 5.0]])
    start = {"moving_mean": np.ones(2), "moving_var": np.ones(2)} if start_at_ones else {}
    bn = BatchNormalization(np.ones(2), np.zeros(2), rho=rho, bias_correction=True, **start)
    for _ in range(steps):
        bn.forward(x)
    mean, var = bn.corrected_moving_statistics()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-9)
    # Prediction on the batch itself then equals training on it.
    np.testing.assert_allclose(bn.forward(x, train_flg=False), bn.forward(x, train_flg=True), rtol=1e-9, atol=1e-12)


def test_unbiased_moving_var_uses_n_over_n_minus_1() -> None:
    x = np.array([[1.0], [2.0], [4.0], [7.0]])  # biased variance 5.25, unbiased 7.0
    bn = BatchNormalization(np.ones(1), np.zeros(1), rho=0.0, unbiased_moving_var=True)
    bn.forward(x)
    np.testing.assert_allclose(bn.moving_var, [7.0])
    np.testing.assert_allclose(bn.var, [5.25])  # the batch itself is normalised with the biased one
