"""Exact tests for numeric guards that a mutation run (``make mutation``) found untested.

Each test states a documented contract with numbers chosen by hand (powers of two,
so that every comparison is exact) and asserts the outcome exactly: the values, or
the whole error message. No expected value here comes from the code under test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from bnlit import BatchNormalization
from bnlit._validate import check_staged_nodes, output

TINY = 2.0**-1022  # float64's smallest normal number


# ------------------------------------------------ bnlit._validate.check_staged_nodes
# Contract (its docstring): a channel is suspect when some node of the chain is zero or
# subnormal while the node before it is not zero; it is refused when what the loss may
# cost dx, harm = 2 * max|x_mu| * tiny * (2 + 1 / std) (per channel), exceeds the rounding
# of dx's other path, 2**-52 * max|path_2| (per channel; maxima over every axis but 1).

def _staged_message(node: str, channels: str) -> str:
    return re.escape(
        f"the staged graph's node {node} underflows float64 in {channels} (x's spread and dout "
        f"are too many orders of magnitude apart); the default path (staged=False) computes this backward"
    )


def _chain(*columns: list[float]) -> dict[str, np.ndarray]:
    """Nodes a, b, c, ... each a per-channel row (1, C), as the staged graph keeps them."""
    return {name: np.array([col]) for name, col in zip("abcd", columns)}


# Channel 0: std 0.5, max|x_mu| 4, so harm = 2 * 4 * tiny * (2 + 2) = 2**5 * tiny = 2**-1017,
# and the threshold 2**-52 * max|path_2| equals it at max|path_2| = 2**-965.
# Channel 1 never loses anything; its large x_mu and path_2 must not leak into channel 0.
STD = np.array([0.5, 1.0])
AT_LIMIT = 2.0**-965


def _x_mu(ndim: int) -> np.ndarray:
    """Deviations with per-channel maxima 4 (channel 0) and 2**900 (channel 1), whatever the shape."""
    shape = (3, 2) if ndim == 2 else (2, 2, 3, 3)
    x_mu = np.ones(shape)
    x_mu[:, 1] = -(2.0**900)
    x_mu[(1, 0) + (0,) * (ndim - 2)] = -4.0  # one entry per channel-0 slice is the largest
    return x_mu


def _path_2(ndim: int, channel_0: float) -> np.ndarray:
    shape = (3, 2) if ndim == 2 else (2, 2, 3, 3)
    p = np.zeros(shape)
    p[(0, 0) + (1,) * (ndim - 2)] = -channel_0
    p[:, 1] = 2.0**700
    return p


LOSS_IN_FIRST_LINK = _chain([1.0, 1.0], [0.0, 1.0], [0.0, 1.0])  # 1 -> 0 in channel 0; then 0 -> 0


@pytest.mark.parametrize("ndim", [2, 4])
def test_staged_nodes_refused_just_above_the_rounding_of_the_other_path(ndim) -> None:
    with pytest.raises(ValueError, match=f"^{_staged_message('b', 'channel 0')}$"):
        check_staged_nodes(LOSS_IN_FIRST_LINK, STD, _x_mu(ndim), _path_2(ndim, 0.75 * AT_LIMIT))


@pytest.mark.parametrize("ndim", [2, 4])
def test_staged_nodes_accepted_when_the_harm_equals_the_rounding_of_the_other_path(ndim) -> None:
    check_staged_nodes(LOSS_IN_FIRST_LINK, STD, _x_mu(ndim), _path_2(ndim, AT_LIMIT))


def test_staged_nodes_accepted_when_the_other_path_is_four_times_larger() -> None:
    check_staged_nodes(LOSS_IN_FIRST_LINK, STD, _x_mu(2), _path_2(2, 4 * AT_LIMIT))


def test_staged_nodes_first_underflow_is_named_when_it_is_in_a_later_link() -> None:
    nodes = _chain([1.0, 1.0], [0.5, 1.0], [TINY / 2, 1.0])  # normal, then subnormal
    with pytest.raises(ValueError, match=f"^{_staged_message('c', 'channel 0')}$"):
        check_staged_nodes(nodes, STD, _x_mu(2), _path_2(2, 0.0))


def test_staged_nodes_both_channels_listed() -> None:
    nodes = _chain([1.0, -3.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=f"^{_staged_message('b', 'channels 0, 1')}$"):
        check_staged_nodes(nodes, np.ones(2), np.ones((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize(
    "columns",
    [
        ([1.0, 1.0], [TINY, 1.0]),  # the smallest normal number is no loss
        ([0.0, 1.0], [0.0, 1.0]),  # a zero that stays zero lost nothing
        ([2.0, 1.0], [1.0, 1.0]),  # all normal
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0]),
    ],
    ids=["tiny-is-normal", "zero-stays-zero", "normal", "three-normal"],
)
def test_staged_nodes_without_a_loss_are_accepted(columns) -> None:
    # Harm would be far above the threshold (path_2 is zero): only the absence of a loss accepts.
    # std 0 would divide by zero (an error under the suite's warning filter): nothing is lost,
    # so nothing about the harm is computed.
    check_staged_nodes(_chain(*columns), np.array([0.0, 1.0]), np.ones((2, 2)), np.zeros((2, 2)))


def test_staged_nodes_loss_in_a_channel_that_cannot_harm_dx_is_accepted() -> None:
    """Channel 1 loses a node but its harm is below its threshold; channel 0 loses nothing
    but its harm is far above its (zero) threshold: neither is refused."""
    nodes = _chain([1.0, 1.0], [1.0, 0.0])
    path_2 = np.array([[0.0, 2.0**60]])
    check_staged_nodes(nodes, np.ones(2), np.ones((1, 2)), path_2)


# ------------------------------------------------ bnlit._validate._overlaps (through output)
# Contract: an ``out`` that may share memory with an array the call reads is refused; when
# NumPy cannot decide within its work budget (TooHardError), bnlit refuses too (it cannot
# prove the buffers apart), rather than spend unbounded time on an exact answer.

def _hard_case() -> tuple[np.ndarray, np.ndarray]:
    """A 4-D strided view and a 21-value ``out`` lying in its address range but on none of
    its values: NumPy's exact answer is "disjoint", reached only past a budget of 10000."""
    buf = np.zeros(400_000)
    x = np.lib.stride_tricks.as_strided(buf, shape=(3, 19, 22, 39), strides=(61376, 9152, 69656, 22728))
    return x, buf[84907:84907 + 21]


