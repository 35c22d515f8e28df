"""The seed's computational graph of batch normalization, one node at a time.

This is the slide the course notebook refers to, written as code. The forward
pass is a chain of eight small nodes; the backward pass visits them in reverse,
each step applying one node's local derivative (the chain rule, one link at a
time). The seed calls the backward steps ``a1`` .. ``a9``; here each has a name
that says what it is, and the seed's name beside it::

    forward node                      backward step (local derivative x upstream)
    --------------------------------  ---------------------------------------------
    mu      = mean(x)                 a9 grad_x_via_mu = grad_mu / n  (to every row)
    x_mu    = x - mu                  a8 grad_mu       = -sum(grad_x_mu_1 + grad_x_mu_2)
    x_mu_sq = x_mu ** 2               a7 grad_x_mu_2   = 2 * x_mu * grad_x_mu_sq
    var     = mean(x_mu_sq)           a6 grad_x_mu_sq  = grad_var / n  (to every row)
    std     = sqrt(var + epsilon)     a5 grad_var      = grad_std / (2 * std)
    std_inv = 1 / std                 a4 grad_std      = -grad_std_inv / std ** 2
    x_std   = x_mu * std_inv          a3 grad_std_inv  = sum(grad_x_std * x_mu)
                                      a2 grad_x_mu_1   = grad_x_std * std_inv
    out     = gamma * x_std + beta    a1 grad_x_std    = gamma * dout
                                         dgamma        = sum(dout * x_std)
                                         dbeta         = sum(dout)
    grad_x = a2 + a7 + a9             (x reaches out along three paths)

``sum`` and ``mean`` run over every axis but the channel axis (axis 0 of a 2-D
``(N, D)`` input; axes 0, 2, 3 of a 4-D ``(N, C, H, W)`` input), and ``n`` is
the number of values each channel's statistics are taken over. Per-channel
quantities keep those axes with length one, so that they broadcast against
``x``: shape ``(1, D)`` for 2-D input and ``(1, C, 1, 1)`` for 4-D input.

Every node is computed and kept in float64, whatever the input's dtype (float32
input is converted once): the sums then carry float64's precision and range, so
that the graph is as accurate as the layer's closed form. The layer casts its
results back to the input's dtype.

The closed-form backward of :class:`bnlit.BatchNormalization` collapses these steps into one
formula; the tests and the book check that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from numpy.typing import NDArray

__all__ = ["ForwardSteps", "BackwardSteps", "staged_forward", "staged_backward"]

Array = NDArray[np.floating]


def _reduce_axes(ndim: int) -> tuple[int, ...]:
    """Axes that a channel's statistics run over: all but axis 1 (for 2-D, axis 0)."""
    return (0,) if ndim == 2 else (0,) + tuple(range(2, ndim))


def _mean(a: NDArray[np.float64], axes: tuple[int, ...]) -> NDArray[np.float64]:
    """Per-channel mean of float64 ``a``. Should the sum overflow though every value is
    finite (values near the largest float), it is taken again about each channel's
    first value: exact for a constant channel, and in range whenever the variance is.
    Called inside :func:`staged_forward`'s ``errstate``, which keeps the overflow quiet."""
    mean = a.mean(axis=axes, keepdims=True)
    if not np.all(np.isfinite(mean)) and np.all(np.isfinite(a)):
        first = a[tuple(slice(None) if k == 1 else slice(0, 1) for k in range(a.ndim))]
        mean = first + (a - first).mean(axis=axes, keepdims=True)
    return mean


@dataclass(frozen=True)
class ForwardSteps:
    """Every node of the training forward pass, as the seed names them.

    Per-channel values (``mu``, ``var``, ``std``, ``std_inv``) keep the reduced
    axes with length one; the others have the shape of ``x``.
    """

    x: Array
    mu: Array
    x_mu: Array
    x_mu_sq: Array
    var: Array
    std: Array
    std_inv: Array
    x_std: Array
    out: Array
    gamma: Array
    epsilon: float

    @property
    def n(self) -> int:
        """Number of values each channel's statistics are taken over."""
        return self.x.size // self.mu.size


@dataclass(frozen=True)
class BackwardSteps:
    """Every step of the staged backward pass, under descriptive names.

    The seed's names are available as read-only aliases ``a1`` .. ``a9``.
    """

    dout: Array
    dbeta: Array
    dgamma: Array
    grad_x_std: Array  # a1
    grad_x_mu_1: Array  # a2
    grad_std_inv: Array  # a3
    grad_std: Array  # a4
    grad_var: Array  # a5
    grad_x_mu_sq: Array  # a6
    grad_x_mu_2: Array  # a7
    grad_mu: Array  # a8
    grad_x_via_mu: Array  # a9
    grad_x: Array  # dx

    # The seed's names, so a learner can compare step by step.
    a1 = property(lambda self: self.grad_x_std, doc="Seed's name for grad_x_std.")
    a2 = property(lambda self: self.grad_x_mu_1, doc="Seed's name for grad_x_mu_1.")
    a3 = property(lambda self: self.grad_std_inv, doc="Seed's name for grad_std_inv.")
    a4 = property(lambda self: self.grad_std, doc="Seed's name for grad_std.")
    a5 = property(lambda self: self.grad_var, doc="Seed's name for grad_var.")
    a6 = property(lambda self: self.grad_x_mu_sq, doc="Seed's name for grad_x_mu_sq.")
    a7 = property(lambda self: self.grad_x_mu_2, doc="Seed's name for grad_x_mu_2.")
    a8 = property(lambda self: self.grad_mu, doc="Seed's name for grad_mu.")
    a9 = property(lambda self: self.grad_x_via_mu, doc="Seed's name for grad_x_via_mu.")
    dx = property(lambda self: self.grad_x, doc="Seed's name for grad_x.")


