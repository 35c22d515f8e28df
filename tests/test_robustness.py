"""Issue 12, one test per case: every call gives the right result or a clear error,
and an error leaves the layer's state byte-for-byte as it was.

Numerical results are judged against an exact reference (tests/_state.py) on
every path of the default engine (plain, streaming, streaming with rows split by
channels, threads) and on the staged graph.
"""

from __future__ import annotations

import decimal
import fractions
import os
import threading

import numpy as np
import pytest

import bnlit
from bnlit import BatchNormalization, LayerStateError, _threads
from bnlit.engines import numpy as kernels

from _state import (
    assert_close,
    assert_same_state,
    channel_max,
    check_against_reference,
    reference_prediction,
    reference_training,
    snapshot,
    tolerance,
)

PATHS = {
    "plain": {},
    "streaming": {"SMALL_BYTES": 0, "BLOCK_BYTES": 4096},
    "split-rows": {"SMALL_BYTES": 0, "BLOCK_BYTES": 64},
    "3-threads": {"SMALL_BYTES": 0, "BLOCK_BYTES": 512, "threads": 3},
    "staged": {"staged": True},
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch) -> dict:
    """Layer keywords for one path; the engine's size thresholds are lowered so that
    small test inputs take the streaming paths."""
    settings = dict(PATHS[request.param])
    threads = settings.pop("threads", 1)
    staged = settings.pop("staged", False)
    for name, value in settings.items():
        monkeypatch.setattr(kernels, name, value)
    before = _threads.get_num_threads()
    _threads.set_num_threads(threads)
    yield {"staged": staged}
    _threads.set_num_threads(before)


def trained(staged: bool = False, channels: int = 3) -> BatchNormalization:
    bn = BatchNormalization(np.ones(channels), np.zeros(channels), staged=staged)
    bn.forward(np.arange(4.0 * channels).reshape(4, channels) ** 1.5)
    return bn


def refused(bn: BatchNormalization, call, exc: type, *words: str) -> None:
    """``call()`` raises ``exc`` naming ``words``, and ``bn``'s state is unchanged."""
    before = snapshot(bn)
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert_same_state(before, snapshot(bn))


def check_training(x, dout, gamma, beta, epsilon=1e-8, **layer) -> None:
    """Training forward and backward of a fresh layer against the exact reference."""
    ref = reference_training(x, gamma, beta, epsilon, dout)
    bn = BatchNormalization(gamma, beta, epsilon=epsilon, **layer)
    out = bn.forward(x)
    dx = bn.backward(dout)
    assert out.dtype == dx.dtype == bn.dgamma.dtype == x.dtype
    check_against_reference(ref, x, gamma, beta, out, dout, dx, bn.dgamma, bn.dbeta)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-9
    np.testing.assert_allclose(bn.var, ref.var, rtol=rtol, err_msg="var")
    np.testing.assert_allclose(bn.mean, ref.mean, rtol=rtol, atol=rtol * np.sqrt(ref.var).max(), err_msg="mean")


SHAPE = (40, 3, 4, 4)
GAMMA, BETA = np.array([0.5, 1.0, -2.0]), np.array([0.0, 1.0, -1.0])


# ----------------------------------------------------------------------------------------------
# Silently wrong results
# ----------------------------------------------------------------------------------------------
def test_prediction_out_overlapping_x_is_refused() -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(3), moving_var=np.ones(3))
    buf = np.arange(15.0).reshape(5, 3)
    refused(bn, lambda: bn.forward(buf[:-1], train_flg=False, out=buf[1:]), ValueError, "out", "share memory", "x")
    np.testing.assert_array_equal(buf, np.arange(15.0).reshape(5, 3))  # nothing written


KEPT = ["moving_mean", "moving_var", "gamma", "beta", "last input", "staged node"]