def test_out_refused_when_numpy_cannot_tell_within_its_budget() -> None:
    x, out = _hard_case()
    assert np.may_share_memory(out, x) and not np.shares_memory(out, x)  # the premise, exactly
    with pytest.raises(np.exceptions.TooHardError if hasattr(np, "exceptions") else np.TooHardError):
        np.shares_memory(out, x, max_work=10_000)
    with pytest.raises(ValueError, match="^out must not share memory with x$"):
        output(out, np.empty(21), "out", {"x": x})


def test_out_in_a_gap_of_a_simple_strided_view_is_accepted() -> None:
    buf = np.zeros(100)
    x = buf[::10]  # values 0, 10, 20, ...: out at 11..19 touches none
    out = buf[11:20]
    assert output(out, np.empty(9), "out", {"x": x}) is out


# ------------------------------------------------ BatchNormalization._corrected
# Contract (corrected_moving_statistics): after k steps,
# (moving - rho**k * start) / (1 - rho**k), the variance clipped at 0.

def test_corrected_variance_is_clipped_at_zero_not_above() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), rho=0.5, moving_mean=[0.0, 0.0], moving_var=[4.0, 4.0],
                            bias_correction=True)
    bn.forward(np.array([[1.0, 2.0], [3.0, 2.0]]))  # batch mean [2, 2]: moving_mean [1, 1]
    bn.moving_var = np.array([1.0, 2.25])  # rebound: (1 - 2) / 0.5 = -2 -> 0;  (2.25 - 2) / 0.5 = 0.5
    mean, var = bn.corrected_moving_statistics()
    np.testing.assert_array_equal(mean, [2.0, 2.0])
    np.testing.assert_array_equal(var, [0.0, 0.5])


