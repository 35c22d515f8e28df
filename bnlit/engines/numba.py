"""The numba engine: fused, compiled loops that read each array the fewest times.

Needs the optional package numba (``pip install "bnlit[fast]"``). Every kernel
works on a C-contiguous ``(N, C, S)`` view of the data, as the NumPy engine
does (channels on axis 1; ``S = H * W`` for 4-D input, ``S = 1`` for 2-D
input), and moves the fewest bytes a step allows:

=================  ====================  ==========================
step               reads                 writes
=================  ====================  ==========================
statistics         ``x`` once            per-channel sums
normalize          ``x`` once            ``out`` once
gradient sums      ``x``, ``dout`` once  per-channel sums
input gradient     ``x``, ``dout`` once  ``out`` once
=================  ====================  ==========================

Every sum is formed in float64 (each value widened as it is read), whatever
the data's dtype. Statistics are sums of ``x - k`` with ``k`` a value of the
same channel (the shifted-data algorithm), so data far from zero keeps its
digits. The element-wise steps compute in the data's dtype from ``x - hi``,
with ``hi`` the mean rounded to that dtype (exact for values near the mean)
and the rest of the mean folded into per-channel constants, as the NumPy
engine does: float32 data then costs float32 arithmetic.

Every loop reads whole rows of the batch, in memory order. When a channel's
values lie in runs of at least ``PLANE_MIN`` (4-D input with large ``H * W``),
each run is reduced in registers. Otherwise (2-D input, small images) each
position of a row keeps its own running sums, folded into its channel at the
end of a tile.

Reductions are cut into tiles of whole rows (about ``TILE_BYTES``) that depend
on the shape alone. Each tile's sums are kept apart and merged in tile order,
so the result is the same, bit for bit, whatever the number of threads
(``bnlit.set_num_threads``) that shared the tiles out. Moments of tiles merge
with Chan et al.'s update, which keeps data that drifts along the batch
accurate too.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
from typing import Any, Callable, Optional

import numpy as np
from numpy.typing import NDArray

from .._threads import get_num_threads
from ..stats import GradSums, Moments
from ._base import Engine

try:  # optional: without it the engine refuses politely (see bnlit.engines.get_engine)
    numba: Any = importlib.import_module("numba")
except ImportError:
    numba = None

F64 = NDArray[np.float64]
Array = NDArray[np.floating]

#: What to install to get this engine.
INSTALL = 'pip install "bnlit[fast]"'
#: Whether numba is importable, so that this engine can run.
AVAILABLE = numba is not None
#: Shortest run of one channel's values (``H * W``) that the plane loops take;
#: shorter runs are read as whole rows.
PLANE_MIN = 32
#: Bytes of one tile of a reduction (whole rows of the batch, at most ``MAX_ROWS``):
#: tiles are what threads share out.
TILE_BYTES = 1 << 20
MAX_ROWS = 1024
#: Most positions (``channels * S``) one tile of the row loops keeps sums for:
#: two float64 vectors of this length stay in a core's L1/L2 cache.
ROW_WIDTH = 4096
#: Threads are used only when each gets at least this many bytes of input.
MIN_BYTES_PER_THREAD = 1 << 20


# ------------------------------------------------------------- compilation
def _writable(folder: str) -> bool:
    """Whether ``folder`` exists (or can be made) and takes a new file, as numba checks."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


HERE = os.path.dirname(os.path.abspath(__file__))