@pytest.mark.parametrize(
    "kept, train_flg",
    [(k, True) for k in KEPT] + [(k, False) for k in KEPT + ["dgamma"]],  # dgamma: no training-sized view
    ids=lambda v: {True: "training", False: "prediction"}.get(v, v) if isinstance(v, bool) else v,
)
def test_out_overlapping_anything_the_layer_keeps_is_refused(kept, train_flg) -> None:
    """Nothing the layer keeps may be written through ``out``. In prediction a batch of
    one row lets ``out`` view a per-channel vector; in training the vector is rebound
    to a view of a buffer that ``out`` then views."""
    bn = BatchNormalization(np.ones(3), np.zeros(3), staged=kept == "staged node")
    x = np.arange(6.0).reshape(2, 3) ** 2
    bn.forward(x)
    bn.backward(np.ones((2, 3)) * [[1.0], [-2.0]])
    if train_flg:
        data = np.ones((2, 3)) * [[1.0], [3.0]]
        if kept in ("last input", "staged node"):
            out = x if kept == "last input" else bn.forward_steps.x_mu
        else:
            out = np.empty((2, 3))
            out[0] = getattr(bn, kept)
            setattr(bn, kept, out[0])  # the setting is now a view of out's memory
    else:
        data = np.ones((1, 3))
        if kept in ("last input", "staged node"):
            out = (x if kept == "last input" else bn.forward_steps.x_mu)[:1]
        else:
            out = getattr(bn, kept).reshape(1, 3)
    before = out.copy()
    refused(bn, lambda: bn.forward(data, train_flg=train_flg, out=out), ValueError, "share memory", "keeps")
    np.testing.assert_array_equal(out, before)


def test_backward_out_overlapping_the_kept_input_or_dout_is_refused() -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    bn.forward(x)
    dout = np.linspace(-1, 1, 12).reshape(4, 3)
    refused(bn, lambda: bn.backward(dout, out=x), ValueError, "share memory", "last training input")
    refused(bn, lambda: bn.backward(dout, out=dout), ValueError, "share memory", "dout")


def test_out_next_to_the_input_without_overlap_is_accepted() -> None:
    """``x`` (3 columns of each 15-value row) and ``out`` (a run of row 0 right of them)
    lie within one address range but share no element: that is no overlap."""
    big = np.zeros((4, 15))
    big[:, :3] = np.arange(12.0).reshape(4, 3) ** 1.5
    x, out = big[:, :3], big[0, 3:15].reshape(4, 3)
    assert np.may_share_memory(x, out) and not np.shares_memory(x, out)
    want = BatchNormalization(np.ones(3), np.zeros(3)).forward(x.copy())
    assert BatchNormalization(np.ones(3), np.zeros(3)).forward(x, out=out) is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
    "location, spread",
    [(0.0, 1e18), (0.0, 1e19), (0.0, 1e37), (3e38, 1e31), (1e4, 1e-3)],
    ids=["spread-1e18", "spread-1e19", "spread-1e37", "mean-3e38", "mean-1e4-spread-1e-3"],
)
def test_float32_extreme_magnitudes_on_every_path(path, location, spread, rng) -> None:
    x = np.clip(location + spread * rng.standard_normal(SHAPE), -3.4e38, 3.4e38).astype(np.float32)
    dout = rng.standard_normal(SHAPE).astype(np.float32)
    check_training(x, dout, GAMMA, BETA, **path)


def test_float32_tiny_values_with_a_tiny_epsilon_on_every_path(path, rng) -> None:
    """Squares of 1e-30 underflow in float32; with epsilon 1e-70 the variance still counts."""
    x = (1e-30 * rng.standard_normal(SHAPE)).astype(np.float32)
    dout = (1e-30 * rng.standard_normal(SHAPE)).astype(np.float32)
    check_training(x, dout, GAMMA, BETA, epsilon=1e-70, **path)


def test_float32_backward_whose_terms_leave_float32_range_on_every_path(path, rng) -> None:
    """Found by the long stateful run: epsilon 1e-300 and a batch spread of 1e-17 make
    1 / std about 1e17, so dx's terms (1e47) leave float32 while dx itself is small;
    float32 rounding of the sums then overflowed to inf."""
    x = (1e-17 * rng.standard_normal(SHAPE)).astype(np.float32)
    dout = (1e30 * (1 + 1e-3 * rng.standard_normal(SHAPE))).astype(np.float32)
    check_training(x, dout, GAMMA, BETA, epsilon=1e-300, **path)