def test_corrected_statistics_after_two_and_three_steps_are_exact() -> None:
    """rho 0.5, start (0, 8), the same batch each step (mean 2, variance 1): the moving mean
    after k steps is 2 (1 - 2**-k), the moving variance 8 * 2**-k + (1 - 2**-k); corrected, 2 and 1."""
    bn = BatchNormalization(np.ones(1), np.zeros(1), rho=0.5, moving_mean=[0.0], moving_var=[8.0],
                            bias_correction=True)
    x = np.array([[1.0], [3.0]])
    for k in (1, 2, 3):
        bn.forward(x)
        np.testing.assert_array_equal(bn.moving_mean, [2 * (1 - 2.0**-k)])
        np.testing.assert_array_equal(bn.moving_var, [8 * 2.0**-k + (1 - 2.0**-k)])
        mean, var = bn.corrected_moving_statistics()
        np.testing.assert_array_equal(mean, [2.0])
        np.testing.assert_array_equal(var, [1.0])


def test_corrected_statistics_refuse_moving_statistics_of_another_width() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), bias_correction=True)
    bn.forward(np.array([[1.0, 2.0], [3.0, 5.0]]))
    bn.moving_mean, bn.moving_var = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match=re.escape(
        "bias_correction: the moving statistics have 3 channels but started with 2; "
        "they were rebound to another layer's"
    )):
        bn.corrected_moving_statistics()


# ------------------------------------------------ bnlit.engines.numpy.exact_grad_sums
# Contract: per channel in ``chans``, sum(dout) and sum(dout * (x - mean)) in float64
# without overflow or underflow of any product; NaN for a channel holding inf or NaN.
# Three channels of wildly different magnitudes (each scaled by its own power of two),
# one row per block; expected values summed exactly with fractions.

def _grad_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.array([[-3.0, 1.0], [1.0, 2.0], [5.0, -1.0]])  # (N=3, S=2) small integers
    j = np.array([[1.0, 2.0], [3.0, -2.0], [-1.0, 4.0]])
    x3, dout3 = np.empty((3, 3, 2)), np.empty((3, 3, 2))
    x3[:, 0], dout3[:, 0] = 1.0 + 2.0**-40 * k, 2.0**-1000 * j  # products near 2**-1040
    x3[:, 1], dout3[:, 1] = 2.0**1021 * (5.0 + 0.25 * k), 2.0**-1000 * j  # x + mean would overflow
    x3[:, 2], dout3[:, 2] = 2.0**-1000 * k, 2.0**1000 * j
    return x3, dout3, np.array([1.0, 5.0 * 2.0**1021, 0.0])


def _exact_sums(x3, dout3, mean, chans) -> tuple[list[float], list[float]]:
    from fractions import Fraction as F
    s1 = [float(sum(F(v) for v in dout3[:, c].ravel())) for c in chans]
    s2 = [float(sum(F(d) * (F(x) - F(mean[c])) for d, x in zip(dout3[:, c].ravel(), x3[:, c].ravel())))
          for c in chans]
    return s1, s2


@pytest.mark.parametrize("chans", [[0, 1, 2], [2, 0]], ids=["all", "subset"])
def test_exact_grad_sums_equal_fraction_sums_across_magnitudes(monkeypatch, chans) -> None:
    from bnlit.engines import numpy as kernels
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 48)  # one row of three channels per block
    x3, dout3, mean = _grad_case()
    s1, s2 = kernels.exact_grad_sums(x3, dout3, mean, np.array(chans, dtype=np.intp))
    want1, want2 = _exact_sums(x3, dout3, mean, chans)
    assert min(abs(v) for v in want2) > 0  # nothing cancels to zero by chance
    np.testing.assert_array_equal(s1, want1)
    np.testing.assert_array_equal(s2, want2)


