"""Layer-level contracts that a mutation run (``make mutation``) found untested.

Each test drives the public layer (default, staged and synchronized paths) into a
documented refusal or a documented acceptance, with numbers chosen by hand (powers
of two where exactness matters), and checks the whole message or the values.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from _state import reference_training

from bnlit import BatchNormalization
from bnlit.distributed import ThreadGroup

LARGEST = float(np.finfo(np.float64).max)


# ------------------------------------------------------------ var + epsilon beyond float64
# Channel 0's variance is 1e300 (below bnlit's limit 2**1000), channel 1's is 1.25; with
# epsilon at float64's largest, var + epsilon overflows in channel 0 only. The refusal is
# quiet (no RuntimeWarning on the way: the suite turns warnings into errors).
SUM_OVERFLOWS = "var + epsilon overflows float64 in channel 0; use a smaller epsilon"
X_WIDE = np.array([[1e150, 1.0], [-1e150, 2.0], [1e150, 3.0], [-1e150, 4.0]])


@pytest.mark.parametrize("staged", [False, True])
def test_training_refuses_var_plus_epsilon_beyond_float64(staged) -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), epsilon=LARGEST, staged=staged)
    with pytest.raises(ValueError, match=f"^{re.escape(SUM_OVERFLOWS)}$"):
        bn.forward(X_WIDE)
    assert bn.moving_mean is None


def test_prediction_refuses_var_plus_epsilon_beyond_float64() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), epsilon=LARGEST,
                            moving_mean=np.zeros(2), moving_var=np.array([1e300, 1.25]))
    with pytest.raises(ValueError, match=f"^{re.escape(SUM_OVERFLOWS)}$"):
        bn.forward(X_WIDE, train_flg=False)


def test_prediction_with_a_large_but_finite_var_plus_epsilon_is_accepted() -> None:
    """1e300 + 1e300 fits: inv_std is 1/sqrt(2e300), not zero, and nothing is refused."""
    bn = BatchNormalization(np.ones(2), np.zeros(2), epsilon=1e300,
                            moving_mean=np.zeros(2), moving_var=np.array([1e300, 1.25]))
    out = bn.forward(X_WIDE, train_flg=False)
    np.testing.assert_allclose(out[:, 0], X_WIDE[:, 0] / np.sqrt(2e300), rtol=1e-15)


# ------------------------------------------------------------ staged backward
X4 = np.array([[1.0, -3.0], [2.0, 0.5], [4.0, 2.0], [-1.0, 8.0]])
DOUT4 = np.array([[0.5, -1.0], [2.0, 0.25], [-1.5, 1.0], [0.75, 3.0]])


def _reference_dx(x: np.ndarray, dout: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """dx by the exact reference of tests/_state.py, with the layer's default epsilon."""
    return reference_training(x, gamma, np.zeros(x.shape[1]), 1e-8, dout).dx


@pytest.mark.parametrize("staged", [False, True])
def test_backward_uses_gamma_as_it_is_at_the_backward_call(staged) -> None:
    """The layer reads gamma at every call: rebound between forward and backward, dx
    follows the new gamma (the closed form, computed here by hand), on both paths."""
    bn = BatchNormalization(np.array([1.5, -0.5]), np.zeros(2), staged=staged)
    bn.forward(X4)
    bn.gamma = np.array([-2.0, 3.0])
    dx = bn.backward(DOUT4)
    np.testing.assert_allclose(dx, _reference_dx(X4, DOUT4, np.array([-2.0, 3.0])), rtol=1e-12, atol=1e-15)


def _staged_underflow_message(node: str) -> str:
    return (f"the staged graph's node {node} underflows float64 in channel 0 (x's spread and dout are too "
            f"many orders of magnitude apart); the default path (staged=False) computes this backward")