def test_float32_backward_whose_terms_leave_even_float64_precision_is_refused(path, rng) -> None:
    """Found by the long stateful run: a spread of 1e-32, epsilon 1e-300 and dout 1e27 put
    dx's terms at 1e59, so that even float64 rounding of them overflows float32: refused."""
    x = (1e-32 * rng.standard_normal(SHAPE)).astype(np.float32)
    bn = BatchNormalization(GAMMA, BETA, epsilon=1e-300, **path)
    bn.forward(x)
    refused(bn, lambda: bn.backward(np.full(SHAPE, 1e27, np.float32)), ValueError, "float32", "epsilon")


def test_float64_backward_whose_terms_overflow_is_refused(path, rng) -> None:
    """Found by the stateful hunt: epsilon 1e-300 with a spread of 1e-188 makes 1 / std 1e150;
    with dout 1e300, dx's terms (1e449) leave float64 though dx is 0: refused, not NaN."""
    bn = BatchNormalization(GAMMA, BETA, epsilon=1e-300, **path)
    bn.forward(1e-188 * rng.standard_normal(SHAPE))
    refused(bn, lambda: bn.backward(np.full(SHAPE, -1e300)), ValueError, "float64")


def test_float32_prediction_with_extreme_moving_statistics_on_every_path(path, rng) -> None:
    x = np.clip(3e38 * rng.standard_normal(SHAPE), -3.4e38, 3.4e38).astype(np.float32)
    mean, var = np.array([-3e38, 0.0, 3e38]), np.full(3, 1e76)
    bn = BatchNormalization(GAMMA, BETA, moving_mean=mean, moving_var=var, **path)
    out = bn.forward(x, train_flg=False)
    want = reference_prediction(x, GAMMA, BETA, mean, var, bn.epsilon)
    assert out.dtype == np.float32
    size = np.abs(GAMMA) * (channel_max(x) + np.abs(mean)) / np.sqrt(var) + np.abs(BETA)
    assert_close(out, want, tolerance(np.dtype(np.float32), size), "prediction")


