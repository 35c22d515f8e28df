"""The NumPy engine: streaming, cache-blocked kernels (bnlit's default engine).

Every kernel works on a ``(N, C, S)`` view of the data: channels on axis 1 and
everything a channel's statistics run over on axes 0 and 2 (``S = H * W`` for
4-D input, ``S = 1`` for 2-D input). The data is walked in blocks of about
``BLOCK_BYTES`` (whole rows of the batch axis when they fit, else groups of
channels of one row), so that each block's temporaries stay in the core's
cache and the full-size arrays are read from memory once per pass. No
full-size temporary is ever made.

Sums inside a block run in the data's dtype (NumPy sums a contiguous run
pairwise); blocks are merged in float64, so float32 data keeps float32 speed
with close to float64 accuracy. Per-channel results are float64.

Extreme magnitudes never go wrong silently. Each kernel checks its
per-channel results (or the constants it is about to use): where a float32
square or product could have overflowed or lost digits to underflow, or a
float64 sum overflowed, those channels are computed again in float64, scaled
by a power of two per channel (:func:`exact_stats`, :func:`exact_grad_sums`,
or a float64 pass over the blocks). So any finite float32 input gets the
accuracy it gets in the ordinary range. Statistics that do not fit in
float64 at all are refused (:func:`bnlit._validate.check_statistics`) before
anything is written.

Inputs of at most ``SMALL_BYTES`` take a plain path instead: whole-array
operations in float64, keeping the centred input for the backward pass. There
the cost is the number of NumPy calls, not memory traffic.

With ``bnlit.set_num_threads(n)``, large inputs are split into ``n`` contiguous
groups of blocks that threads work on at once (NumPy releases the GIL in its loops).

:class:`NumpyEngine` is the engine the layer sees; the module's functions are its parts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from .._threads import run_split
from .._validate import check_result_terms, check_gradient_sums, check_statistics
from ..stats import CENTRED_RATIO, GradSums, Moments, Stats, input_grad_coefficients, stats_from
from ._base import Engine

F64 = NDArray[np.float64]
Array = NDArray[np.floating]

#: Bytes of one block: small enough to stay in a core's L2 cache.
BLOCK_BYTES = 1 << 20
#: Most values of one channel summed in the data's dtype before a float64 merge,
#: and most rows: NumPy sums across rows one by one (not pairwise), so rounding
#: grows with their number.
MAX_BLOCK_VALUES = 4096
MAX_BLOCK_ROWS = 256
#: Below this many bytes everything fits in cache at once: per-call overhead
#: dominates, so per-channel constants stay ``(C, 1)`` columns.
SMALL_BYTES = 1 << 18
#: Threads are used only when each gets at least this many blocks: below that,
#: starting them costs more than they save.
MIN_BLOCKS_PER_THREAD = 8

#: Range checks. A float32 kernel keeps float32 while each per-channel number it
#: multiplies by lies in [2**-COMFORT, 2**COMFORT] (or is zero), each one it adds
#: is below 2**COMFORT, and each mean it subtracts is below 2**MEAN_LIMIT (so that
#: ``x - mean`` cannot overflow). float64 kernels only need the mean bound.
COMFORT = 120
MEAN_LIMIT = {np.dtype(np.float32): 100, np.dtype(np.float64): 969}

Block = tuple[slice, slice]  # (rows of the batch axis, channels)
T = TypeVar("T")


def _run(work: Callable[[Sequence[Block]], T], x3: Array) -> list[T]:
    """``work`` on every block of ``x3``: in one go, or split into contiguous groups
    of blocks, one per thread (each thread gets at least ``MIN_BLOCKS_PER_THREAD``).

    Overflow and underflow are expected here (the results are checked and, where
    they went out of range, computed again), so NumPy does not warn about them; the
    setting is made in each thread, as NumPy keeps it per thread.
    """

    def quiet(blocks: Sequence[Block]) -> T:
        with np.errstate(all="ignore"):
            return work(blocks)

    blocks = list(_blocks(x3))
    return run_split(quiet, blocks, len(blocks) // MIN_BLOCKS_PER_THREAD)


def _add(parts: list[tuple[F64, F64]]) -> tuple[F64, F64]:
    """The threads' partial sums, added in block order."""
    return np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)