@pytest.mark.parametrize("spread, dout, node", [
    # grad_std = -grad_std_inv / std**2: dout * spread * 4 / 1e280 underflows first.
    (1e140, 1e-300, "grad_std"),
    # Spread 1 (x = +-1): grad_var = -3 * 2**-1022 is normal, grad_x_mu_sq = grad_var / 4 is not.
    (1.0, 1.5 * 2.0**-1022, "grad_x_mu_sq"),
])
def test_staged_backward_names_the_first_node_that_underflows(spread, dout, node) -> None:
    x = np.array([[spread, 1.0], [-spread, 2.0], [spread, 3.0], [-spread, 5.0]])
    d = np.array([[dout, 1.0], [-dout, -1.0], [dout, 0.5], [-dout, 0.25]])
    bn = BatchNormalization(np.ones(2), np.zeros(2), staged=True)
    bn.forward(x)
    with pytest.raises(ValueError, match=f"^{re.escape(_staged_underflow_message(node))}$"):
        bn.backward(d)
    assert bn.dgamma is None
    np.testing.assert_allclose(BatchNormalization(np.ones(2), np.zeros(2)).forward(x)[:, 1],
                               bn.forward(x)[:, 1])  # the layer works on


@pytest.mark.parametrize("staged", [False, True])
def test_a_channel_with_infinite_gamma_propagates_through_backward(staged) -> None:
    """NaN or infinity in gamma is the caller's data: it propagates into its channel's dx
    (no refusal as an overflow), and the other channel is exact."""
    gamma = np.array([np.inf, 1.0])
    bn = BatchNormalization(gamma, np.zeros(2), staged=staged)
    bn.forward(X4)
    dx = bn.backward(DOUT4)
    assert not np.any(np.isfinite(dx[:, 0]))
    np.testing.assert_allclose(dx[:, 1], _reference_dx(X4, DOUT4, np.array([1.0, 1.0]))[:, 1], rtol=1e-12)


# float32 data, 16 rows of s * (+1, -1), epsilon 1e-30 (so std = s and x_std = +-1), gamma G:
# dout = D * x_std gives dgamma = 16 D, dbeta = 0, and dx's terms (gamma / std) * |dgamma| / std
# / 16 * sqrt(16 s**2) = 4 G D / s; dout = D everywhere gives dbeta = 16 D and terms G / s * D.
# The staged path refuses float32 terms above 2**176 (the exact dx is 0 either way).
SIGN = np.array([1.0, -1.0] * 8)[:, None]
TERMS_TOO_LARGE = ("dx cannot be computed in float32 in channel 0: its terms (gamma / std times dout) "
                   "exceed the range too far; use float64 data, a larger epsilon or a smaller dout")


@pytest.mark.parametrize("gamma_exp, dout_exp, spread, constant, accepted", [
    (85, 84, 1.0, False, True),      # 4 * 2**85 * 2**84 = 2**171
    (85, 84, 2.0**-8, False, False),  # 2**171 * 2**8 = 2**179
    (85, 88, 1.0, True, True),       # 2**85 * 2**88 = 2**173
    (85, 92, 1.0, True, False),      # 2**177
])
def test_staged_float32_backward_refuses_terms_beyond_2_to_176(gamma_exp, dout_exp, spread, constant, accepted) -> None:
    x = (spread * SIGN).astype(np.float32)
    dout = (2.0**dout_exp * (np.ones_like(SIGN) if constant else SIGN)).astype(np.float32)
    bn = BatchNormalization(np.array([2.0**gamma_exp]), np.zeros(1), epsilon=1e-30, staged=True)
    bn.forward(x)
    if accepted:
        dx = bn.backward(dout)
        assert dx.dtype == np.float32 and np.all(dx == 0)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(TERMS_TOO_LARGE)}$"):
            bn.backward(dout)


# ------------------------------------------------------------ synchronized layers
def test_synchronized_forward_refuses_the_whole_batch_variance() -> None:
    """Each worker's slice (1e160, -1e160) has variance 1e320 beyond float64: every worker
    refuses with the variance message (not a TypeError from the check)."""
    def work(comm):
        return BatchNormalization(np.ones(1), np.zeros(1), comm=comm).forward(np.array([[1e160], [-1e160]]))

    results = ThreadGroup(2, timeout=5).run(work, return_exceptions=True)
    for err in results:
        assert isinstance(err, ValueError)
        assert str(err) == ("the variance of x is too large for float64 in channel 0 (bnlit accepts "
                            "variances below 2**1000, about 1e301); scale the data down")