def test_float64_constant_channel_near_the_largest_float(path) -> None:
    """The sum overflows though the mean does not: the mean is 1.5e308 and the output beta."""
    x = np.full(SHAPE, 1.5e308)
    bn = BatchNormalization(GAMMA, BETA, **path)
    out = bn.forward(x)
    np.testing.assert_array_equal(bn.mean, 1.5e308)
    np.testing.assert_array_equal(bn.var, 0.0)
    np.testing.assert_array_equal(out, np.broadcast_to(BETA.reshape(1, 3, 1, 1), SHAPE))
    np.testing.assert_array_equal(bn.backward(np.ones(SHAPE)), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_data_on_every_path(path, dtype, rng) -> None:
    tiny = float(np.finfo(dtype).smallest_subnormal)
    x = (tiny * rng.integers(0, 1000, size=SHAPE)).astype(dtype)
    x[:, 0] = 100 * tiny  # a constant channel
    check_training(x, rng.standard_normal(SHAPE).astype(dtype), GAMMA, BETA, **path)


def test_float64_spread_within_range_on_every_path(path, rng) -> None:
    x = 1e150 * rng.standard_normal(SHAPE)
    check_training(x, rng.standard_normal(SHAPE), GAMMA, BETA, **path)


@pytest.mark.parametrize("location, spread", [(1e109, 1e99), (1e90, 1e75)], ids=["ulp-1e-6", "ulp-1e-1"])
@pytest.mark.parametrize("block_bytes", [None, 64], ids=["rows", "split-rows"])
def test_float64_large_mean_small_spread_statistics_on_every_path(path, block_bytes, location, spread,
                                                                   monkeypatch, rng) -> None:
    """Found by the long stateful runs: blocks merged as absolute means put an ulp of the
    mean into the variance; and the staged var node, taken about a float64 mu, carried
    mu's rounding squared (20% off when the spread is a few ulps of the mean)."""
    if block_bytes is not None:
        monkeypatch.setattr(kernels, "BLOCK_BYTES", block_bytes)
    x = location + spread * rng.standard_normal(SHAPE)
    bn = BatchNormalization(GAMMA, BETA, **path)
    bn.forward(x)
    ref = reference_training(x, GAMMA, BETA, bn.epsilon)
    np.testing.assert_allclose(bn.var, ref.var, rtol=1e-11)
    np.testing.assert_allclose(bn.mean, ref.mean, rtol=1e-15)


def test_float64_variance_too_large_is_refused(path, rng) -> None:
    bn = BatchNormalization(GAMMA, BETA, **path)
    bn.forward(rng.standard_normal(SHAPE))
    out = np.full(SHAPE, 7.0)
    refused(bn, lambda: bn.forward(1e160 * rng.standard_normal(SHAPE), out=out), ValueError,
            "too large for float64", "2**1000")


def test_float64_var_plus_epsilon_too_small_is_refused(path, rng) -> None:
    bn = BatchNormalization(GAMMA, BETA, epsilon=1e-310, **path)
    refused(bn, lambda: bn.forward(1e-160 * rng.standard_normal(SHAPE)), ValueError, "too small", "epsilon")


def test_float64_gradient_sums_that_overflow_are_refused(path, rng) -> None:
    bn = BatchNormalization(GAMMA, BETA, **path)
    bn.forward(1e150 * rng.standard_normal(SHAPE))
    refused(bn, lambda: bn.backward(1e300 * rng.standard_normal(SHAPE)), ValueError, "overflow float64", "dout")


def test_staged_node_that_underflows_is_refused_where_the_closed_form_computes(rng) -> None:
    """Spread 1e71 and dout 1e-225: the staged node grad_var (about 1e-369) underflows float64."""
    x = 1e71 * rng.standard_normal((6, 3))
    dout = 1e-225 * rng.standard_normal((6, 3))
    staged = BatchNormalization(GAMMA, BETA, staged=True)
    staged.forward(x)
    refused(staged, lambda: staged.backward(dout), ValueError, "grad_var", "underflows", "staged=False")
    check_training(x, dout, GAMMA, BETA)  # the closed form gets it right


def test_float64_prediction_far_from_a_huge_moving_mean(path) -> None:
    x = np.full(SHAPE, -1.5e308)
    bn = BatchNormalization(GAMMA, BETA, moving_mean=np.full(3, 1.5e308), moving_var=np.full(3, 1e300), **path)
    out = bn.forward(x, train_flg=False)
    want = reference_prediction(x, GAMMA, BETA, bn.moving_mean, bn.moving_var, bn.epsilon)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, rtol=1e-15)


def test_staged_float32_large_mean_small_spread_is_as_accurate_as_the_default(rng) -> None:
    """The issue's case: mean 1e4, spread 1e-3 was off by 13% relative in staged mode."""
    x = (1e4 + 1e-3 * rng.standard_normal((64, 4))).astype(np.float32)
    dout = rng.standard_normal((64, 4)).astype(np.float32)
    check_training(x, dout, np.ones(4), np.zeros(4), staged=True)


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize("shape", [(1000, 4), (16, 4, 9, 9)], ids=["2d", "4d"])
def test_constant_float32_data_at_1e8_gives_beta(staged, shape) -> None:
    x = np.full(shape, 1e8 + 8, dtype=np.float32)
    bn = BatchNormalization(np.ones(4), np.full(4, 0.5), staged=staged)
    np.testing.assert_array_equal(bn.forward(x), 0.5)


def test_staged_float32_spread_1e30_does_not_overflow(rng) -> None:
    x = (1e30 * rng.standard_normal((64, 3))).astype(np.float32)
    check_training(x, rng.standard_normal((64, 3)).astype(np.float32), GAMMA, BETA, staged=True)


# ----------------------------------------------------------------------------------------------
# Errors that change state, or the wrong error
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize("rho", ["0.5", decimal.Decimal("0.5"), True, None, [0.5]], ids=repr)
def test_rho_rebound_to_a_non_number_changes_nothing(rho, staged) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), staged=staged)
    bn.rho = rho
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    refused(bn, lambda: bn.forward(x), TypeError, "rho must be a real number")
    assert bn.moving_mean is None and bn.moving_var is None
    bn.rho = 0.9
    with pytest.raises(LayerStateError):  # still untrained: prediction refuses
        bn.forward(x, train_flg=False)