def cache_folder(here: str = HERE) -> Optional[str]:
    """Where the compiled kernels are cached on disk, or None when nowhere is writable.

    ``NUMBA_CACHE_DIR`` when set; else the package's own ``__pycache__``;
    else (a read-only install) a ``bnlit`` folder in the user's cache
    directory, or in the temporary directory.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    candidates = [os.path.join(here, "__pycache__")]
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(user_cache, "bnlit", "numba"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"bnlit-numba-{os.getuid() if hasattr(os, 'getuid') else 0}"))
    return next((folder for folder in candidates if _writable(folder)), None)


#: Where this process caches the kernels (None: nowhere writable, so they compile every time).
CACHE_FOLDER = cache_folder() if AVAILABLE else None
if CACHE_FOLDER is not None and CACHE_FOLDER != os.path.join(HERE, "__pycache__"):
    numba.config.CACHE_DIR = CACHE_FOLDER  # numba finds the package's own folder alone, not a fallback


def _jit(reduce: bool = False, parallel: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """numba's ``njit``, cached on disk, releasing the GIL; ``reduce`` lets the compiler
    reassociate the sums of one tile (to vectorize them: same order every run)."""

    def decorate(function: Callable[..., Any]) -> Any:
        if numba is None:
            return function
        return numba.njit(
            cache=CACHE_FOLDER is not None, nogil=True, parallel=parallel,
            fastmath={"reassoc"} if reduce else False, error_model="numpy",
        )(function)

    return decorate


prange = numba.prange if numba is not None else range


# ---------------------------------------------------------------- the kernels
# A reduction kernel cuts the batch into tiles of ``rows`` whole rows (and, in
# the row loops, into groups of ``group`` channels) and returns one result per
# tile and channel, shape (tiles along the batch, channels). Tiles depend on
# the shape alone and any thread may compute any tile; each thread gets a
# contiguous stretch of memory.
@_jit(reduce=True)
def _moments_planes(x3, rows):
    """Per tile along the batch and channel: a shift ``k`` (the channel's first value
    in the tile), ``sum(x - k)`` and ``sum((x - k)**2)``."""
    n, channels, s = x3.shape
    chunks = (n + rows - 1) // rows
    shift = np.empty((chunks, channels))
    s1 = np.zeros((chunks, channels))
    s2 = np.zeros((chunks, channels))
    for r in prange(chunks):
        n0 = r * rows
        for c in range(channels):
            shift[r, c] = np.float64(x3[n0, c, 0])
        for i in range(n0, min(n, n0 + rows)):
            for c in range(channels):  # row by row: memory is read in order
                k = shift[r, c]
                t1 = 0.0
                t2 = 0.0
                for j in range(s):
                    v = np.float64(x3[i, c, j]) - k
                    t1 += v
                    t2 += v * v
                s1[r, c] += t1
                s2[r, c] += t2
    return shift, s1, s2


@_jit()
def _moments_rows(x3, rows, width):
    """As ``_moments_planes``, for short runs: a tile is ``rows`` rows times ``width``
    positions of the flattened row, and each position keeps its own sums (of
    ``x - k``, ``k`` its channel's first value in the tile), shape (tiles, C * S)."""
    n, channels, s = x3.shape
    x2 = x3.reshape(n, channels * s)
    w = channels * s
    chunks = (n + rows - 1) // rows
    blocks = (w + width - 1) // width
    shift = np.empty((chunks, channels))
    s1 = np.zeros((chunks, w))
    s2 = np.zeros((chunks, w))
    for tile in prange(chunks * blocks):
        r = tile // blocks
        p0 = (tile - r * blocks) * width
        p1 = min(w, p0 + width)
        n0 = r * rows
        k = np.empty(p1 - p0)
        for c in range(p0 // s, (p1 - 1) // s + 1):
            kc = np.float64(x2[n0, c * s])
            if c * s >= p0:
                shift[r, c] = kc
            for j in range(max(p0, c * s), min(p1, c * s + s)):
                k[j - p0] = kc
        a1 = s1[r, p0:p1]
        a2 = s2[r, p0:p1]
        for i in range(n0, min(n, n0 + rows)):
            row = x2[i, p0:p1]
            for j in range(p1 - p0):
                v = np.float64(row[j]) - k[j]
                a1[j] += v
                a2[j] += v * v
    return shift, s1, s2


@_jit(parallel=False)
def _merge_tiles(shift, s1, s2, counts):
    """Per-channel mean and biased variance from the tiles' shifted sums, merged in
    tile order with Chan et al.'s update (the one in :func:`bnlit.stats.merge_moments`).

    Means are merged relative to the first tile's shift, so that data far from
    zero keeps the digits of its spread."""
    chunks, channels = shift.shape
    mean = np.empty(channels)
    var = np.empty(channels)
    for c in range(channels):
        origin = shift[0, c]
        total = 0.0
        mu = 0.0  # relative to origin
        m2 = 0.0
        for r in range(chunks):
            nb = counts[r]
            mb = (shift[r, c] - origin) + s1[r, c] / nb
            m2b = max(s2[r, c] - s1[r, c] * s1[r, c] / nb, 0.0)
            if r == 0:
                total, mu, m2 = nb, mb, m2b
            else:
                both = total + nb
                delta = mb - mu
                mu += delta * (nb / both)
                m2 += m2b + delta * delta * (total * nb / both)
                total = both
        mean[c] = origin + mu
        var[c] = m2 / total
    return mean, var


@_jit(reduce=True)
def _grad_sums_planes(x3, d3, mean, rows):
    """Per tile along the batch and channel: ``sum(dout)`` and ``sum(dout * (x - mean))``."""
    n, channels, s = x3.shape
    chunks = (n + rows - 1) // rows
    sd = np.zeros((chunks, channels))
    sdx = np.zeros((chunks, channels))
    for r in prange(chunks):
        for i in range(r * rows, min(n, r * rows + rows)):
            for c in range(channels):
                m = mean[c]
                t1 = 0.0
                t2 = 0.0
                for j in range(s):
                    d = np.float64(d3[i, c, j])
                    t1 += d
                    t2 += d * (np.float64(x3[i, c, j]) - m)
                sd[r, c] += t1
                sdx[r, c] += t2
    return sd, sdx


@_jit()
def _grad_sums_rows(x3, d3, mean, rows, width):
    """As ``_grad_sums_planes``, for short runs, per position (shape (tiles, C * S))."""
    n, channels, s = x3.shape
    w = channels * s
    x2 = x3.reshape(n, w)
    d2 = d3.reshape(n, w)
    chunks = (n + rows - 1) // rows
    blocks = (w + width - 1) // width
    sd = np.zeros((chunks, w))
    sdx = np.zeros((chunks, w))
    for tile in prange(chunks * blocks):
        r = tile // blocks
        p0 = (tile - r * blocks) * width
        p1 = min(w, p0 + width)
        m = np.empty(p1 - p0)
        for j in range(p0, p1):
            m[j - p0] = mean[j // s]
        a1 = sd[r, p0:p1]
        a2 = sdx[r, p0:p1]
        for i in range(r * rows, min(n, r * rows + rows)):
            xr = x2[i, p0:p1]
            dr = d2[i, p0:p1]
            for j in range(p1 - p0):
                d = np.float64(dr[j])
                a1[j] += d
                a2[j] += d * (np.float64(xr[j]) - m[j])
    return sd, sdx


@_jit()
def _normalize(x3, mean, scale, shift, out3):
    """``out3 = (x3 - mean) * scale + shift`` per channel, one read and one write, in the
    data's dtype (the per-channel constants come in it: see ``_split``). Threads
    take contiguous rows of the batch (each faults in its own pages)."""
    n, channels, s = x3.shape
    if s >= PLANE_MIN:  # per-channel constants held in registers along a run
        for i in prange(n):
            for c in range(channels):
                m = mean[c]
                a = scale[c]
                b = shift[c]
                for j in range(s):
                    out3[i, c, j] = (x3[i, c, j] - m) * a + b
    else:  # short runs: constants spread over a row, the row read in one sweep
        width = channels * s
        x2 = x3.reshape(n, width)
        o2 = out3.reshape(n, width)
        m = np.empty(width, mean.dtype)
        a = np.empty(width, mean.dtype)
        b = np.empty(width, mean.dtype)
        for c in range(channels):
            for j in range(s):
                m[c * s + j] = mean[c]
                a[c * s + j] = scale[c]
                b[c * s + j] = shift[c]
        for i in prange(n):
            xr = x2[i]
            orow = o2[i]
            for j in range(width):
                orow[j] = (xr[j] - m[j]) * a[j] + b[j]


@_jit()
def _input_grad(x3, d3, mean, scale, slope, offset, out3):
    """``out3 = scale * (d3 + slope * (x3 - mean) + offset)`` per channel, one read of
    each input and one write, in the data's dtype (see ``_split``)."""
    n, channels, s = x3.shape
    if s >= PLANE_MIN:
        for i in prange(n):
            for c in range(channels):
                m = mean[c]
                a = scale[c]
                k = slope[c]
                b = offset[c]
                for j in range(s):
                    out3[i, c, j] = a * (d3[i, c, j] + k * (x3[i, c, j] - m) + b)
    else:
        width = channels * s
        x2 = x3.reshape(n, width)
        d2 = d3.reshape(n, width)
        o2 = out3.reshape(n, width)
        m = np.empty(width, mean.dtype)
        a = np.empty(width, mean.dtype)
        k = np.empty(width, mean.dtype)
        b = np.empty(width, mean.dtype)
        for c in range(channels):
            for j in range(s):
                m[c * s + j] = mean[c]
                a[c * s + j] = scale[c]
                k[c * s + j] = slope[c]
                b[c * s + j] = offset[c]
        for i in prange(n):
            xr = x2[i]
            dr = d2[i]
            orow = o2[i]
            for j in range(width):
                orow[j] = a[j] * (dr[j] + k[j] * (xr[j] - m[j]) + b[j])


# ------------------------------------------------------------------ the engine
def _contiguous(a: NDArray[Any]) -> NDArray[Any]:
    """``a`` itself when C-contiguous (one compiled version per dtype suffices), else a copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


_set_here = threading.local()  # the count last given to numba on each thread (asking it costs microseconds)


def _threads(nbytes: int) -> None:
    """Let numba's next parallel loop on this thread use bnlit's thread count (at most
    the cores numba started with; one for small inputs)."""
    assert numba is not None
    wanted = min(get_num_threads(), numba.config.NUMBA_NUM_THREADS, max(1, nbytes // MIN_BYTES_PER_THREAD))
    if getattr(_set_here, "threads", None) != wanted:
        numba.set_num_threads(wanted)  # numba keeps this per calling thread
        _set_here.threads = wanted


def tiles(x3: Array) -> tuple[int, int]:
    """Rows of the batch and positions of a row (``C * S`` in all) in one tile of a
    reduction: about ``TILE_BYTES`` of input; the row loops keep sums for at
    most ``ROW_WIDTH`` positions at a time."""
    width = x3.shape[1] * x3.shape[2]
    if x3.shape[2] < PLANE_MIN:
        width = min(width, ROW_WIDTH)
    rows = min(MAX_ROWS, max(1, TILE_BYTES // max(width * x3.itemsize, 1)))
    return int(rows), int(width)


def _per_channel(a: F64, x3: Array) -> F64:
    """Per-position sums of the row loops, shape (tiles, C * S), added up per channel
    (shape (tiles, C)); ``shift`` is already per channel."""
    if a.shape[1] == x3.shape[1]:
        return a
    return a.reshape(a.shape[0], x3.shape[1], x3.shape[2]).sum(axis=2)


def _tile_counts(x3: Array, rows: int) -> NDArray[np.float64]:
    """Values per channel in each tile along the batch."""
    n, s = x3.shape[0], x3.shape[2]
    return (np.minimum(rows, n - np.arange(0, n, rows)) * s).astype(np.float64)


def _split(mean: F64, dtype: np.dtype) -> tuple[F64, F64]:
    """``mean`` as ``hi + lo`` with ``hi`` exact in the data's dtype: ``x - hi`` is then
    exact for ``x`` near the mean (Sterbenz), so float32 data far from zero keeps
    its digits in float32 arithmetic; ``lo`` (zero for float64) is folded into
    the per-channel constants."""
    hi = mean.astype(dtype).astype(np.float64)
    return hi, mean - hi


def _into(out3: Array, fill: Callable[[Array], None]) -> None:
    """Run ``fill`` on ``out3``, through a contiguous buffer if ``out3`` is not contiguous."""
    if out3.flags.c_contiguous:
        fill(out3)
    else:
        buffer = np.empty(out3.shape, out3.dtype)
        fill(buffer)
        out3[...] = buffer


class NumbaEngine(Engine):
    """The compiled kernels above behind the engine contract."""

    name = "numba"

    def moments(self, x3: Array) -> Moments:
        x3 = _contiguous(x3)
        _threads(x3.nbytes)
        rows, width = tiles(x3)
        if x3.shape[2] >= PLANE_MIN:
            shift, s1, s2 = _moments_planes(x3, rows)
        else:
            shift, s1, s2 = (_per_channel(a, x3) for a in _moments_rows(x3, rows, width))
        mean, var = _merge_tiles(shift, s1, s2, _tile_counts(x3, rows))
        return Moments(x3.shape[0] * x3.shape[2], mean, var)

    def normalize(self, x3: Array, mean: F64, scale: F64, shift: F64, out3: Array, centred: bool) -> None:
        x3 = _contiguous(x3)
        _threads(x3.nbytes)
        hi, lo = _split(mean, x3.dtype)
        vectors = [v.astype(x3.dtype) for v in (hi, scale, shift - lo * scale)]
        _into(out3, lambda o: _normalize(x3, *vectors, o))

    def grad_sums(self, x3: Array, dout3: Array, mean: F64, centred: bool) -> GradSums:
        x3, dout3 = _contiguous(x3), _contiguous(dout3)
        _threads(x3.nbytes)
        rows, width = tiles(x3)
        if x3.shape[2] >= PLANE_MIN:
            sd, sdx = _grad_sums_planes(x3, dout3, _contiguous(mean), rows)
        else:
            sd, sdx = (_per_channel(a, x3) for a in _grad_sums_rows(x3, dout3, _contiguous(mean), rows, width))
        if sd.shape[0] == 1:
            return GradSums(sd[0], sdx[0])
        return GradSums(sd.sum(axis=0), sdx.sum(axis=0))  # tiles along the batch, in order

    def input_grad(
        self, x3: Array, dout3: Array, mean: F64, scale: F64, slope: F64, offset: F64, out3: Array, centred: bool
    ) -> None:
        x3, dout3 = _contiguous(x3), _contiguous(dout3)
        _threads(x3.nbytes)
        hi, lo = _split(mean, x3.dtype)
        vectors = [v.astype(x3.dtype) for v in (hi, scale, slope, offset - slope * lo)]
        _into(out3, lambda o: _input_grad(x3, dout3, *vectors, o))


ENGINE = NumbaEngine()