def staged_forward(
    x: Array, gamma: Array, beta: Array, epsilon: float
) -> ForwardSteps:
    """Run the training forward pass node by node and keep every node.

    Parameters
    ----------
    x : ndarray of float, shape (N, D) or (N, C, H, W)
        Input batch (already validated and in a floating dtype). It is kept as
        it is; the nodes are float64.
    gamma, beta : ndarray, shape (D,) or (C,)
        Scale and shift per channel.
    epsilon : float
        Added to the variance before the square root.

    Returns
    -------
    ForwardSteps
        All intermediates (float64), ``out`` being the layer's output.
    """
    axes = _reduce_axes(x.ndim)
    shape = [1] * x.ndim
    shape[1] = x.shape[1]
    gamma_b = np.reshape(gamma, shape).astype(np.float64)
    beta_b = np.reshape(beta, shape).astype(np.float64)
    xf = np.asanyarray(x, dtype=np.float64)  # every node in float64 (no copy for float64 input)

    with np.errstate(over="ignore", invalid="ignore"):  # too large a variance is the caller's to refuse
        mu = _mean(xf, axes)  # step (2)
        x_mu = xf - mu
        x_mu_sq = x_mu**2
        var = _mean(x_mu_sq, axes)  # step (3)
        # mean(x_mu) is the rounding error of mu (float64 cannot hold the mean of, say,
        # eleven copies of 8.3e165): where it is not negligible against the spread, mu
        # is corrected by it (above a millionth of the spread) and the nodes after it are taken again.
        drift = _mean(x_mu, axes)
        inexact = (drift != 0) & (~(drift * drift <= 2.0**-40 * var) | np.isinf(var))
        if np.any(inexact):
            mu = mu + np.where(inexact, drift, 0.0)
            x_mu = xf - mu
            x_mu_sq = x_mu**2
            # Even corrected, mu is a float64 number, up to half an ulp of |x| from the mean:
            # var is taken about the mean itself (corrected two-pass: minus that residual squared).
            residual = np.where(inexact, _mean(x_mu, axes), 0.0)
            var = np.maximum(_mean(x_mu_sq, axes) - residual * residual, 0.0)
        std = np.sqrt(var + epsilon)  # step (4)
        std_inv = 1 / std
        x_std = x_mu * std_inv
        out = gamma_b * x_std  # step (5): scale ...
        out += beta_b  # ... and shift
    return ForwardSteps(x, mu, x_mu, x_mu_sq, var, std, std_inv, x_std, out, gamma_b, epsilon)


def staged_backward(f: ForwardSteps, dout: Array, gamma: Optional[Array] = None) -> BackwardSteps:
    """Run the backward pass of :func:`staged_forward` step by step (a1 .. a9).

    Parameters
    ----------
    f : ForwardSteps
        The forward pass to differentiate.
    dout : ndarray, shape of ``f.x``
        Gradient of the loss with respect to the layer's output.
    gamma : ndarray, shape (D,) or (C,), optional
        The scale to differentiate with, when it changed since the forward pass
        (the layer reads ``gamma`` at every call); by default ``f.gamma``.

    Returns
    -------
    BackwardSteps
        Every gradient along the way (float64); ``grad_x`` is the input gradient.
    """
    axes = _reduce_axes(dout.ndim)
    n = f.n
    gamma_b = f.gamma if gamma is None else np.reshape(gamma, f.mu.shape).astype(np.float64)
    dout = np.asarray(dout, dtype=np.float64)

    def total(a: Array) -> Array:  # sum over the batch, keeping the channel axis
        return a.sum(axis=axes, keepdims=True)

    def total_of_product(a: Array, b: Array) -> Array:  # total(a * b), without the a * b array
        batch_axes = "n" + "hw"[: a.ndim - 2]
        spec = f"{batch_axes[0]}c{batch_axes[1:]}"
        return np.einsum(f"{spec},{spec}->c", a, b).reshape(f.mu.shape)

    with np.errstate(over="ignore", invalid="ignore"):  # too large a sum is the caller's to refuse
        dbeta = total(dout)  # out = gamma * x_std + beta
        dgamma = total_of_product(dout, f.x_std)
        a1 = gamma_b * dout  # d out / d x_std = gamma
        a2 = a1 * f.std_inv  # x_std = x_mu * std_inv: d/d x_mu = std_inv
        a3 = total_of_product(a1, f.x_mu)  # ... and d/d std_inv = x_mu
        a4 = -a3 / f.std**2  # std_inv = 1/std: d/d std = -1/std^2
        a5 = a4 / (2 * f.std)  # std = sqrt(var + eps): d/d var = 1/(2 std)
        a6 = a5 / n  # var = mean(x_mu_sq): d/d x_mu_sq = 1/n
        a7 = f.x_mu * (2 * a6)  # x_mu_sq = x_mu^2: d/d x_mu = 2 x_mu
        a8 = -(total(a2) + total(a7))  # x_mu = x - mu: d/d mu = -1, from both paths
        a9 = a8 / n  # mu = mean(x): d/d x = 1/n
        dx = a2 + a7  # x reaches out through x_mu (twice) ...
        dx += a9  # ... and through mu
    return BackwardSteps(
        dout, dbeta.reshape(-1), dgamma.reshape(-1), a1, a2, a3, a4, a5, a6, a7, a8, a9, dx
    )