@pytest.mark.parametrize("shape", [(4, 3, 0, 2), (0, 3), (0, 3, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_in_prediction_gives_an_empty_result(shape, dtype) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(3), moving_var=np.ones(3))
    out = bn.forward(np.ones(shape, dtype=dtype), train_flg=False)
    assert out.shape == shape and out.dtype == dtype
    assert bn.forward(np.ones(shape, dtype=dtype), train_flg=False, out=np.empty(shape, dtype)).shape == shape


@pytest.mark.parametrize("shape", [(4, 3, 0, 2), (0, 3), (0, 3, 2, 2)])
def test_empty_batch_in_training_gets_the_layers_error(shape) -> None:
    bn = trained()
    refused(bn, lambda: bn.forward(np.ones(shape)), ValueError, "at least 2 values per channel", "got 0")


@pytest.mark.parametrize("train_flg", [True, False])
@pytest.mark.parametrize("shape", [(4, 0), (2, 0, 3, 3)])
def test_no_channels_gets_the_layers_error(shape, train_flg) -> None:
    bn = trained()
    refused(bn, lambda: bn.forward(np.ones(shape), train_flg=train_flg), ValueError, "at least one channel")


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"rho": "0.5"}, TypeError, ["rho", "real number", "'0.5'"]),
        ({"rho": True}, TypeError, ["rho", "real number", "bool"]),
        ({"rho": decimal.Decimal("0.5")}, TypeError, ["rho", "Decimal"]),
        ({"rho": float("nan")}, ValueError, ["rho", "[0, 1]"]),
        ({"epsilon": "1e-5"}, TypeError, ["epsilon", "real number"]),
        ({"epsilon": float("inf")}, ValueError, ["epsilon", "positive and finite"]),
        ({"epsilon": float("nan")}, ValueError, ["epsilon", "positive and finite"]),
        ({"epsilon": -1e-5}, ValueError, ["epsilon", "positive"]),
        ({"momentum": "0.1"}, TypeError, ["momentum", "real number"]),
        ({"momentum": False}, TypeError, ["momentum", "bool"]),
        ({"moving_mean": np.zeros(3), "moving_var": [1.0, np.nan, 1.0]}, ValueError, ["moving_var", "channel 1"]),
        ({"moving_mean": np.zeros(3), "moving_var": [1.0, 1.0, -1.0]}, ValueError, ["moving_var", "non-negative"]),
        ({"moving_mean": [0.0, np.inf, 0.0], "moving_var": np.ones(3)}, ValueError, ["moving_mean", "finite"]),
        ({"moving_mean": np.ma.masked_array(np.zeros(3), [1, 0, 0])}, TypeError, ["moving_mean", "masked"]),
        ({"staged": "no"}, TypeError, ["staged", "True or False"]),
        ({"unbiased_moving_var": 1}, TypeError, ["unbiased_moving_var", "True or False"]),
        ({"bias_correction": None}, TypeError, ["bias_correction", "True or False"]),
    ],
    ids=lambda v: ",".join(f"{k}={np.asarray(a).tolist()!r}" for k, a in v.items()) if isinstance(v, dict) else "",
)
def test_bad_parameters_at_construction(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        BatchNormalization(np.ones(3), np.zeros(3), **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.5), np.int64(0), fractions.Fraction(1, 3), np.array(0.75)],
                         ids=repr)
def test_real_numbers_are_accepted_for_rho(value) -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), rho=value)
    assert bn.rho == float(value) and type(bn.rho) is float


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize("train_flg", ["False", "True", 0, 1, None, np.array([True])], ids=repr)
def test_train_flg_must_be_a_bool(train_flg, staged) -> None:
    bn = trained(staged)
    refused(bn, lambda: bn.forward(np.ones((4, 3)), train_flg=train_flg), TypeError, "train_flg", "True or False")


def test_numpy_bools_are_accepted_for_train_flg() -> None:
    bn = trained()
    np.testing.assert_array_equal(bn.forward(np.ones((4, 3)), train_flg=np.bool_(False)),
                                  bn.forward(np.ones((4, 3)), train_flg=False))