def test_exact_grad_sums_give_nan_only_where_dout_or_x_is_not_finite() -> None:
    from bnlit.engines import numpy as kernels
    x3, dout3, mean = _grad_case()
    dout3[1, 0, 1], dout3[2, 0, 0] = np.inf, -np.inf  # channel 0: dout only (inf - inf, quietly)
    x3[0, 2, 0] = np.nan  # channel 2: x only
    s1, s2 = kernels.exact_grad_sums(x3, dout3, mean, np.array([0, 1, 2], dtype=np.intp))
    want1, want2 = _exact_sums(x3, dout3, mean, [1])
    np.testing.assert_array_equal(s1, [np.nan, want1[0], np.nan])
    np.testing.assert_array_equal(s2, [np.nan, want2[0], np.nan])


# ------------------------------------------------ bnlit.engines.numpy.channel_stats_blockwise
# Contract: per-channel mean and biased variance, whatever the blocks (whole rows, or one
# row split by channels) and the drift; references summed exactly with fractions.

def _fraction_stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from fractions import Fraction as F
    means, variances = [], []
    for c in range(x3.shape[1]):
        values = [F(v) for v in x3[:, c].ravel()]
        m = sum(values) / len(values)
        means.append(float(m))
        variances.append(float(sum((v - m) ** 2 for v in values) / len(values)))
    return np.array(means), np.array(variances)


def _drifting(shape: tuple[int, int, int]) -> np.ndarray:
    """Channel 0 near 2**30 (small integers on top), channel 1 constant 5, the rest near -3."""
    n, c, s = shape
    ints = (np.arange(n * c * s).reshape(shape) * 7) % 11 - 5.0
    x3 = -3.0 + ints
    x3[:, 0] = 2.0**30 + ints[:, 0]
    x3[:, 1] = 5.0
    return x3


BLOCKWISE_CASES = {
    # (shape, BLOCK_BYTES): blocks of 2, 2, 2 and 1 rows; s = 2 below C = 3
    "rows": ((7, 3, 2), 96),
    # one row of 5 channels split into blocks of 2, 2 and 1 channels
    "split-channels": ((1, 5, 4), 64),
    # 2-D input (s = 1), blocks of 2 rows
    "2d": ((8, 3, 1), 48),
}


@pytest.mark.parametrize("case", BLOCKWISE_CASES)
def test_channel_stats_blockwise_match_fraction_statistics(monkeypatch, case) -> None:
    from bnlit.engines import numpy as kernels
    shape, block_bytes = BLOCKWISE_CASES[case]
    monkeypatch.setattr(kernels, "BLOCK_BYTES", block_bytes)
    x3 = _drifting(shape)
    assert len(list(kernels._blocks(x3))) >= 3  # the case really has several blocks

    def not_needed(*args):
        raise AssertionError("exact_stats is for data out of range; this data is in range")

    monkeypatch.setattr(kernels, "exact_stats", not_needed)
    mean, var = kernels.channel_stats_blockwise(x3)
    want_mean, want_var = _fraction_stats(x3)
    assert mean[1] == 5.0 and var[1] == 0.0  # a constant channel: exact, and no variance
    np.testing.assert_allclose(mean, want_mean, rtol=1e-15)
    np.testing.assert_allclose(var, want_var, rtol=1e-13)


def test_channel_stats_blockwise_float32_whose_sums_overflow_float32(monkeypatch) -> None:
    """Sums and squares beyond float32 (about 3.4e38) are taken again in float64, quietly
    (the suite turns any floating-point warning into an error)."""
    from bnlit.engines import numpy as kernels
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 32)  # blocks of 2 rows
    x3 = np.array([3e38, 3e38, -1e38, 2e38, 3e38, 1e38], dtype=np.float32).reshape(6, 1, 1)
    x3 = np.concatenate([x3, np.arange(6, dtype=np.float32).reshape(6, 1, 1)], axis=1)
    mean, var = kernels.channel_stats_blockwise(x3)
    want_mean, want_var = _fraction_stats(x3.astype(np.float64))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-15)
    np.testing.assert_allclose(var, want_var, rtol=1e-14)


