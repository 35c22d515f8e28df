"""Checks of what comes into the layer, each with an error that says what was
expected and what came. They never change the layer's state."""

from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.floating]


def describe(a: np.ndarray) -> str:
    return f"an array of shape {a.shape} and dtype {a.dtype}"


def as_data(value: ArrayLike, name: str) -> Array:
    """``value`` as a 2-D or 4-D float array; integers become float64."""
    a = np.asarray(value)
    if not (a.dtype.kind in "iu" or a.dtype in (np.float16, np.float32, np.float64)):
        raise TypeError(
            f"{name} must hold real numbers (float32, float64, float16 or integers); "
            f"got {describe(a)}"
        )
    if a.ndim not in (2, 4):
        raise ValueError(
            f"{name} must be 2-D (N, D) or 4-D (N, C, H, W); got {a.ndim}-D, shape {a.shape}"
        )
    if a.dtype.kind in "iu":
        return a.astype(np.float64)
    return a.astype(np.float32) if a.dtype == np.float16 else a


def as_channel_vector(value: object, name: str, channels: Optional[int]) -> NDArray[np.float64]:
    """``value`` as a float64 vector of ``channels`` values (any length when None)."""
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (channels,):
        return value  # the common case, checked cheaply: this runs at every call
    a = np.asarray(value)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D array of real numbers; got {describe(a)}")
    if a.ndim != 1 or (channels is not None and a.shape[0] != channels):
        want = "a 1-D array" if channels is None else f"shape ({channels},)"
        raise ValueError(f"{name} must have {want}; got shape {a.shape}")
    return a.astype(np.float64)


def as_grad(value: ArrayLike, like: Array) -> Array:
    """``dout`` in the dtype of the training input ``like``, of its shape."""
    grad = np.asarray(value)
    if grad.dtype.kind not in "iuf":
        raise TypeError(f"dout must hold real numbers; got {describe(grad)}")
    if grad.shape != like.shape:
        raise ValueError(
            f"dout must have the shape of the last training input, {like.shape}; got shape {grad.shape}"
        )
    return grad.astype(like.dtype, copy=False)


def output(out: Optional[object], like: Array, name: str, *avoid: Array) -> Array:
    """``out`` checked as a buffer for a result shaped like ``like``, or a fresh array."""
    if out is None:
        return np.empty(like.shape, dtype=like.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a C-contiguous array of shape {like.shape} and dtype "
            f"{like.dtype}; got {describe(out)}"
            + ("" if out.flags.c_contiguous else " that is not C-contiguous")
        )
    if any(np.may_share_memory(out, a) for a in avoid):
        raise ValueError(f"{name} must not share memory with the layer's inputs")
    return out


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")


def check_positive(name: str, value: float) -> None:
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be positive; got {value!r}")


def as_3d(a: Array) -> Array:
    """(N, D) -> (N, D, 1) and (N, C, H, W) -> (N, C, H*W): channels on axis 1."""
    return a.reshape(a.shape[0], a.shape[1], -1)
