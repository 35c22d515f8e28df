"""Streaming kernels behind the default (fast) path of the layer.

Every kernel works on a ``(N, C, S)`` view of the data: channels on axis 1 and
everything a channel's statistics run over on axes 0 and 2 (``S = H * W`` for
4-D input, ``S = 1`` for 2-D input). The batch axis is walked in blocks of about
``BLOCK_BYTES`` so that each block's temporaries stay in cache and the full-size
arrays are read from memory only once per pass; no full-size temporary is made.

Per-channel results are float64, whatever the data's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
Array = NDArray[np.floating]

#: Bytes of one block of the batch axis: small enough for a core's L2 cache.
BLOCK_BYTES = 1 << 20


def _row_blocks(x3: Array) -> Iterator[slice]:
    """Slices of axis 0 whose blocks hold about ``BLOCK_BYTES`` each."""
    n = x3.shape[0]
    row_bytes = max(1, x3[:1].nbytes)
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _scratch(x3: Array) -> Array:
    """One block-sized buffer, reused by every block of a pass."""
    step = max(1, BLOCK_BYTES // max(1, x3[:1].nbytes))
    return np.empty((min(step, x3.shape[0]),) + x3.shape[1:], dtype=x3.dtype)


def _col(v: NDArray[np.floating], dtype: np.dtype) -> Array:
    """A per-channel vector shaped ``(C, 1)`` in the data's dtype, to broadcast."""
    return np.asarray(v, dtype=dtype).reshape(-1, 1)


def _split(mean: F64, dtype: np.dtype) -> tuple[Array, F64]:
    """``mean`` as ``hi + lo``: ``hi`` in the data's dtype, ``lo`` the float64 rest.

    ``x - hi`` is exact for ``x`` near ``hi`` (Sterbenz), so ``(x - hi) - lo``
    keeps float32 data with a large mean and a small spread accurate; ``lo``
    is folded into per-channel constants.
    """
    hi = _col(mean, dtype)
    return hi, mean - hi[:, 0].astype(np.float64)


def _channel_sum(a: Array) -> F64:
    return a.sum(axis=(0, 2), dtype=np.float64)


def _channel_dot(a: Array, b: Array) -> F64:
    return np.einsum("ncs,ncs->c", a, b, dtype=np.float64)


def channel_stats(x3: Array) -> tuple[F64, F64]:
    """Per-channel mean and biased variance in one streaming pass over ``x3``.

    Each block is centred on its own mean (a two-pass variance inside the cache)
    and the blocks are merged with Chan et al.'s pairwise update, so the result
    never suffers the cancellation of ``E[x^2] - E[x]^2``.
    """
    channels, s = x3.shape[1], x3.shape[2]
    count = 0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    scratch = _scratch(x3)
    for rows in _row_blocks(x3):
        block = x3[rows]
        n_block = block.shape[0] * s
        shift = _col(_channel_sum(block) / n_block, x3.dtype)
        centred = np.subtract(block, shift, out=scratch[: block.shape[0]])
        # Exact moments about the (rounded) shift, corrected to the block's mean.
        s1 = _channel_sum(centred)
        block_m2 = _channel_dot(centred, centred) - s1 * s1 / n_block
        block_mean = shift[:, 0].astype(np.float64) + s1 / n_block
        total = count + n_block
        delta = block_mean - mean
        mean += delta * (n_block / total)
        m2 += block_m2 + delta * delta * (count * n_block / total)
        count = total
    return mean, np.maximum(m2, 0.0) / count


def normalize(x3: Array, mean: F64, scale: F64, shift: F64, out3: Array) -> None:
    """``out3 = (x3 - mean) * scale + shift``, per channel, block by block."""
    mean_c, lo = _split(mean, x3.dtype)
    scale_c, shift_c = _col(scale, x3.dtype), _col(shift - lo * scale, x3.dtype)
    for rows in _row_blocks(x3):
        o = out3[rows]
        np.subtract(x3[rows], mean_c, out=o)
        o *= scale_c
        o += shift_c


def backward_sums(x3: Array, dout3: Array, mean: F64) -> tuple[F64, F64]:
    """Per channel ``sum(dout)`` and ``sum(dout * (x - mean))`` in one pass."""
    mean_c, lo = _split(mean, x3.dtype)
    channels = x3.shape[1]
    sum_dout = np.zeros(channels)
    sum_dout_xmu = np.zeros(channels)
    scratch = _scratch(x3)
    for rows in _row_blocks(x3):
        d = dout3[rows]
        centred = np.subtract(x3[rows], mean_c, out=scratch[: d.shape[0]])
        sum_dout += _channel_sum(d)
        sum_dout_xmu += _channel_dot(d, centred)
    return sum_dout, sum_dout_xmu - lo * sum_dout


def input_grad(
    x3: Array, dout3: Array, mean: F64, a: F64, b: F64, c: F64, out3: Array
) -> None:
    """``out3 = a * dout3 + b * (x3 - mean) + c``, per channel, block by block."""
    mean_c, lo = _split(mean, x3.dtype)
    a_c, b_c, c_c = _col(a, x3.dtype), _col(b, x3.dtype), _col(c - b * lo, x3.dtype)
    scratch = _scratch(x3)
    for rows in _row_blocks(x3):
        o = out3[rows]
        np.subtract(x3[rows], mean_c, out=o)
        o *= b_c
        o += np.multiply(dout3[rows], a_c, out=scratch[: o.shape[0]])
        o += c_c