# ------------------------------------------------ bnlit.engines.numpy._exact_where_terms_are_large
# Contract: with dx = scale * (dout + slope * (x - mean) + offset), scale = gamma * inv_std,
# slope = -inv_std**2 * sum_dout_xmu / n, offset = -sum_dout / n (bnlit.stats), a channel's
# float32 sums are taken again exactly (exact_grad_sums) where
# |scale| * (|offset| + |slope| * sqrt(var * n)) > 2**120, and kept otherwise.
# Here n = 4 (N 2, S 2), var 1 (sqrt(var * n) = 2), inv_std 2**60, gamma 1; the sums handed
# in are made up, so that a kept channel shows them and a replaced one the true sums.

GIVEN_SUM_DOUT = np.array([2.0**62, 2.0**63, 2.0**62, 0.0, 1.0])
GIVEN_SUM_DOUT_XMU = np.array([0.0, 0.0, 2.0**-60, 2.0**-58, 2.0**-120])
# terms: 2**120 (at the limit: kept), 2**121, 2**120 + 2**119, 2**121 (the slope part alone), 2**58 + 2**59


def _terms_case() -> tuple[np.ndarray, np.ndarray]:
    x3 = (np.arange(20, dtype=np.float32).reshape(2, 5, 2) % 7) - 3
    dout3 = (np.arange(20, dtype=np.float32).reshape(2, 5, 2) % 5) - 1
    return x3, dout3


def _call_terms(gamma: np.ndarray, given_sum_dout: np.ndarray):
    from bnlit.engines import numpy as kernels
    from bnlit.stats import GradSums, Stats
    x3, dout3 = _terms_case()
    stats = Stats(np.zeros(5), np.ones(5), np.full(5, 2.0**60), False)
    return kernels._exact_where_terms_are_large(
        x3, dout3, stats, gamma, GradSums(given_sum_dout.copy(), GIVEN_SUM_DOUT_XMU.copy())
    )


def test_float32_sums_taken_again_exactly_only_where_terms_exceed_2_to_120() -> None:
    x3, dout3 = _terms_case()
    true_dout = dout3.astype(np.float64).sum(axis=(0, 2))
    true_xmu = np.einsum("ncs,ncs->c", dout3.astype(np.float64), x3.astype(np.float64))  # mean 0
    replaced = np.array([False, True, True, True, False])
    assert not np.any(true_dout[replaced] == GIVEN_SUM_DOUT[replaced])  # a replacement shows
    sums = _call_terms(np.ones(5), GIVEN_SUM_DOUT)
    np.testing.assert_array_equal(sums.sum_dout, np.where(replaced, true_dout, GIVEN_SUM_DOUT))
    np.testing.assert_array_equal(sums.sum_dout_xmu, np.where(replaced, true_xmu, GIVEN_SUM_DOUT_XMU))


def test_float32_terms_beyond_2_to_176_are_refused_for_float32() -> None:
    given = GIVEN_SUM_DOUT.copy()
    given[3] = 2.0**119  # terms of channel 3: 2**60 * 2**117 + 2**121 > 2**176
    with pytest.raises(ValueError, match=re.escape(
        "dx cannot be computed in float32 in channel 3: its terms (gamma / std times dout) exceed "
        "the range too far; use float64 data, a larger epsilon or a smaller dout"
    )):
        _call_terms(np.ones(5), given)


def test_float32_terms_that_overflow_float64_are_refused_quietly() -> None:
    """inv_std 2**500 squared times a sum of 2**100 overflows float64: a refusal, and no
    floating-point warning on the way (the suite turns warnings into errors)."""
    from bnlit.engines import numpy as kernels
    from bnlit.stats import GradSums, Stats
    x3, dout3 = _terms_case()
    inv_std = np.ones(5)
    inv_std[2] = 2.0**500
    sums = GradSums(np.ones(5), np.array([1.0, 1.0, 2.0**100, 1.0, 1.0]))
    with pytest.raises(ValueError, match=re.escape("dx cannot be computed in float32 in channel 2: ")):
        kernels._exact_where_terms_are_large(x3, dout3, Stats(np.zeros(5), np.ones(5), inv_std, False), np.ones(5), sums)


