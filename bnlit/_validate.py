"""Checks of what comes into the layer, each with an error that says what was
expected and what came. They never change the layer's state: the layer runs
all of them before it computes or changes anything."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.floating]
F64 = NDArray[np.float64]

#: The largest float64 batch variance bnlit accepts (about 1e301, a spread of about 3e150):
#: below it every square, sum and coefficient of a step fits in float64. float32 data
#: never comes near it.
LARGEST_VAR = 2.0**1000

# NumPy moved TooHardError into numpy.exceptions (1.25) and out of the main namespace (2.0).
_TooHardError: type[Exception] = getattr(getattr(np, "exceptions", np), "TooHardError")
#: Work bound for the exact memory-overlap test; past it, overlap is assumed (and refused).
_OVERLAP_WORK = 10_000


def describe(a: np.ndarray) -> str:
    return f"an array of shape {a.shape} and dtype {a.dtype}"


def _not_masked(value: object, name: str) -> None:
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, and bnlit does not apply masks; pass "
            f"{name}.filled(fill_value) or only the values that count"
        )


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in the machine's byte order (a converted copy when it was not)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _is_float(dtype: np.dtype, *sizes: int) -> bool:
    return dtype.kind == "f" and dtype.itemsize in sizes


def as_data(value: ArrayLike, name: str) -> Array:
    """``value`` as a 2-D or 4-D float array in native byte order; integers become
    float64, float16 becomes float32."""
    _not_masked(value, name)
    a = np.asarray(value)
    if not (a.dtype.kind in "iu" or _is_float(a.dtype, 2, 4, 8)):
        raise TypeError(
            f"{name} must hold real numbers (float32, float64, float16 or integers); "
            f"got {describe(a)}"
        )
    if a.ndim not in (2, 4):
        raise ValueError(
            f"{name} must be 2-D (N, D) or 4-D (N, C, H, W); got {a.ndim}-D, shape {a.shape}"
        )
    if a.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel (axis 1); got shape {a.shape}")
    if a.dtype.kind in "iu":
        return a.astype(np.float64)
    return a.astype(np.float32) if a.dtype.itemsize == 2 else _native(a)


def as_channel_vector(value: object, name: str, channels: Optional[int]) -> F64:
    """``value`` as a float64 vector of ``channels`` values (at least one when None)."""
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (channels,):
        if type(value) is np.ndarray:  # the common case, checked cheaply: this runs at every call
            return value
    _not_masked(value, name)
    a = np.asarray(value)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D array of real numbers; got {describe(a)}")
    if a.ndim != 1 or (channels is not None and a.shape[0] != channels) or a.shape[0] == 0:
        want = "a 1-D array of at least one value" if channels is None else f"shape ({channels},)"
        raise ValueError(f"{name} must have {want}; got shape {a.shape}")
    return a.astype(np.float64)


def as_grad(value: ArrayLike, like: Array) -> Array:
    """``dout`` in the dtype of the training input ``like``, of its shape."""
    _not_masked(value, "dout")
    grad = np.asarray(value)
    if grad.dtype.kind not in "iuf":
        raise TypeError(f"dout must hold real numbers; got {describe(grad)}")
    if grad.shape != like.shape:
        raise ValueError(
            f"dout must have the shape of the last training input, {like.shape}; got shape {grad.shape}"
        )
    if grad.dtype == like.dtype:
        return grad
    with np.errstate(over="ignore"):
        converted = grad.astype(like.dtype)
    if grad.dtype.kind == "f" and grad.dtype.itemsize > like.dtype.itemsize:
        # A narrowing conversion (float64 dout, float32 layer) must not turn numbers into inf.
        overflow = np.isinf(converted) & np.isfinite(grad)
        if np.any(overflow):
            raise ValueError(
                f"dout holds values beyond the range of {like.dtype}, the dtype of the training input "
                f"(largest magnitude {float(np.max(np.abs(grad[overflow]))):.3g}); scale dout down"
            )
    return converted


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.may_share_memory(a, b):  # disjoint address ranges: the cheap, usual answer
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=_OVERLAP_WORK))  # type: ignore[arg-type]
    except _TooHardError:
        return True


def output(out: Optional[object], like: Array, name: str, avoid: Mapping[str, object]) -> Array:
    """``out`` checked as a buffer for a result shaped like ``like``, or a fresh array.

    ``avoid`` names every array the call reads or the layer keeps: ``out`` may
    share no memory with any of them.
    """
    if out is None:
        return np.empty(like.shape, dtype=like.dtype)
    if not isinstance(out, np.ndarray) or isinstance(out, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a NumPy array (not masked); got {type(out).__name__}")
    if not out.dtype.isnative:
        raise ValueError(
            f"{name} must be in the machine's byte order, as bnlit writes into it; "
            f"got dtype {out.dtype.str!r} (byte order {out.dtype.byteorder!r})"
        )
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"{name} must be a writeable C-contiguous array of shape {like.shape} and dtype "
            f"{like.dtype}; got {describe(out)}"
            + ("" if out.flags.c_contiguous else " that is not C-contiguous")
            + ("" if out.flags.writeable else " that is read-only")
        )
    for what, a in avoid.items():
        if isinstance(a, np.ndarray) and _overlaps(out, a):
            raise ValueError(f"{name} must not share memory with {what}")
    return out


def real_number(value: object, name: str) -> float:
    """``value`` as a float; bools, strings, Decimals and other non-reals are refused."""
    if type(value) is float:  # the common case, cheaply: this runs at every call
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float); got {value!r} ({type(value).__name__})")
    return float(value)


def check_fraction(name: str, value: object) -> float:
    v = real_number(value, name)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")
    return v


def check_epsilon(value: object) -> float:
    v = real_number(value, "epsilon")
    if not 0.0 < v < np.inf:
        raise ValueError(f"epsilon must be positive and finite; got {value!r}")
    return v


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool; only True and False (also NumPy's) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def _channels(mask: NDArray[np.bool_]) -> str:
    where = np.flatnonzero(mask)
    return f"channel{'s' if where.size > 1 else ''} {', '.join(map(str, where[:8]))}" + (
        " ..." if where.size > 8 else ""
    )


def check_moving(mean: F64, var: F64) -> None:
    """Moving statistics fit to predict with: finite, and the variance non-negative."""
    if all_finite((mean, var)) and var.min() >= 0:
        return
    if not np.all(np.isfinite(mean)):
        raise ValueError(f"moving_mean must be finite; it is not in {_channels(~np.isfinite(mean))}")
    bad = ~(np.isfinite(var) & (var >= 0))
    if np.any(bad):
        raise ValueError(
            f"moving_var must be finite and non-negative; it is not in {_channels(bad)} "
            f"(values {var[bad][:8].tolist()})"
        )


def check_statistics(mean: F64, var: F64, inv_std: F64, epsilon: float) -> None:
    """Batch statistics a finite batch gave must be representable, with room for the
    backward pass: a variance below ``LARGEST_VAR`` and ``var + epsilon`` above its
    inverse (the backward squares ``1 / sqrt(var + epsilon)``).

    Statistics of a batch holding NaN or infinity (a non-finite mean) are left to
    propagate, as the data's values do.
    """
    if var.max() < LARGEST_VAR and var.min() + epsilon >= 1.0 / LARGEST_VAR and inv_std.min() > 0:
        return  # the common case, in three reductions (NaN fails them and is looked at below)
    finite = np.isfinite(mean)
    too_large = finite & ~(var < LARGEST_VAR)
    if np.any(too_large):
        raise ValueError(
            f"the variance of x is too large for float64 in {_channels(too_large)} "
            f"(bnlit accepts variances below 2**1000, about 1e301); scale the data down"
        )
    with np.errstate(over="ignore"):  # epsilon near float64's largest: check_sum_fits says so below
        too_small = finite & (var + epsilon < 1.0 / LARGEST_VAR)
    if np.any(too_small):
        raise ValueError(
            f"var + epsilon is too small for float64 in {_channels(too_small)} (below 2**-1000, "
            f"about 1e-301; epsilon is {epsilon!r}); use a larger epsilon"
        )
    check_sum_fits(inv_std)


def check_sum_fits(inv_std: F64) -> None:
    """``var + epsilon`` must not overflow (``inv_std`` would be 0 and the output all ``beta``)."""
    if inv_std.min() > 0:
        return
    zero = inv_std == 0
    if np.any(zero):
        raise ValueError(f"var + epsilon overflows float64 in {_channels(zero)}; use a smaller epsilon")


def all_finite(arrays: Iterable[np.ndarray]) -> bool:
    """Whether every value is finite (the ndarray method: cheap, and no warnings)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def check_gradient_sums(sums: Iterable[Array], mean: F64, dout: Array, gamma: Optional[F64] = None) -> None:
    """Refuse per-channel gradient sums that overflowed float64 from finite numbers. A
    channel whose ``x`` (seen in its mean), ``dout`` or ``gamma`` holds NaN or infinity
    propagates them instead."""
    if all_finite(sums):
        return
    bad = ~np.all([np.isfinite(np.ravel(s)) for s in sums], axis=0)
    if not np.any(bad):
        return
    bad &= np.isfinite(mean) & (True if gamma is None else np.isfinite(gamma))
    if np.any(bad):  # only now look at dout, channel by channel (a pass over it)
        axes = tuple(k for k in range(dout.ndim) if k != 1)
        bad &= np.all(np.isfinite(dout), axis=axes)
    if np.any(bad):
        raise ValueError(
            f"the per-channel gradient sums overflow float64 in {_channels(bad)} (dout, or dout "
            f"times the centred input, is too large); scale dout down"
        )