def test_synchronized_float32_backward_keeps_float32_and_refuses_its_terms() -> None:
    """Two workers of 8 rows each make the 16-row batch above: float32 gradients stay
    float32, and terms of 2**179 are refused for float32 as on one layer."""
    def work(comm, spread: float):
        rows = slice(comm.rank * 8, comm.rank * 8 + 8)
        bn = BatchNormalization(np.array([2.0**85]), np.zeros(1), epsilon=1e-30, comm=comm)
        bn.forward((spread * SIGN[rows]).astype(np.float32))
        dx = bn.backward((2.0**84 * SIGN[rows]).astype(np.float32))
        return dx.dtype, bn.dgamma.dtype, bn.dbeta.dtype, float(bn.dgamma[0])

    fine = ThreadGroup(2, timeout=5).run(lambda comm: work(comm, 1.0))
    assert fine == [(np.float32, np.float32, np.float32, 16 * 2.0**84)] * 2
    refused = ThreadGroup(2, timeout=5).run(lambda comm: work(comm, 2.0**-8), return_exceptions=True)
    assert [str(e) for e in refused] == [TERMS_TOO_LARGE] * 2


def test_like_pytorch_passes_its_communicator_on() -> None:
    def work(comm):
        bn = BatchNormalization.like_pytorch(2, comm=comm)
        return bn.comm is comm, bn.forward(np.array([[float(comm.rank), 1.0], [2.0, 3.0]])).tolist()

    (same_0, out_0), (same_1, out_1) = ThreadGroup(2, timeout=5).run(work)
    assert same_0 and same_1
    # The whole batch (0, 2, 1, 2) in channel 0 has mean 1.25 and variance 0.6875: synchronized.
    np.testing.assert_allclose([out_0[0][0], out_1[0][0]], [(0 - 1.25) / np.sqrt(0.6875 + 1e-5),
                                                            (1 - 1.25) / np.sqrt(0.6875 + 1e-5)], rtol=1e-12)


# ------------------------------------------------------------ backward's refusals, named
SUMS_OVERFLOW = ("the per-channel gradient sums overflow float64 in channel 0 (dout, or dout times the "
                 "centred input, is too large); scale dout down")
X_SPREAD = np.array([[1e150, 1.0], [-1e150, 2.0], [1e150, 3.0], [-1e150, 5.0]])
DOUT_HUGE = np.array([[1e200, 1.0], [-1e200, -1.0], [1e200, 0.5], [-1e200, 0.25]])  # sum(dout * x_mu) ~ 4e350


@pytest.mark.parametrize("staged", [False, True])
def test_backward_refuses_gradient_sums_beyond_float64_by_channel(staged) -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), staged=staged)
    bn.forward(X_SPREAD)
    with pytest.raises(ValueError, match=f"^{re.escape(SUMS_OVERFLOW)}$"):
        bn.backward(DOUT_HUGE)
    assert bn.dgamma is None


def test_synchronized_backward_refuses_a_workers_own_gradient_sums_beyond_float64() -> None:
    """Worker 0's own sums overflow: it refuses with the message, worker 1 with PeerError."""
    def work(comm):
        rows = slice(2 * comm.rank, 2 * comm.rank + 2)
        bn = BatchNormalization(np.ones(2), np.zeros(2), comm=comm)
        bn.forward(X_SPREAD[rows])
        d = DOUT_HUGE[rows].copy()
        if comm.rank == 1:
            d[:, 0] = 1.0
        return bn.backward(d)

    own, peer = ThreadGroup(2, timeout=5).run(work, return_exceptions=True)
    assert type(own) is ValueError and str(own) == SUMS_OVERFLOW
    assert type(peer).__name__ == "PeerError" and "worker 0 refused" in str(peer)


def test_out_sharing_memory_with_the_given_dout_before_conversion_is_named() -> None:
    """A float64 dout for a float32 layer is converted; an out that overlaps the caller's
    float64 array (not the converted copy) is refused under the name the caller knows."""
    buf = np.zeros(16)
    dout = buf[:8].reshape(4, 2)
    dout[:] = 1.0
    out = buf.view(np.float32)[:8].reshape(4, 2)
    bn = BatchNormalization(np.ones(2), np.zeros(2))
    bn.forward(np.arange(8, dtype=np.float32).reshape(4, 2))
    with pytest.raises(ValueError, match="^out must not share memory with the given dout, which the call reads$"):
        bn.backward(dout, out=out)


def test_a_masked_dout_is_refused_by_name() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2))
    bn.forward(X4)
    with pytest.raises(TypeError, match=re.escape(
        "dout is a masked array, and bnlit does not apply masks; pass dout.filled(fill_value) "
        "or only the values that count"
    )):
        bn.backward(np.ma.masked_array(DOUT4))


