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

Inputs of at most ``SMALL_BYTES`` take a plain path instead: whole-array
operations in float64, keeping the centred input for the backward pass. There
the cost is the number of NumPy calls, not memory traffic.

With ``bnlit.set_num_threads(n)``, large inputs are split into ``n`` contiguous
groups of blocks that threads work on at once (NumPy releases the GIL in its loops).

:class:`NumpyEngine` is the engine the layer sees; the module's functions are its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from .._threads import run_split
from ..stats import GradSums, Moments, Stats, input_grad_coefficients, is_centred
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

Block = tuple[slice, slice]  # (rows of the batch axis, channels)
T = TypeVar("T")


def _run(work: Callable[[Sequence[Block]], T], x3: Array) -> list[T]:
    """``work`` on every block of ``x3``: in one go, or split into contiguous groups
    of blocks, one per thread (each thread gets at least ``MIN_BLOCKS_PER_THREAD``)."""
    blocks = list(_blocks(x3))
    return run_split(work, blocks, len(blocks) // MIN_BLOCKS_PER_THREAD)


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


def channel_stats(x3: Array) -> tuple[F64, F64]:
    """Per-channel mean and biased variance, reading ``x3`` from memory once.

    The sums run over ``x - shift``, with ``shift`` the mean of the first block
    (the "shifted data" algorithm): exact enough while the shift lies within a
    spread of the true mean, which a sample of a whole block all but guarantees.
    Should the data drift so far that it does not, the statistics are computed
    again block by block (:func:`channel_stats_blockwise`). Never
    ``E[x^2] - E[x]^2`` on raw data.
    """
    channels, s = x3.shape[1], x3.shape[2]
    rows, chans = next(_blocks(x3))
    if chans != slice(None):  # rows too long for a block, split by channels: the general path
        return channel_stats_blockwise(x3)
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
    offset = s1 / count  # mean - shift_hi
    m2 = s2 - s1 * offset
    if np.any(offset * offset > m2 / count):
        return channel_stats_blockwise(x3)
    return shift_hi[:, 0].astype(np.float64) + offset, np.maximum(m2, 0.0) / count


def channel_stats_blockwise(x3: Array) -> tuple[F64, F64]:
    """Per-channel mean and biased variance, robust to any drift along the batch.

    Each block is centred on its own mean (a two-pass variance inside the cache)
    and the blocks are merged with Chan et al.'s pairwise update.
    """
    channels, s = x3.shape[1], x3.shape[2]
    count = np.zeros(channels)
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    scratch = _scratch(x3)
    for rows, chans in _blocks(x3):
        block = x3[rows, chans]
        n_block = block.shape[0] * s
        shift = _col(_channel_sum(block) / n_block, x3.dtype)
        centred = np.subtract(block, shift, out=scratch[: block.shape[0], : block.shape[1]])
        # Exact moments about the (rounded) shift, corrected to the block's mean.
        s1 = _channel_sum(centred)
        block_m2 = _channel_dot(centred, centred) - s1 * s1 / n_block
        block_mean = shift[:, 0].astype(np.float64) + s1 / n_block
        total = count[chans] + n_block
        delta = block_mean - mean[chans]
        mean[chans] += delta * (n_block / total)
        m2[chans] += block_m2 + delta * delta * (count[chans] * n_block / total)
        count[chans] = total
    return mean, np.maximum(m2, 0.0) / count


def normalize(x3: Array, mean: F64, scale: F64, shift: F64, out3: Array, centred: bool) -> None:
    """``out3 = (x3 - mean) * scale + shift``, per channel, block by block."""
    if centred:
        scale_c, offset_c = _per_channel(scale, x3), _per_channel(shift - mean * scale, x3)

        def work(blocks: Sequence[Block]) -> None:
            for rows, chans in blocks:
                o = np.multiply(x3[rows, chans], scale_c[chans], out=out3[rows, chans])
                o += offset_c[chans]

    else:
        mean_hi, lo = _split(mean, x3)
        scale_c, shift_c = _per_channel(scale, x3), _per_channel(shift - lo * scale, x3)

        def work(blocks: Sequence[Block]) -> None:
            for rows, chans in blocks:
                o = np.subtract(x3[rows, chans], mean_hi[chans], out=out3[rows, chans])
                o *= scale_c[chans]
                o += shift_c[chans]

    _run(work, x3)


def backward_sums(x3: Array, dout3: Array, mean: F64, centred: bool) -> tuple[F64, F64]:
    """Per channel ``sum(dout)`` and ``sum(dout * (x - mean))`` in one pass."""
    channels = x3.shape[1]
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
    # sum(dout * (x - mean)) from the sum about zero (centred) or about mean_hi.
    return sum_dout, sum_dout_x - (mean if centred else lo) * sum_dout


def input_grad(
    x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array, centred: bool
) -> None:
    """``out3 = scale * (dout3 + slope * (x3 - mean) + offset)``, per channel, block by block."""
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


# ------------------------------------------------------------------ the engine
def _is_small(x3: Array) -> bool:
    return x3.nbytes <= SMALL_BYTES


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

    def train_forward(self, x3: Array, gamma: F64, beta: F64, epsilon: float, out3: Array) -> Stats:
        if not _is_small(x3):
            return super().train_forward(x3, gamma, beta, epsilon, out3)
        xf = x3.astype(np.float64, copy=False)
        mean = xf.mean(axis=(0, 2))
        centred_x = xf - mean[:, None]
        var = np.einsum("ncs,ncs->c", centred_x, centred_x) / (x3.shape[0] * x3.shape[2])
        inv_std = 1.0 / np.sqrt(var + epsilon)
        np.add(centred_x * (gamma * inv_std)[:, None], beta[:, None], out=out3, casting="same_kind")
        return Stats(mean, var, inv_std, True, centred_x)

    def backward(self, x3: Array, dout3: Array, stats: Stats, gamma: F64, out3: Array) -> GradSums:
        centred_x = stats.centred_x
        if centred_x is None:
            return super().backward(x3, dout3, stats, gamma, out3)
        # Plain path: the centred input is at hand.
        sums = GradSums(dout3.sum(axis=(0, 2), dtype=np.float64), np.einsum("ncs,ncs->c", dout3, centred_x))
        scale, slope, offset = input_grad_coefficients(stats, gamma, sums, x3.shape[0] * x3.shape[2])
        grad = centred_x * slope[:, None]
        grad += dout3
        grad += offset[:, None]
        np.multiply(grad, scale[:, None], out=out3, casting="same_kind")
        return sums


ENGINE = NumpyEngine()