def check_result_terms(dtype: np.dtype, scale: F64, slope: F64, offset: F64, var: F64, count: int) -> None:
    """Refuse a ``dx`` whose terms (``gamma / std`` times ``dout``, and the like) leave the
    range it can be computed in: float64's, and for float32 data float32's by more than
    float64's precision (their rounding alone would overflow float32). Then no answer in
    ``dtype`` can be right, even where the exact ``dx`` is small (a tiny epsilon with a
    batch of tiny spread, or a huge dout)."""
    limit = 2.0**176 if dtype == np.float32 else float(np.finfo(np.float64).max)
    with np.errstate(all="ignore"):
        terms = np.abs(scale) * (np.abs(offset) + np.abs(slope) * np.sqrt(var * count))
    large = ~(terms <= limit) & np.isfinite(scale) & np.isfinite(offset)
    if np.any(large):
        raise ValueError(
            f"dx cannot be computed in {np.dtype(dtype)} in {_channels(large)}: its terms (gamma / std "
            f"times dout) exceed the range too far; use float64 data, a larger epsilon or a smaller dout"
        )


def check_staged_nodes(nodes: dict[str, Array], std: Array, x_mu: Array, path_2: Array) -> None:
    """The staged backward's per-channel chain (each node the one before divided by
    ``std`` or ``n``) must stay in float64's normal range where it matters: a node
    that underflowed from a non-zero one is refused when what it lost could move
    ``dx`` (through ``grad_x_mu_2 = 2 x_mu grad_x_mu_sq``) by more than the rounding
    of ``dx``'s other path ``path_2`` (``grad_x_mu_1``)."""
    tiny = np.finfo(np.float64).tiny
    names = list(nodes)
    lost = np.zeros(np.ravel(std).shape, dtype=bool)
    first = ""
    for before, name in zip(names, names[1:]):
        here = np.ravel((nodes[before] != 0) & (np.abs(nodes[name]) < tiny))
        first = first or (name if np.any(here) else "")
        lost |= here
    if not np.any(lost):
        return
    axes = tuple(k for k in range(x_mu.ndim) if k != 1)
    harm = 2 * np.abs(x_mu).max(axis=axes) * tiny * (2 + 1 / np.ravel(std))  # what dx may lose
    lost &= harm > 2.0**-52 * np.abs(path_2).max(axis=axes)
    if np.any(lost):
        raise ValueError(
            f"the staged graph's node {first} underflows float64 in {_channels(lost)} (x's spread and "
            f"dout are too many orders of magnitude apart); the default path (staged=False) computes this backward"
        )


def as_3d(a: Array) -> Array:
    """(N, D) -> (N, D, 1) and (N, C, H, W) -> (N, C, H*W): channels on axis 1."""
    return a.reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))