# ------------------------------------------------ bnlit.graph.staged_forward / staged_backward
# Called directly (they are public), the staged graph computes quietly whatever it is given:
# a variance or sum beyond float64 is its caller's to refuse (the layer does). Their mean
# is corrected by its own rounding error per channel; the numbers below are exact by hand.

def test_staged_forward_mean_of_values_near_the_largest_float_per_channel() -> None:
    """Both channels' sums overflow, so the mean is taken again about each channel's own
    first value: with opposite signs (a shared first value would overflow channel 1), and
    spreads so unequal that subtracting the mean of the differences, or the mean taken over
    both channels, would leave float64's range."""
    import warnings
    from fractions import Fraction

    from bnlit import staged_forward
    x = np.empty((2, 2, 1, 2))
    x[:, 0] = [[[1.7e308, 1.0e308]]]
    x[:, 1] = [[[-1.7e308, -1.6e308]]]
    exact = [float(sum(Fraction(v) for v in x[:, c].ravel()) / 4) for c in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the variance overflows: quietly
        f = staged_forward(x, np.ones(2), np.full(2, 0.25), 1e-5)
    np.testing.assert_allclose(f.mu.ravel(), exact, rtol=2**-52)
    assert not np.any(np.isfinite(f.var))


def test_staged_forward_corrects_only_the_channel_whose_mean_rounded() -> None:
    """Channel 0, 2**53 + (-4, 8, 8, -8): the float64 mean 2**53 is 1 below the true mean, and
    the variance about the true mean is (25 + 49 + 49 + 81) / 4 = 51 (52 about 2**53).
    Channel 1, (0, 1, 2, 5): mean 2 and variance 3.5, exact, so nothing of channel 0's
    correction may reach it. 4-D, so that the channel axis is not the last one."""
    from bnlit import staged_forward
    x = np.empty((4, 2, 1, 1))
    x[:, 0, 0, 0] = 2.0**53 + np.array([-4.0, 8.0, 8.0, -8.0])
    x[:, 1, 0, 0] = [0.0, 1.0, 2.0, 5.0]
    f = staged_forward(x, np.ones(2), np.zeros(2), 1e-5)
    assert f.var.ravel().tolist() == [51.0, 3.5]
    assert f.mu.ravel()[1] == 2.0
    assert f.x_mu[:, 1].ravel().tolist() == [-2.0, -1.0, 0.0, 3.0]


def test_staged_forward_corrects_a_rounded_mean_against_a_tiny_spread() -> None:
    """2**20 + (0, 0, 2**-32): the mean rounds to 2**20, 2**-32 / 3 below the true one, and
    the variance is 2**-64 * 2 / 9 (not 2**-64 / 3, taken about 2**20). That error is small
    against the values but not against their spread, which is below one."""
    from bnlit import staged_forward
    x = 2.0**20 + np.array([[0.0], [0.0], [2.0**-32]])
    f = staged_forward(x, np.ones(1), np.zeros(1), 0.0)
    np.testing.assert_allclose(f.var.ravel(), [2.0**-64 * 2 / 9], rtol=1e-12)


def _staged_case() -> tuple:
    from bnlit import staged_forward
    x = np.array([[1.0, -3.0], [2.0, 0.5], [4.0, 2.0], [-1.0, 8.0]])
    gamma = np.array([1.5, -0.5])
    return staged_forward(x, gamma, np.zeros(2), 1e-5), x, gamma


def test_staged_backward_takes_a_new_gamma_or_keeps_the_forward_ones() -> None:
    """dx against the exact reference of tests/_state.py, with the forward pass's gamma
    (gamma=None) and with a new one."""
    from _state import reference_training

    from bnlit import staged_backward
    f, x, gamma = _staged_case()
    dout = np.array([[0.5, -1.0], [2.0, 0.25], [-1.5, 1.0], [0.75, 3.0]])

    def reference(g: np.ndarray):
        return reference_training(x, g, np.zeros(2), 1e-5, dout)

    np.testing.assert_allclose(staged_backward(f, dout).grad_x, reference(gamma).dx, rtol=1e-12, atol=1e-15)
    new = np.array([-2.0, 3.0])
    b = staged_backward(f, dout, new)
    np.testing.assert_allclose(b.grad_x, reference(new).dx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b.dgamma, reference(new).dgamma, rtol=1e-12)


def test_staged_backward_sums_a_float32_dout_in_float64() -> None:
    """100,000 float32 values: added in float32 one row at a time, their sum would be off by
    about 1e-4 relative; every node is float64, so the sum is exact to float64's rounding."""
    import math

    from bnlit import staged_backward, staged_forward
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100_000, 1)).astype(np.float32)
    dout = rng.uniform(0.0, 1.0, size=(100_000, 1)).astype(np.float32)
    f = staged_forward(x, np.ones(1), np.zeros(1), 1e-5)
    b = staged_backward(f, dout)
    exact = math.fsum(dout.ravel().tolist())
    assert b.dbeta.dtype == b.grad_x.dtype == np.float64
    assert abs(float(b.dbeta[0]) - exact) <= 1e-12 * exact