@pytest.mark.parametrize("where", ["x", "x-prediction", "dout", "gamma", "beta", "moving_var", "out"])
def test_masked_arrays_are_refused(where) -> None:
    bn = trained()
    masked = lambda a: np.ma.masked_array(a, mask=np.zeros_like(a, dtype=bool))  # noqa: E731
    x = np.arange(12.0).reshape(4, 3)
    calls = {
        "x": lambda: bn.forward(masked(x)),
        "x-prediction": lambda: bn.forward(masked(x), train_flg=False),
        "dout": lambda: bn.backward(masked(x)),
        "gamma": lambda: (setattr(bn, "gamma", masked(np.ones(3))), bn.forward(x)),
        "beta": lambda: (setattr(bn, "beta", masked(np.ones(3))), bn.forward(x)),
        "moving_var": lambda: (setattr(bn, "moving_var", masked(np.ones(3))), bn.forward(x, train_flg=False)),
        "out": lambda: bn.forward(x, out=masked(np.empty((4, 3)))),
    }
    with pytest.raises(TypeError, match="masked"):
        calls[where]()


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize(
    "name, value, exc, train_flg",
    [
        ("epsilon", 0.0, ValueError, True),
        ("epsilon", float("inf"), ValueError, False),
        ("epsilon", "1e-5", TypeError, True),
        ("moving_var", np.array([1.0, -1.0, 1.0]), ValueError, False),
        ("moving_var", np.array([1.0, np.nan, 1.0]), ValueError, False),
        ("moving_mean", np.array([1.0, np.inf, 1.0]), ValueError, False),
        ("moving_var", np.array(["a", "b", "c"]), TypeError, True),
        ("staged", "yes", TypeError, True),
    ],
)
def test_rebound_settings_are_checked_when_used(name, value, exc, train_flg, staged) -> None:
    bn = trained(staged)
    setattr(bn, name, value)
    refused(bn, lambda: bn.forward(np.arange(12.0).reshape(4, 3), train_flg=train_flg), exc, name)


def test_bias_correction_after_rebinding_the_moving_statistics_of_a_layer_built_without() -> None:
    """Found by the stateful test: the averages then start from the rebound values (this
    raised an internal AssertionError)."""
    bn = BatchNormalization(np.ones(2), np.zeros(2), bias_correction=True, rho=0.5)
    bn.moving_mean, bn.moving_var = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    x = np.array([[0.0, 1.0], [2.0, 5.0]])
    bn.forward(x)
    mean, var = bn.corrected_moving_statistics()
    np.testing.assert_allclose(mean, x.mean(axis=0))
    np.testing.assert_allclose(var, x.var(axis=0))
    np.testing.assert_allclose(bn.forward(x, train_flg=False), bn.forward(x), rtol=1e-7)


@pytest.mark.parametrize("n, exc", [(float("inf"), TypeError), (1.9, TypeError), (2.0, TypeError), (True, TypeError),
                                    ("2", TypeError), (0, ValueError), (-3, ValueError)], ids=repr)
def test_set_num_threads_takes_whole_numbers_only(n, exc) -> None:
    before = bnlit.get_num_threads()
    with pytest.raises(exc, match="number of threads"):
        bnlit.set_num_threads(n)
    assert bnlit.get_num_threads() == before
    bnlit.set_num_threads(np.int64(2))
    assert bnlit.get_num_threads() == 2
    bnlit.set_num_threads(before)


@pytest.mark.parametrize("text", ["²", "٣", "2.0", "+2", "0x2"])
def test_thread_count_from_the_environment_names_the_variable(monkeypatch, text) -> None:
    monkeypatch.setenv("BNLIT_NUM_THREADS", text)
    with pytest.raises(ValueError, match="BNLIT_NUM_THREADS must be a whole number"):
        _threads._threads_from_environment()


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f4", ">i4", ">f2"])
def test_any_byte_order_is_accepted_and_converted(dtype, staged, rng) -> None:
    x = (10 * rng.standard_normal((6, 3, 2, 2))).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = np.array([1.0, 2.0, 3.0], dtype=">f8"), np.array([0.5, 0.0, -0.5], dtype=">f8")
    native = np.dtype(dtype).newbyteorder("=")
    a = BatchNormalization(gamma, beta, staged=staged)
    b = BatchNormalization(gamma.astype(float), beta.astype(float), staged=staged)
    out_a, out_b = a.forward(x), b.forward(x.astype(native))
    assert out_a.dtype == out_b.dtype and out_a.dtype.isnative
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(a.backward(dout), b.backward(dout.astype(native)))
    a.moving_var = a.moving_var.astype(">f8")
    np.testing.assert_array_equal(a.forward(x, train_flg=False), b.forward(x, train_flg=False))


