"""Promises of the public interface checked value by value, without optional packages.

- ``out=`` buffers: what is written equals a fresh result; aliasing the layer's
  inputs, a non-contiguous array or a non-array is refused with an exact message
  and leaves the layer as it was.
- ``like_pytorch``: PyTorch's defaults (eps 1e-5, momentum 0.1, running mean at
  zeros and running variance at ones, updated with the unbiased variance), worked
  out by hand here so that they hold where torch is not installed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from bnlit import BatchNormalization
from bnlit.engines import get_engine

SHAPES = {"2d": (6, 3), "4d": (2, 3, 2, 4)}


def layers(staged: bool, rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> tuple:
    """Two identical trained layers (one to use a buffer, one for a fresh result), x and dout."""
    x = (rng.normal(2.0, 3.0, size=shape)).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    a = BatchNormalization(gamma, beta, staged=staged)
    b = BatchNormalization(gamma, beta, staged=staged)
    a.forward(x)
    b.forward(x)
    return a, b, x, dout


def state(bn: BatchNormalization) -> dict:
    return {
        name: copy.deepcopy(getattr(bn, name))
        for name in ("dgamma", "dbeta", "moving_mean", "moving_var", "batch_size", "steps")
    } | {"backward_steps": bn.backward_steps}


def assert_same_state(before: dict, after: dict) -> None:
    for key, value in before.items():
        if key == "backward_steps":
            assert after[key] is value, key
        elif value is None:
            assert after[key] is None, key
        else:
            np.testing.assert_array_equal(after[key], value, err_msg=key)


# --------------------------------------------------------------- out buffers
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
def test_backward_into_out_writes_the_fresh_result(staged, shape, dtype, rng) -> None:
    a, b, x, dout = layers(staged, rng, shape, dtype)
    fresh = b.backward(dout)
    buffer = np.full(shape, np.nan, dtype=dtype)  # every value must be overwritten
    assert a.backward(dout, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, fresh)
    np.testing.assert_array_equal(a.dgamma, b.dgamma)
    np.testing.assert_array_equal(a.dbeta, b.dbeta)
    assert np.max(np.abs(fresh)) > 1e-3  # a real gradient, not zeros


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
def test_forward_into_out_writes_the_fresh_result(staged, shape, rng) -> None:
    a, b, x, _ = layers(staged, rng, shape, np.float64)
    for train in (True, False):
        buffer = np.full(shape, np.nan)
        assert a.forward(x, train, out=buffer) is buffer
        np.testing.assert_array_equal(buffer, b.forward(x, train))


def test_prediction_refuses_to_overwrite_its_input(rng) -> None:
    """Every ``out=`` refuses memory the call reads (issue 12): ``out=x`` too, x unchanged."""
    a, _, x, _ = layers(False, rng, SHAPES["4d"], np.float64)
    x_before = x.copy()
    with pytest.raises(ValueError, match="out must not share memory with x"):
        a.forward(x, train_flg=False, out=x)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
@pytest.mark.parametrize("alias", ["dout", "view-of-dout", "x"])
def test_backward_refuses_out_sharing_memory_with_its_inputs(staged, alias, rng) -> None:
    bn, _, x, dout = layers(staged, rng, SHAPES["4d"], np.float64)
    bn.backward(dout)  # a first backward: its results must survive the refused call
    before, dout_before, x_before = state(bn), dout.copy(), x.copy()
    out = {"dout": dout, "view-of-dout": dout[...], "x": x}[alias]
    with pytest.raises(ValueError) as info:
        bn.backward(dout, out=out)
    which = "the last training input, which the layer keeps" if alias == "x" else "dout, which the call reads"
    assert str(info.value) == f"out must not share memory with {which}"
    assert_same_state(before, state(bn))
    np.testing.assert_array_equal(dout, dout_before)
    np.testing.assert_array_equal(x, x_before)


def test_training_forward_refuses_out_sharing_memory_with_x(rng) -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    x = rng.normal(size=(5, 3))
    x_before = x.copy()
    with pytest.raises(ValueError) as info:
        bn.forward(x, out=x[...])
    assert str(info.value) == "out must not share memory with x, which the call reads"
    np.testing.assert_array_equal(x, x_before)
    assert bn.moving_mean is None and bn.x_std is None


UNFIT_OUT = {
    # what out is, the exception, the exact message for a (4, 3) float64 result
    "not-contiguous": (
        lambda: np.empty((3, 4)).T, ValueError,
        "out must be a writeable C-contiguous array of shape (4, 3) and dtype float64; "
        "got an array of shape (4, 3) and dtype float64 that is not C-contiguous",
    ),
    "strided": (
        lambda: np.empty((4, 6))[:, ::2], ValueError,
        "out must be a writeable C-contiguous array of shape (4, 3) and dtype float64; "
        "got an array of shape (4, 3) and dtype float64 that is not C-contiguous",
    ),
    "wrong-dtype": (
        lambda: np.empty((4, 3), np.float32), ValueError,
        "out must be a writeable C-contiguous array of shape (4, 3) and dtype float64; "
        "got an array of shape (4, 3) and dtype float32",
    ),
    "wrong-shape": (
        lambda: np.empty((3, 4)), ValueError,
        "out must be a writeable C-contiguous array of shape (4, 3) and dtype float64; "
        "got an array of shape (3, 4) and dtype float64",
    ),
    "list": (lambda: [[0.0] * 3] * 4, TypeError, "out must be a NumPy array (not masked); got list"),
    "memoryview": (lambda: memoryview(np.empty((4, 3))), TypeError, "out must be a NumPy array (not masked); got memoryview"),
}


@pytest.mark.parametrize("staged", [False, True], ids=["default", "staged"])
@pytest.mark.parametrize("case", list(UNFIT_OUT))
def test_unfit_out_is_refused_with_an_exact_message(case, staged, rng) -> None:
    make, exc, message = UNFIT_OUT[case]
    x = rng.normal(size=(4, 3))
    dout = rng.normal(size=(4, 3))
    bn = BatchNormalization(np.ones(3), np.zeros(3), staged=staged)
    bn.forward(x)
    bn.backward(dout)
    before = state(bn)
    for call in (lambda out: bn.backward(dout, out=out), lambda out: bn.forward(x, out=out),
                 lambda out: bn.forward(x, train_flg=False, out=out)):
        with pytest.raises(exc) as info:
            call(make())
        assert str(info.value) == message
        assert_same_state(before, state(bn))


# ------------------------------------------------------------- like_pytorch
def test_like_pytorch_settings() -> None:
    bn = BatchNormalization.like_pytorch(4)
    assert bn.epsilon == 1e-5
    assert bn.rho == pytest.approx(0.9, abs=1e-15)  # PyTorch's momentum 0.1 = 1 - rho
    assert bn.unbiased_moving_var is True and bn.bias_correction is False and bn.staged is False
    np.testing.assert_array_equal(bn.gamma, np.ones(4))
    np.testing.assert_array_equal(bn.beta, np.zeros(4))
    np.testing.assert_array_equal(bn.moving_mean, np.zeros(4))
    np.testing.assert_array_equal(bn.moving_var, np.ones(4))
    other = BatchNormalization.like_pytorch(2, eps=1e-3, momentum=0.25)
    assert other.epsilon == 1e-3 and other.rho == 0.75
    assert other.moving_var.shape == (2,)


def test_like_pytorch_by_hand() -> None:
    """One column 1, 2, 4, 7: mean 3.5, biased variance 5.25, unbiased 7."""
    bn = BatchNormalization.like_pytorch(1)
    x = np.array([[1.0], [2.0], [4.0], [7.0]])
    # Before any training, prediction uses running mean 0 and running variance 1.
    np.testing.assert_allclose(bn.forward(x, train_flg=False), x / math.sqrt(1 + 1e-5), rtol=1e-15)
    out = bn.forward(x)
    np.testing.assert_allclose(out, (x - 3.5) / math.sqrt(5.25 + 1e-5), rtol=1e-14)
    np.testing.assert_allclose(bn.moving_mean, [0.9 * 0 + 0.1 * 3.5], rtol=1e-15)
    np.testing.assert_allclose(bn.moving_var, [0.9 * 1 + 0.1 * 7.0], rtol=1e-15)
    np.testing.assert_allclose(bn.forward(x, train_flg=False), (x - 0.35) / math.sqrt(1.6 + 1e-5), rtol=1e-14)
    bn.forward(2 * x)  # mean 7, unbiased variance 28
    np.testing.assert_allclose(bn.moving_mean, [0.9 * 0.35 + 0.1 * 7.0], rtol=1e-15)
    np.testing.assert_allclose(bn.moving_var, [0.9 * 1.6 + 0.1 * 28.0], rtol=1e-15)


def test_like_pytorch_4d_uses_n_h_w_values_per_channel() -> None:
    """Channel 0 of arange(8).reshape(2, 2, 1, 2) holds 0, 1, 4, 5 and channel 1 holds 2, 3, 6, 7:
    means 2.5 and 4.5, squared deviations 6.25 + 2.25 + 2.25 + 6.25 = 17 in both, so the
    biased variance is 17/4 and the unbiased one 17/3."""
    x = np.arange(8.0).reshape(2, 2, 1, 2)
    bn = BatchNormalization.like_pytorch(2)
    bn.forward(x)
    np.testing.assert_allclose(bn.var, [17 / 4, 17 / 4], rtol=1e-15)
    np.testing.assert_allclose(bn.moving_mean, [0.1 * 2.5, 0.1 * 4.5], rtol=1e-15)
    np.testing.assert_allclose(bn.moving_var, [0.9 + 0.1 * 17 / 3] * 2, rtol=1e-15)


# ------------------------------------------------------------- exact messages
def trained(**kwargs) -> BatchNormalization:
    bn = BatchNormalization(np.ones(3), np.zeros(3), **kwargs)
    bn.forward(np.arange(12.0).reshape(4, 3) ** 1.5)
    return bn


def rebound(**attributes) -> BatchNormalization:
    bn = trained()
    for name, value in attributes.items():
        setattr(bn, name, value)
    return bn


X = np.arange(12.0).reshape(4, 3)
NO_MOVING = (
    "prediction (train_flg=False) needs moving statistics, and there are none yet: "
    "run a training forward first or pass moving_mean and moving_var"
)
NO_CORRECTION = "there are no moving statistics yet: run a training forward first"

# (what is called, the exception, its exact message): one table, so that a reworded
# message is changed in one place.
MESSAGES = {
    "prediction-first": (lambda: BatchNormalization(np.ones(3), np.zeros(3)).forward(X, train_flg=False),
                         "LayerStateError", NO_MOVING),
    "prediction-half-started": (
        lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(3)).forward(X, train_flg=False),
        "LayerStateError", NO_MOVING),
    "prediction-var-only": (
        lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_var=np.ones(3)).forward(X, train_flg=False),
        "LayerStateError", NO_MOVING),
    "correction-first": (lambda: BatchNormalization(np.ones(3), np.zeros(3)).corrected_moving_statistics(),
                         "LayerStateError", NO_CORRECTION),
    "correction-half-started": (
        lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_var=np.ones(3)).corrected_moving_statistics(),
        "LayerStateError", NO_CORRECTION),
    "backward-first": (lambda: BatchNormalization(np.ones(3), np.zeros(3)).backward(X), "LayerStateError",
                       "backward needs a training forward first (forward(x, train_flg=True)); none has run"),
    "moving-mean-rebound": (lambda: rebound(moving_mean=np.zeros(2)).forward(X, train_flg=False), "ValueError",
                            "moving_mean must have shape (3,); got shape (2,)"),
    "moving-var-rebound": (lambda: rebound(moving_var=np.ones(4)).forward(X, train_flg=False), "ValueError",
                           "moving_var must have shape (3,); got shape (4,)"),
    "gamma-rebound-before-backward": (
        lambda: rebound(gamma=np.ones(4)).backward(X), "ValueError",
        "the input has 3 channels (axis 1), which gamma and beta must match: gamma must have shape (3,); got shape (4,)"),
    "beta-rebound-before-prediction": (
        lambda: rebound(beta=np.ones(2)).forward(X, train_flg=False), "ValueError",
        "the input has 3 channels (axis 1), which gamma and beta must match: beta must have shape (3,); got shape (2,)"),
    "rho-rebound": (lambda: rebound(rho=1.5).forward(X), "ValueError", "rho must lie in [0, 1]; got 1.5"),
    "rho-and-momentum": (
        lambda: BatchNormalization(np.ones(3), np.zeros(3), rho=0.5, momentum=0.1), "ValueError",
        "give rho (weight of the old value) or momentum (weight of the new value), not both; got rho=0.5 and momentum=0.1"),
    "rho": (lambda: BatchNormalization(np.ones(3), np.zeros(3), rho=1.5), "ValueError",
            "rho must lie in [0, 1]; got 1.5"),
    "moving-mean-start": (lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(4)), "ValueError",
                          "moving_mean must have shape (3,); got shape (4,)"),
    "moving-var-start": (lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_var=np.ones(2)), "ValueError",
                         "moving_var must have shape (3,); got shape (2,)"),
    "moving-mean-rebound-before-training": (
        lambda: rebound(moving_mean=np.zeros(2)).forward(X), "ValueError",
        "moving_mean must have shape (3,); got shape (2,)"),
    "moving-var-rebound-before-training": (
        lambda: rebound(moving_var=np.ones(4)).forward(X), "ValueError",
        "moving_var must have shape (3,); got shape (4,)"),
    "no-channels": (  # a layer needs at least one channel (issue 12: zero-size inputs)
        lambda: BatchNormalization(np.ones(0), np.zeros(0)).forward(np.ones((4, 0))), "ValueError",
        "gamma must have a 1-D array of at least one value; got shape (0,)"),
    "momentum": (lambda: BatchNormalization(np.ones(3), np.zeros(3), momentum=-0.1), "ValueError",
                 "momentum must lie in [0, 1]; got -0.1"),
    "epsilon": (lambda: BatchNormalization(np.ones(3), np.zeros(3), epsilon=-1), "ValueError",
                "epsilon must be positive and finite; got -1"),
    "moving-var-negative": (lambda: BatchNormalization(np.ones(3), np.zeros(3), moving_var=[1, -1, 1]), "ValueError",
                            "moving_var must be finite and non-negative; it is not in channel 1 (values [-1.0])"),
    "gamma-2d": (lambda: BatchNormalization(np.ones((3, 1)), np.zeros(3)), "ValueError",
                 "gamma must have a 1-D array of at least one value; got shape (3, 1)"),
    "beta-length": (lambda: BatchNormalization(np.ones(3), np.zeros(2)), "ValueError",
                    "beta must have shape (3,); got shape (2,)"),
    "training-one-value": (
        lambda: BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ones((1, 3, 1, 1))), "ValueError",
        "training needs at least 2 values per channel to estimate a variance; got 1 for input shape (1, 3, 1, 1)"),
    "dout-shape": (lambda: trained().backward(np.ones((4, 2))), "ValueError",
                   "dout must have the shape of the last training input, (4, 3); got shape (4, 2)"),
    "dout-type": (lambda: trained().backward(np.ones((4, 3), complex)), "TypeError",
                  "dout must hold real numbers; got an array of shape (4, 3) and dtype complex128"),
    "x-ndim": (lambda: trained().forward(np.ones((4, 3, 2))), "ValueError",
               "x must be 2-D (N, D) or 4-D (N, C, H, W); got 3-D, shape (4, 3, 2)"),
    "x-type": (lambda: trained().forward(np.ones((4, 3), bool)), "TypeError",
               "x must hold real numbers (float32, float64, float16 or integers); got an array of shape (4, 3) and dtype bool"),
    "gamma-type": (lambda: BatchNormalization(["a", "b", "c"], np.zeros(3)), "TypeError",
                   "gamma must be a 1-D array of real numbers; got an array of shape (3,) and dtype <U1"),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_exact_messages(case) -> None:
    call, exc, message = MESSAGES[case]
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value).__name__ == exc
    assert str(info.value) == message


def test_unknown_engine() -> None:
    with pytest.raises(ValueError) as info:
        BatchNormalization(np.ones(3), np.zeros(3), engine="cuda")
    message = str(info.value)
    assert message == "engine must be one of ['numba', 'numpy'] or 'auto'; got 'cuda'"
    assert get_engine("numpy").name == "numpy"


def test_starting_moving_statistics() -> None:
    """Given starts become float64 copies; a zero variance is a valid start; a half-given
    start is dropped for zeros at the first training call (as when none is given)."""
    start_mean, start_var = np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0], np.float32)
    bn = BatchNormalization(np.ones(3), np.zeros(3), moving_mean=start_mean, moving_var=start_var)
    assert bn.moving_mean.dtype == bn.moving_var.dtype == np.float64
    np.testing.assert_array_equal(bn.moving_var, [0.0, 1.0, 2.0])
    assert not np.shares_memory(bn.moving_var, start_var)
    half = BatchNormalization(np.ones(3), np.zeros(3), rho=0.5, moving_mean=np.full(3, 7.0))
    half.forward(X)
    np.testing.assert_allclose(half.moving_mean, 0.5 * X.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(half.moving_var, 0.5 * X.var(axis=0), rtol=1e-15)


def test_a_new_training_forward_forgets_the_last_backward() -> None:
    bn = trained(staged=True)
    bn.backward(np.ones((4, 3)))
    assert bn.backward_steps is not None
    bn.forward(X)
    assert bn.backward_steps is None


def test_a_refused_backward_keeps_the_last_results() -> None:
    bn = trained()
    dx = bn.backward(np.linspace(-1, 1, 12).reshape(4, 3))
    before = state(bn)
    bn.gamma = np.ones(4)
    with pytest.raises(ValueError):
        bn.backward(np.ones((4, 3)))
    assert_same_state(before, state(bn))
    bn.gamma = np.ones(3)
    np.testing.assert_array_equal(bn.backward(np.linspace(-1, 1, 12).reshape(4, 3)), dx)


# ------------------------------------------------------ dtypes and corrections
def test_dout_is_computed_in_the_inputs_dtype(rng) -> None:
    """A float64 dout on a float32 layer is rounded to float32 first: the same dx, dgamma and
    dbeta as a float32 dout, bit for bit."""
    x = rng.normal(size=(6, 3, 2, 2)).astype(np.float32)
    dout = rng.normal(size=x.shape)
    for staged in (False, True):
        a, b = (BatchNormalization(np.ones(3), np.zeros(3), staged=staged) for _ in range(2))
        a.forward(x)
        b.forward(x)
        dx64, dx32 = a.backward(dout), b.backward(dout.astype(np.float32))
        assert dx64.dtype == a.dgamma.dtype == a.dbeta.dtype == np.float32
        np.testing.assert_array_equal(dx64, dx32)
        np.testing.assert_array_equal(a.dgamma, b.dgamma)
        np.testing.assert_array_equal(a.dbeta, b.dbeta)


def test_corrected_statistics_before_any_step_and_with_rho_one() -> None:
    """No step yet, or rho = 1 (the averages never move): nothing to correct, and no 0 / 0."""
    bn = BatchNormalization(np.ones(2), np.zeros(2), moving_mean=[1, 2], moving_var=[3, 4], bias_correction=True)
    for mean, var in (bn.corrected_moving_statistics(),):
        assert mean.dtype == var.dtype == np.float64
        np.testing.assert_array_equal(mean, [1.0, 2.0])
        np.testing.assert_array_equal(var, [3.0, 4.0])
    bn.moving_mean, bn.moving_var = np.array([1, 2], np.float32), np.array([3, 4], np.float32)
    assert [a.dtype for a in bn.corrected_moving_statistics()] == [np.float64, np.float64]  # rebound: still float64
    frozen = BatchNormalization(np.ones(2), np.zeros(2), rho=1.0, moving_mean=[1, 2], moving_var=[3, 4],
                                bias_correction=True)
    x = np.array([[0.0, 5.0], [4.0, -1.0]])
    frozen.forward(x)
    mean, var = frozen.corrected_moving_statistics()
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(var, [3.0, 4.0])
    np.testing.assert_allclose(frozen.forward(x, train_flg=False),
                               (x - [1.0, 2.0]) / np.sqrt(np.array([3.0, 4.0]) + 1e-8), rtol=1e-15)