def _blocks(x3: Array) -> Iterator[Block]:
    """Cache-sized blocks of ``x3`` that together cover it once."""
    n, channels, s = x3.shape
    row_bytes = channels * s * x3.itemsize
    if row_bytes <= BLOCK_BYTES:
        rows = max(1, min(BLOCK_BYTES // max(row_bytes, 1), MAX_BLOCK_VALUES // s, MAX_BLOCK_ROWS))
        for start in range(0, n, rows):
            yield slice(start, min(start + rows, n)), slice(None)
    else:  # one row is larger than a block: split it by channels
        per = max(1, BLOCK_BYTES // (s * x3.itemsize))
        for row in range(n):
            for c in range(0, channels, per):
                yield slice(row, row + 1), slice(c, min(c + per, channels))


def _scratch(x3: Array) -> Array:
    """One buffer as large as the largest block, reused by every block of a pass."""
    rows, chans = next(_blocks(x3))
    return np.empty_like(x3[rows, chans])


def _col(v: NDArray[np.floating], dtype: np.dtype) -> Array:
    """A per-channel vector shaped ``(C, 1)`` in the data's dtype, to broadcast."""
    return np.asarray(v, dtype=dtype).reshape(-1, 1)


def _per_channel(v: NDArray[np.floating], x3: Array) -> Array:
    """A per-channel vector spread over one row, shape ``(C, S)``, in the data's dtype.

    NumPy's fast (SIMD) loops handle a contiguous operand or a scalar, but not a
    ``(C, 1)`` column broadcast along ``S`` (about 3x slower measured); a full
    row of the constant costs ``C * S`` values once per call and keeps every
    operation on a block contiguous.
    """
    col = _col(v, x3.dtype)
    if x3.shape[2] == 1 or x3.nbytes <= SMALL_BYTES:
        return col
    return np.repeat(col, x3.shape[2], axis=1)


def _split(mean: F64, x3: Array) -> tuple[Array, F64]:
    """``mean`` as ``hi + lo``: ``hi`` in the data's dtype (spread over a row), ``lo``
    the float64 rest.

    ``x - hi`` is exact for ``x`` near ``hi`` (Sterbenz), so ``(x - hi) - lo``
    keeps float32 data with a large mean and a small spread accurate; ``lo``
    is folded into per-channel constants.
    """
    hi = _col(mean, x3.dtype)
    return _per_channel(hi[:, 0], x3), mean - hi[:, 0].astype(np.float64)


def _channel_sum(a: Array) -> F64:
    return a.sum(axis=(0, 2)).astype(np.float64)


def _channel_dot(a: Array, b: Array) -> F64:
    return np.einsum("ncs,ncs->c", a, b).astype(np.float64)


def _fits(dtype: np.dtype, mean: F64, factors: Sequence[F64] = (), terms: Sequence[F64] = ()) -> bool:
    """Whether a kernel may use these per-channel numbers in the data's dtype (see COMFORT).
    Comparisons and ``abs`` raise no floating-point warnings, NaN included."""
    if not (np.abs(mean) < 2.0 ** MEAN_LIMIT[dtype]).all():
        return False
    if dtype == np.float64:
        return True
    low, high = 2.0**-COMFORT, 2.0**COMFORT
    return all(bool(((v == 0) | ((np.abs(v) >= low) & (np.abs(v) <= high))).all()) for v in factors) and all(
        bool((np.abs(v) <= high).all()) for v in terms
    )


def _tiny(dtype: np.dtype) -> tuple[float, float]:
    """A variance and a mean below which squares of deviations may have underflowed
    in ``dtype`` (and the variance lost digits)."""
    return _TINY[np.dtype(dtype)]


_TINY = {
    np.dtype(t): (2.0 ** (np.finfo(t).minexp + 26), 2.0 ** (np.finfo(t).minexp // 2 + np.finfo(t).nmant + 2))
    for t in (np.float32, np.float64)
}
#: Below this times the count, a sum of products of ``dout`` and ``x - mean`` may have
#: lost digits to underflow.
_TINY_PRODUCT = {np.dtype(t): 2.0 ** (np.finfo(t).minexp + 36) for t in (np.float32, np.float64)}
_F64 = np.dtype(np.float64)
_NONE = np.zeros(0, dtype=np.intp)


def _row_blocks(x3: Array, channels: int) -> Iterator[slice]:
    """Blocks of whole rows for a float64 pass over ``channels`` channels."""
    rows = max(1, BLOCK_BYTES // max(channels * x3.shape[2] * 8, 1))
    for start in range(0, x3.shape[0], rows):
        yield slice(start, min(start + rows, x3.shape[0]))


def _exponents(largest: F64) -> NDArray[np.int64]:
    """Per channel the power of two that brings ``largest`` into [0.5, 1) (0 when zero or not finite)."""
    ok = np.isfinite(largest) & (largest > 0)
    return np.where(ok, np.frexp(np.where(ok, largest, 1.0))[1], 0).astype(np.int64)


def exact_stats(x3: Array, chans: NDArray[np.intp]) -> tuple[F64, F64]:
    """Mean and biased variance of channels ``chans`` in float64, each channel scaled
    by a power of two so that no square overflows or underflows (two passes).

    A variance too large for float64 comes back as ``inf``; a channel holding NaN
    or infinity gets NaN statistics, as its values would give.
    """
    s = x3.shape[2]
    largest = np.zeros(len(chans))
    with np.errstate(all="ignore"):
        for rows in _row_blocks(x3, len(chans)):
            largest = np.maximum(largest, np.abs(x3[rows][:, chans]).max(axis=(0, 2)))
        exps = _exponents(largest)
        down = -exps[:, None]  # ldexp of the data itself: 2**-e alone overflows for subnormal data
        count, mean, m2 = 0, np.zeros(len(chans)), np.zeros(len(chans))  # mean: about origin
        # Everything about each channel's first value: a constant channel's mean comes out
        # exact, and block means merge as offsets (their rounding stays below the spread's).
        origin = np.ldexp(x3[0, chans, 0].astype(np.float64), -exps)
        for rows in _row_blocks(x3, len(chans)):
            block = np.ldexp(x3[rows][:, chans].astype(np.float64), down)
            n_block = block.shape[0] * s
            block -= origin[:, None]
            block_mean = block.mean(axis=(0, 2))
            block -= block_mean[:, None]
            total = count + n_block
            delta = block_mean - mean
            mean += delta * (n_block / total)
            m2 += np.einsum("ncs,ncs->c", block, block) + delta * delta * (count * n_block / total)
            count = total
        bad = ~np.isfinite(largest)
        mean[bad] = m2[bad] = np.nan
        return np.ldexp(origin + mean, exps), np.ldexp(m2 / count, 2 * exps)


def _checked_stats(x3: Array, mean: F64, var: F64) -> tuple[F64, F64]:
    """The fast statistics, with the channels where they may be wrong (not finite:
    overflow or NaN data; or so small that squares may have underflowed)
    computed again by :func:`exact_stats`."""
    small_var, small_mean = _tiny(x3.dtype)
    mask = ~(np.isfinite(mean) & np.isfinite(var)) | ((var < small_var) & (np.abs(mean) < small_mean))
    if mask.any():
        unsure = np.flatnonzero(mask)
        mean, var = mean.copy(), var.copy()
        mean[unsure], var[unsure] = exact_stats(x3, unsure)
    return mean, var


def channel_stats(x3: Array) -> tuple[F64, F64]:
    """Per-channel mean and biased variance, reading ``x3`` from memory once.

    The sums run over ``x - shift``, with ``shift`` the mean of the first block
    (the "shifted data" algorithm): exact enough while the shift lies within a
    spread of the true mean, which a sample of a whole block all but guarantees.
    Should the data drift so far that it does not, the statistics are computed
    again block by block (:func:`channel_stats_blockwise`). Never
    ``E[x^2] - E[x]^2`` on raw data. Channels out of the dtype's safe range are
    computed again exactly (:func:`exact_stats`).
    """
    channels, s = x3.shape[1], x3.shape[2]
    rows, chans = next(_blocks(x3))
    if chans != slice(None):  # rows too long for a block, split by channels: the general path
        return channel_stats_blockwise(x3)
    with np.errstate(all="ignore"):
        first = x3[rows]
        first_mean = _channel_sum(first) / (first.shape[0] * s)
        shift_hi = _per_channel(first_mean, x3)

    def sums(blocks: Sequence[Block]) -> tuple[F64, F64]:
        s1, s2 = np.zeros(channels), np.zeros(channels)
        scratch = _scratch(x3)
        for rows, _ in blocks:
            block = x3[rows]
            centred = np.subtract(block, shift_hi, out=scratch[: block.shape[0]])
            s1 += _channel_sum(centred)
            s2 += _channel_dot(centred, centred)
        return s1, s2

    s1, s2 = _add(_run(sums, x3))
    count = x3.shape[0] * s
    with np.errstate(all="ignore"):
        offset = s1 / count  # mean - shift_hi
        m2 = s2 - s1 * offset
        if np.any(offset * offset > m2 / count):
            return channel_stats_blockwise(x3)
        mean, var = shift_hi[:, 0].astype(np.float64) + offset, np.maximum(m2, 0.0) / count
    return _checked_stats(x3, mean, var)


def channel_stats_blockwise(x3: Array) -> tuple[F64, F64]:
    """Per-channel mean and biased variance, robust to any drift along the batch.

    Each block is centred on its own mean (a two-pass variance inside the cache)
    and the blocks are merged with Chan et al.'s pairwise update.
    """
    channels, s = x3.shape[1], x3.shape[2]
    count = np.zeros(channels)
    mean = np.zeros(channels)  # about origin
    m2 = np.zeros(channels)
    scratch = _scratch(x3)
    # Block means are merged as offsets from each channel's first value: merged as
    # absolute values, their rounding (an ulp of a large mean) would enter the variance.
    origin = x3[0, :, 0].astype(np.float64)
    with np.errstate(all="ignore"):
        for rows, chans in _blocks(x3):
            block = x3[rows, chans]
            n_block = block.shape[0] * s
            shift = _col(_channel_sum(block) / n_block, x3.dtype)
            centred = np.subtract(block, shift, out=scratch[: block.shape[0], : block.shape[1]])
            # Exact moments about the (rounded) shift, corrected to the block's mean.
            s1 = _channel_sum(centred)
            block_m2 = _channel_dot(centred, centred) - s1 * s1 / n_block
            block_mean = (shift[:, 0].astype(np.float64) - origin[chans]) + s1 / n_block
            total = count[chans] + n_block
            delta = block_mean - mean[chans]
            mean[chans] += delta * (n_block / total)
            m2[chans] += block_m2 + delta * delta * (count[chans] * n_block / total)
            count[chans] = total
        var = np.maximum(m2, 0.0) / count
        mean = origin + mean
    return _checked_stats(x3, mean, var)


def normalize(x3: Array, mean: F64, scale: F64, shift: F64, out3: Array, centred: bool) -> None:
    """``out3 = (x3 - mean) * scale + shift``, per channel, block by block."""
    with np.errstate(all="ignore"):
        mean_scale = mean * scale
    if not _fits(x3.dtype, mean, (scale,), (shift, mean_scale)):
        _normalize_f64(x3, mean, scale, shift, out3)
    elif centred:
        scale_c, offset_c = _per_channel(scale, x3), _per_channel(shift - mean_scale, x3)

        def work(blocks: Sequence[Block]) -> None:
            for rows, chans in blocks:
                o = np.multiply(x3[rows, chans], scale_c[chans], out=out3[rows, chans])
                o += offset_c[chans]

        _run(work, x3)
    else:
        mean_hi, lo = _split(mean, x3)
        scale_c, shift_c = _per_channel(scale, x3), _per_channel(shift - lo * scale, x3)

        def work(blocks: Sequence[Block]) -> None:
            for rows, chans in blocks:
                o = np.subtract(x3[rows, chans], mean_hi[chans], out=out3[rows, chans])
                o *= scale_c[chans]
                o += shift_c[chans]

        _run(work, x3)


def _normalize_f64(x3: Array, mean: F64, scale: F64, shift: F64, out3: Array) -> None:
    """:func:`normalize` in float64 for numbers out of the data dtype's safe range.

    ``x - mean`` is taken on halves, so that it cannot overflow even for float64
    data near the largest float (halving and doubling are exact).
    """
    half_mean, scale_c, shift_c = (0.5 * mean)[:, None], scale[:, None], shift[:, None]

    def work(blocks: Sequence[Block]) -> None:
        for rows, chans in blocks:
            b = x3[rows, chans].astype(np.float64)
            b *= 0.5
            b -= half_mean[chans]
            b *= scale_c[chans]
            b *= 2.0
            b += shift_c[chans]
            out3[rows, chans] = b

    _run(work, x3)


def backward_sums(x3: Array, dout3: Array, mean: F64, centred: bool) -> tuple[F64, F64]:
    """Per channel ``sum(dout)`` and ``sum(dout * (x - mean))`` in one pass.

    Channels whose sums overflowed, or came out so small that products may have
    underflowed, are summed again exactly (:func:`exact_grad_sums`).
    """
    channels = x3.shape[1]
    with np.errstate(all="ignore"):
        mean_hi, lo = _split(mean, x3)

    def sums(blocks: Sequence[Block]) -> tuple[F64, F64]:
        sum_dout, sum_dout_x = np.zeros(channels), np.zeros(channels)
        scratch = None if centred else _scratch(x3)
        for rows, chans in blocks:
            d, x = dout3[rows, chans], x3[rows, chans]
            if scratch is not None:  # far from zero: centre exactly first
                x = np.subtract(x, mean_hi[chans], out=scratch[: d.shape[0], : d.shape[1]])
            sum_dout[chans] += _channel_sum(d)
            sum_dout_x[chans] += _channel_dot(d, x)
        return sum_dout, sum_dout_x

    sum_dout, sum_dout_x = _add(_run(sums, x3))
    with np.errstate(all="ignore"):
        # sum(dout * (x - mean)) from the sum about zero (centred) or about mean_hi.
        sum_dout_xmu = sum_dout_x - (mean if centred else lo) * sum_dout
        # A zero float32 sum may be products that all underflowed; in float64 that needs
        # values below 1e-154, and a zero is taken as exact (a constant channel's).
        unsure = _unsure_grad_sums(
            x3.dtype, x3.shape[0] * x3.shape[2], sum_dout, sum_dout_xmu, zero_is_sure=x3.dtype == np.float64
        )
    if unsure.size:
        sum_dout, sum_dout_xmu = sum_dout.copy(), sum_dout_xmu.copy()
        sum_dout[unsure], sum_dout_xmu[unsure] = exact_grad_sums(x3, dout3, mean, unsure)
    return sum_dout, sum_dout_xmu


def _unsure_grad_sums(
    dtype: np.dtype, count: int, sum_dout: F64, sum_dout_xmu: F64, zero_is_sure: bool
) -> NDArray[np.intp]:
    """Channels whose gradient sums are not finite, or so small that products of
    ``dout`` and ``x - mean`` may have underflowed in ``dtype``."""
    small = count * _TINY_PRODUCT[np.dtype(dtype)]
    size = np.abs(sum_dout_xmu)
    if math.isfinite(sum_dout.sum() + size.sum()) and size.min() >= small:
        return _NONE  # the common case, in three reductions
    tiny = (size < small) & ((size > 0) if zero_is_sure else True)
    mask = ~(np.isfinite(sum_dout) & np.isfinite(sum_dout_xmu)) | tiny
    return np.flatnonzero(mask) if mask.any() else _NONE


def exact_grad_sums(x3: Array, dout3: Array, mean: F64, chans: NDArray[np.intp]) -> tuple[F64, F64]:
    """``sum(dout)`` and ``sum(dout * (x - mean))`` of channels ``chans`` in float64,
    ``dout`` and ``x - mean`` each scaled by a power of two per channel so that no
    product overflows or underflows (two passes). Sums too large for float64 come
    back as ``inf``."""
    m = mean[chans][:, None]
    largest_d, largest_e = np.zeros(len(chans)), np.zeros(len(chans))
    with np.errstate(all="ignore"):
        for rows in _row_blocks(x3, len(chans)):
            largest_d = np.maximum(largest_d, np.abs(dout3[rows][:, chans]).max(axis=(0, 2)))
            largest_e = np.maximum(largest_e, np.abs(x3[rows][:, chans] - m).max(axis=(0, 2)))
        exp_d, exp_e = _exponents(largest_d), _exponents(largest_e)
        s1, s2 = np.zeros(len(chans)), np.zeros(len(chans))
        for rows in _row_blocks(x3, len(chans)):
            d = np.ldexp(dout3[rows][:, chans].astype(np.float64), -exp_d[:, None])
            e = np.ldexp(x3[rows][:, chans] - m, -exp_e[:, None])
            s1 += d.sum(axis=(0, 2))
            s2 += np.einsum("ncs,ncs->c", d, e)
        bad = ~(np.isfinite(largest_d) & np.isfinite(largest_e))
        s1[bad] = s2[bad] = np.nan
        return np.ldexp(s1, exp_d), np.ldexp(s2, exp_d + exp_e)


def input_grad(
    x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array, centred: bool
) -> None:
    """``out3 = scale * (dout3 + slope * (x3 - mean) + offset)``, per channel, block by block."""
    with np.errstate(all="ignore"):
        # offset is added before the final product: it must be a normal float32 too
        if not _fits(x3.dtype, mean, (scale, slope, offset, offset - slope * mean), (slope * mean, scale * offset)):
            return _input_grad_f64(x3, dout3, mean, scale, slope, offset, out3)
        scale_c, slope_c = _per_channel(scale, x3), _per_channel(slope, x3)
        mean_hi, lo = _split(mean, x3)
        # Centred: slope * x + (offset - slope * mean); else slope * (x - mean_hi) + (offset - slope * lo).
        offset_c = _per_channel(offset - slope * (mean if centred else lo), x3)

    def work(blocks: Sequence[Block]) -> None:
        for rows, chans in blocks:
            if centred:
                o = np.multiply(x3[rows, chans], slope_c[chans], out=out3[rows, chans])
            else:
                o = np.subtract(x3[rows, chans], mean_hi[chans], out=out3[rows, chans])
                o *= slope_c[chans]
            o += dout3[rows, chans]
            o += offset_c[chans]
            o *= scale_c[chans]

    _run(work, x3)


def _input_grad_f64(
    x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array
) -> None:
    """:func:`input_grad` in float64, for numbers out of the data dtype's safe range."""
    mean_c, scale_c, slope_c, offset_c = (v[:, None] for v in (mean, scale, slope, offset))

    def work(blocks: Sequence[Block]) -> None:
        for rows, chans in blocks:
            b = x3[rows, chans] - mean_c[chans]  # float64: the constants are
            b *= slope_c[chans]
            b += dout3[rows, chans]
            b += offset_c[chans]
            b *= scale_c[chans]
            out3[rows, chans] = b

    _run(work, x3)


# ------------------------------------------------------------------ the engine
def _is_small(x3: Array) -> bool:
    return x3.nbytes <= SMALL_BYTES


def _exact_where_terms_are_large(x3: Array, dout3: Array, stats: Stats, gamma: F64, sums: GradSums) -> GradSums:
    """float32 gradient sums taken again exactly where ``dx``'s terms leave float32's range.

    ``dx = scale * (dout + slope * (x - mean) + offset)`` can be small while its
    terms are beyond float32 (a tiny epsilon, a huge dout); the float32 sums' rounding,
    a few ulps of those terms, would then overflow. In float64 (here and in
    :func:`input_grad`, which sees the same terms) it stays a rounding error.
    """
    count = x3.shape[0] * x3.shape[2]
    with np.errstate(all="ignore"):
        scale, slope, offset = input_grad_coefficients(stats, gamma, sums, count)
        terms = np.abs(scale) * (np.abs(offset) + np.abs(slope) * np.sqrt(stats.var * count))
        large = ~(terms <= 2.0**COMFORT)
    if not large.any():
        return sums
    check_result_terms(x3.dtype, scale, slope, offset, stats.var, count)  # beyond even float64's help
    chans = np.flatnonzero(large)
    sum_dout, sum_dout_xmu = sums.sum_dout.copy(), sums.sum_dout_xmu.copy()
    sum_dout[chans], sum_dout_xmu[chans] = exact_grad_sums(x3, dout3, stats.mean, chans)
    return GradSums(sum_dout, sum_dout_xmu)


def _strictly_centred(stats: Stats) -> Stats:
    """``stats`` centred only if the mean lies within a few spreads of the data itself.

    :func:`bnlit.stats.is_centred` (the rule restated here) measures the mean against ``sqrt(var + epsilon)``;
    for a batch whose variance is far below ``epsilon`` the outputs are far smaller
    than that, and ``x * scale + (shift - mean * scale)`` would cancel them away.
    """
    if stats.centred and not (np.abs(stats.mean) <= CENTRED_RATIO * np.sqrt(stats.var)).all():
        return dataclasses.replace(stats, centred=False)
    return stats


class NumpyEngine(Engine):
    """The streaming kernels above behind the engine contract, with a plain
    whole-array path for small inputs (where the number of NumPy calls, not
    memory traffic, is the cost)."""

    name = "numpy"

    def moments(self, x3: Array) -> Moments:
        return Moments(x3.shape[0] * x3.shape[2], *channel_stats(x3))

    def normalize(self, x3: Array, mean: F64, scale: F64, shift: F64, out3: Array, centred: bool) -> None:
        normalize(x3, mean, scale, shift, out3, centred)

    def grad_sums(self, x3: Array, dout3: Array, mean: F64, centred: bool) -> GradSums:
        return GradSums(*backward_sums(x3, dout3, mean, centred))

    def input_grad(
        self, x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array, centred: bool
    ) -> None:
        input_grad(x3, dout3, mean, scale, slope, offset, out3, centred)

    def normalize_with(self, x3: Array, stats: Stats, gamma: F64, beta: F64, out3: Array) -> None:
        super().normalize_with(x3, _strictly_centred(stats), gamma, beta, out3)

    def train_forward(self, x3: Array, gamma: F64, beta: F64, epsilon: float, out3: Array) -> Stats:
        # The statistics are checked before anything is written: a variance out of
        # float64's range is refused (bnlit._validate), not normalised with.
        if not _is_small(x3):
            m = self.moments(x3)
            with np.errstate(all="ignore"):
                stats = stats_from(m.mean, m.var, epsilon)
            check_statistics(stats.mean, stats.var, stats.inv_std, epsilon)
            self.normalize_with(x3, stats, gamma, beta, out3)
            return stats
        with np.errstate(all="ignore"):
            xf = x3.astype(np.float64, copy=False)
            mean = xf.mean(axis=(0, 2))
            centred_x = xf - mean[:, None]
            var = np.einsum("ncs,ncs->c", centred_x, centred_x) / (x3.shape[0] * x3.shape[2])
            new_mean, new_var = (v.copy() for v in _checked_stats(xf, mean, var))  # float64 data out of range
            # The deviations' own mean is the error of ``mean`` (float64 cannot hold the
            # mean of, say, eleven copies of 8.3e165): where it is not negligible against
            # the spread (above a millionth of it), the channel is taken again exactly.
            drift = np.add.reduce(centred_x, axis=(0, 2)) / (x3.shape[0] * x3.shape[2])
            inexact = (drift != 0) & ~(drift * drift <= 2.0**-40 * var)
            if inexact.any():
                chans = np.flatnonzero(inexact)
                new_mean[chans], new_var[chans] = exact_stats(xf, chans)
            changed = (new_mean != mean) | (new_var != var)
            if changed.any():
                redo = np.flatnonzero(changed)
                mean, var = new_mean, new_var
                centred_x[:, redo] = xf[:, redo] - mean[redo, None]
            inv_std = 1.0 / np.sqrt(var + epsilon)
        check_statistics(mean, var, inv_std, epsilon)
        np.add(centred_x * (gamma * inv_std)[:, None], beta[:, None], out=out3, casting="same_kind")
        return Stats(mean, var, inv_std, True, centred_x)

    def backward(self, x3: Array, dout3: Array, stats: Stats, gamma: F64, out3: Array) -> GradSums:
        centred_x = stats.centred_x
        if centred_x is None:
            stats = _strictly_centred(stats)
            sums = self.grad_sums(x3, dout3, stats.mean, stats.centred)
            if x3.dtype == np.float32:
                sums = _exact_where_terms_are_large(x3, dout3, stats, gamma, sums)
            check_gradient_sums(sums, stats.mean, dout3)
            count = x3.shape[0] * x3.shape[2]
            with np.errstate(all="ignore"):
                scale, slope, offset = input_grad_coefficients(stats, gamma, sums, count)
            check_result_terms(x3.dtype, scale, slope, offset, stats.var, count)
            self.input_grad(x3, dout3, stats.mean, scale, slope, offset, out3, stats.centred)
            return sums
        # Plain path: the centred input is at hand.
        with np.errstate(all="ignore"):
            sum_dout = dout3.sum(axis=(0, 2), dtype=np.float64)
            sum_dout_xmu = np.einsum("ncs,ncs->c", dout3, centred_x)
            count = x3.shape[0] * x3.shape[2]
            unsure = _unsure_grad_sums(_F64, count, sum_dout, sum_dout_xmu, zero_is_sure=True)
            if unsure.size:
                sum_dout[unsure], sum_dout_xmu[unsure] = exact_grad_sums(x3, dout3, stats.mean, unsure)
        check_gradient_sums((sum_dout, sum_dout_xmu), stats.mean, dout3)
        sums = GradSums(sum_dout, sum_dout_xmu)
        with np.errstate(all="ignore"):
            scale, slope, offset = input_grad_coefficients(stats, gamma, sums, count)
        check_result_terms(x3.dtype, scale, slope, offset, stats.var, count)
        grad = centred_x * slope[:, None]
        grad += dout3
        grad += offset[:, None]
        np.multiply(grad, scale[:, None], out=out3, casting="same_kind")
        return sums


ENGINE = NumpyEngine()