@pytest.mark.parametrize("dout, quiet", [
    ([1e308, 1e308, 1e308, 1e308], "dbeta overflows"),
    ([1e308, 1e308, -1e308, -1e308], "inf - inf in dgamma's products"),
])
def test_staged_backward_is_quiet_when_its_sums_leave_float64(dout, quiet) -> None:
    import warnings

    from bnlit import staged_backward
    f, _, _ = _staged_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = staged_backward(f, np.array(dout)[:, None] * np.ones(2))
    assert not np.all(np.isfinite(b.grad_x)), quiet


# ------------------------------------------------ bnlit._validate.check_gradient_sums / check_result_terms
# Five channels of overflowed sums, each with one reason to propagate instead of refusing,
# and one plain channel: only the overflows from finite numbers are named.
def test_gradient_sums_refused_only_where_every_input_is_finite() -> None:
    from bnlit._validate import check_gradient_sums
    inf = np.inf
    sum_dout = np.array([inf, 1.0, inf, inf, inf, 2.0])
    sum_dout_xmu = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -inf])
    mean = np.array([0.0, 0.0, np.nan, 0.0, 0.0, 0.0])    # channel 2: x held NaN
    gamma = np.array([1.0, 1.0, 1.0, inf, 1.0, 1.0])      # channel 3: gamma is infinite
    dout = np.ones((3, 6, 2))
    dout[1, 4, 0] = -inf                                   # channel 4: dout holds infinity
    with pytest.raises(ValueError, match=re.escape(
        "the per-channel gradient sums overflow float64 in channels 0, 5 (dout, or dout times the centred "
        "input, is too large); scale dout down"
    )):
        check_gradient_sums((sum_dout, sum_dout_xmu), mean, dout, gamma)
    sum_dout[0] = sum_dout_xmu[5] = 1.0  # the two refused channels fine: the rest propagates quietly
    check_gradient_sums((sum_dout, sum_dout_xmu), mean, dout, gamma)


def test_result_terms_at_the_float32_limit_are_accepted_and_overflow_is_quiet() -> None:
    import warnings

    from bnlit._validate import check_result_terms
    one = np.ones(1)
    check_result_terms(np.dtype(np.float32), 2.0**88 * one, 0 * one, 2.0**88 * one, one, 1)  # exactly 2**176
    with pytest.raises(ValueError, match=re.escape("dx cannot be computed in float32 in channel 0")):
        check_result_terms(np.dtype(np.float32), 2.0**88 * one, 0 * one, 2.0**89 * one, one, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape("dx cannot be computed in float64 in channel 0")):
            check_result_terms(np.dtype(np.float64), 1e300 * one, 1e300 * one, 0 * one, one, 4)