def test_staged_float64_backward_accepts_terms_beyond_2_to_176() -> None:
    """The 2**176 limit is float32's: in float64 the case refused above (2**179) is fine."""
    bn = BatchNormalization(np.array([2.0**85]), np.zeros(1), epsilon=1e-30, staged=True)
    bn.forward(2.0**-8 * SIGN)
    dx = bn.backward(2.0**84 * SIGN)
    assert dx.dtype == np.float64 and np.all(dx == 0)


# ------------------------------------------------------------ the limits of the statistics, at equality
@pytest.mark.parametrize("staged", [False, True])
def test_var_plus_epsilon_at_2_to_minus_1000_is_accepted_and_below_it_refused(staged) -> None:
    """epsilon = 3 * 2**-1002. Channel 0 is constant (var + epsilon below 2**-1000: refused);
    channel 1 has variance 2**-1002 (var + epsilon exactly 2**-1000: accepted); channel 2
    has variance 2**-1000 (accepted, though var - epsilon would be below the limit)."""
    a, b = 2.0**-501, 2.0**-500
    x = np.array([[1.0, a, b], [1.0, -a, -b]])
    bn = BatchNormalization(np.ones(3), np.zeros(3), epsilon=3 * 2.0**-1002, staged=staged)
    with pytest.raises(ValueError, match="^" + re.escape(
        f"var + epsilon is too small for float64 in channel 0 (below 2**-1000, about 1e-301; epsilon is "
        f"{3 * 2.0**-1002!r}); use a larger epsilon") + "$"):
        bn.forward(x)
    assert bn.moving_mean is None
    x[:, 0] = [1.0, 3.0]  # channel 0 spread out: channels 1 and 2 pass as they are
    bn.forward(x)
    np.testing.assert_allclose(bn.moving_var, [0.1 * 1.0, 0.1 * 2.0**-1002, 0.1 * 2.0**-1000], rtol=1e-15)


@pytest.mark.parametrize("staged", [False, True])
def test_a_variance_of_exactly_2_to_1000_is_refused_and_just_below_accepted(staged) -> None:
    bn = BatchNormalization(np.ones(1), np.zeros(1), staged=staged)
    with pytest.raises(ValueError, match="^" + re.escape(
        "the variance of x is too large for float64 in channel 0 (bnlit accepts variances below 2**1000, "
        "about 1e301); scale the data down") + "$"):
        bn.forward(np.array([[2.0**500], [-(2.0**500)]]))  # variance 2**1000 exactly
    np.testing.assert_allclose(bn.forward(np.array([[2.0**499], [-(2.0**499)]]))[:, 0], [1.0, -1.0])


def test_a_moving_variance_of_zero_is_accepted_for_prediction() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), epsilon=0.25, moving_mean=np.zeros(2),
                            moving_var=np.array([0.0, 0.75]))
    out = bn.forward(np.array([[1.0, 2.0], [2.0, 3.0]]), train_flg=False)
    np.testing.assert_array_equal(out, [[2.0, 2.0], [4.0, 3.0]])  # x / sqrt(0.25) and x / sqrt(1)


# ------------------------------------------------------------ messages that name what was wrong
@pytest.mark.parametrize("make, error, message", [
    (lambda: BatchNormalization(np.ones(3), np.zeros(3), epsilon="a"), TypeError,
     "epsilon must be a real number (int or float); got 'a' (str)"),
    (lambda: BatchNormalization(np.ones(3), np.zeros(3), staged="yes"), TypeError,
     "staged must be True or False; got 'yes' (str)"),
    (lambda: BatchNormalization(np.ones(3), np.zeros(3)).forward(np.ma.masked_array(np.ones((2, 3)))), TypeError,
     "x is a masked array, and bnlit does not apply masks; pass x.filled(fill_value) or only the values that count"),
])
def test_refusals_name_the_argument(make, error, message) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        make()


def test_a_read_only_out_is_refused_as_read_only() -> None:
    out = np.zeros((2, 3))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="^" + re.escape(
        "out must be a writeable C-contiguous array of shape (2, 3) and dtype float64; got an array of "
        "shape (2, 3) and dtype float64 that is read-only") + "$"):
        BatchNormalization(np.ones(3), np.zeros(3)).forward(np.array([[1.0, 2, 3], [2, 3, 5]]), out=out)