def test_float64_dout_beyond_float32_range_is_refused_for_a_float32_layer(rng) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    bn.forward(rng.standard_normal((4, 3)).astype(np.float32))
    dout = rng.standard_normal((4, 3))
    dout[1, 2] = 1e39
    refused(bn, lambda: bn.backward(dout), ValueError, "dout", "range of float32")
    assert bn.backward(dout.clip(-1, 1)).dtype == np.float32  # in range: converted


def test_out_in_another_byte_order_is_refused_naming_byte_order() -> None:
    bn = trained()
    refused(bn, lambda: bn.forward(np.ones((4, 3)), out=np.empty((4, 3), ">f8")), ValueError, "byte order")


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------
def test_changing_the_thread_count_lets_a_call_in_flight_finish(monkeypatch) -> None:
    """The pool is replaced while a call's work is still running on it."""
    before = _threads.get_num_threads()
    _threads.set_num_threads(2)
    started, release = threading.Event(), threading.Event()
    results: list = []

    def slow(group):
        started.set()
        assert release.wait(10)
        return sum(group)

    caller = threading.Thread(target=lambda: results.append(_threads.run_split(slow, list(range(10)), 2)))
    caller.start()
    assert started.wait(10)
    setter = threading.Thread(target=_threads.set_num_threads, args=(3,))
    setter.start()
    setter.join(10)
    assert not setter.is_alive(), "set_num_threads waited for the running call"
    assert _threads.run_split(lambda g: len(g), list(range(9)), 3) == [3, 3, 3]  # the new pool serves
    release.set()
    caller.join(10)
    assert results == [[10, 35]]
    _threads.set_num_threads(before)


def test_set_num_threads_while_forward_runs_in_another_thread(monkeypatch, rng) -> None:
    """The issue's race: 480 of 3,885 calls raised 'cannot schedule new futures after shutdown'."""
    monkeypatch.setattr(kernels, "SMALL_BYTES", 0)
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 2048)
    before = _threads.get_num_threads()
    calls = 20 if os.environ.get("MUTANT_UNDER_TEST") else 150  # every surviving mutant runs it
    x = rng.normal(size=(64, 4, 8, 8))
    want = BatchNormalization(np.ones(4), np.zeros(4)).forward(x)
    done, problems = threading.Event(), []

    def flip() -> None:
        n = 0
        while not done.is_set():
            _threads.set_num_threads(1 + n % 4)
            n += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        bn = BatchNormalization(np.ones(4), np.zeros(4))
        for _ in range(calls):
            try:
                np.testing.assert_allclose(bn.forward(x), want, rtol=1e-12, atol=1e-12)
            except Exception as err:  # noqa: BLE001 - every failure is counted
                problems.append(repr(err)[:80])
    finally:
        done.set()
        flipper.join()
        _threads.set_num_threads(before)
    assert not problems, f"{len(problems)} of {calls} calls failed: {problems[:2]}"


# ----------------------------------------------------------------------------------------------
# The docstring says what is refused and what is accepted
# ----------------------------------------------------------------------------------------------
def test_the_docstring_table_covers_every_input() -> None:
    doc = BatchNormalization.__doc__
    table = doc[doc.index("What is accepted and what is refused"):]
    for name in ("x", "dout", "out", "gamma", "beta", "rho", "momentum", "epsilon", "moving_mean",
                 "moving_var", "train_flg"):
        assert f"``{name}``" in table, name
    for words in ("byte order", "masked", "empty", "2**1000", "``Decimal``", "NaN"):
        assert words in table, words
