"""The batch normalization layer with the course notebook's interface.

The layer validates, calls an engine (:mod:`bnlit.engines`) or the staged graph
(:mod:`bnlit.graph`), and keeps state; it computes nothing itself.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._intermediates import SeedIntermediates, TrainingCache
from ._validate import (
    as_3d,
    as_channel_vector,
    as_data,
    as_grad,
    check_epsilon,
    check_flag,
    check_result_terms,
    check_gradient_sums,
    check_fraction,
    check_moving,
    check_staged_nodes,
    check_statistics,
    check_sum_fits,
    output,
)
from .distributed import (
    BACKWARD,
    FORWARD,
    Communicator,
    as_communicator,
    refusing,
    synchronized_grad_sums,
    synchronized_moments,
    synchronized_stats,
)
from .engines import get_engine
from .graph import BackwardSteps, ForwardSteps, staged_backward, staged_forward
from .stats import GradSums, Moments, Stats, input_grad_coefficients, stats_from

__all__ = ["BatchNormalization", "LayerStateError"]

Array = NDArray[np.floating]
F64 = NDArray[np.float64]


def _quiet() -> np.errstate:
    """NaN and infinity propagate, and results beyond the dtype's range become inf, without
    NumPy's warnings (the streaming kernels, on their own threads, are silent too). A
    statistic out of range (1 / inf) is refused by a check, not warned about."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


class _Params(NamedTuple):
    """The layer's settings, checked for one call."""

    gamma: F64
    beta: F64
    rho: float
    epsilon: float


_STAGED_SYNC = (
    "staged=True runs the seed's one-process graph and cannot be synchronized; "
    "a layer with comm= uses the closed form (staged=False)"
)


class LayerStateError(ValueError, RuntimeError):
    """A call came at a time the layer cannot serve it (for example ``backward``
    before any training ``forward``). Subclasses both ``ValueError`` and
    ``RuntimeError``."""


class BatchNormalization(SeedIntermediates):
    """Batch normalization layer (Ioffe & Szegedy, 2015) with the seed's interface.

    Training: each channel is standardised with the batch's mean and (biased)
    variance, then scaled by ``gamma`` and shifted by ``beta``::

        out = gamma * (x - mu) / sqrt(var + epsilon) + beta

    and the moving averages used for prediction are updated as
    ``moving = rho * moving + (1 - rho) * batch_statistic``.

    Parameters
    ----------
    gamma, beta : array_like, shape (C,)
        Scale and shift, one per channel (the ``D`` columns of a 2-D input or
        the ``C`` channels of a 4-D input). Read at every call, so an optimiser
        may update them in place or rebind them.
    rho : float, default 0.9
        Weight of the *old* moving statistic (PyTorch's ``momentum`` is
        ``1 - rho``).
    moving_mean, moving_var : array_like, shape (C,), optional
        Starting moving statistics. When ``None`` they start at zeros on the
        first training call, as in the seed.
    epsilon : float, default 1e-8
        Added to the variance before the square root (the seed's value).
    staged : bool, default False
        When True, the training forward and the backward run the seed's
        computational graph node by node (:func:`bnlit.staged_forward`,
        :func:`bnlit.staged_backward`) and keep every
        intermediate in ``forward_steps`` and ``backward_steps``.
        When False (the default) they run the closed-form, streaming path.
    momentum : float, optional
        PyTorch's way of giving the moving-average weight: the weight of the
        *new* statistic, so ``rho = 1 - momentum``. Give ``rho`` or
        ``momentum``, not both.
    unbiased_moving_var : bool, default False
        Update the moving variance with the unbiased ``n / (n - 1)`` batch
        variance, as PyTorch does (the seed and Keras use the biased one).
    bias_correction : bool, default False
        Predict with :meth:`corrected_moving_statistics`, which removes the
        weight the moving averages still give their starting value (zeros in
        the seed) after few training steps, as Adam does.
    engine : {"auto", "numpy", "numba"}, default "auto"
        The compute engine (see :mod:`bnlit.engines`). ``"auto"`` takes the
        environment variable ``BNLIT_ENGINE`` when set, else numba's fused
        kernels when numba is installed (``pip install "bnlit[fast]"``), else NumPy.
    comm : optional
        Synchronize the training statistics across processes that each hold a
        slice of the batch (synchronized batch normalization): an mpi4py
        communicator, a ``torch.distributed`` process group, or any object with
        ``rank``, ``size`` and ``allreduce_sum`` (:mod:`bnlit.distributed`). Every
        worker then computes what one layer would on the whole batch: its slice of
        the output and of ``dx``, and the same ``dgamma``, ``dbeta`` and moving
        statistics, to rounding: 1e-12 relative while ``|mean| / std`` stays below
        1e3, about ``1e-15 * |mean| / std`` beyond (the two round the mean differently). A training forward and a backward each all-reduce
        ``K * (2 * C + 3)`` float64 numbers for ``K`` workers and ``C`` channels,
        whatever the batch size. Slices may differ in size (even be empty) as long
        as the whole batch has 2 values per channel. A call refused on one worker
        is refused on every worker, together (:class:`bnlit.distributed.PeerError`).
        Not with ``staged=True``.

    Attributes
    ----------
    gamma, beta, rho, moving_mean, moving_var, epsilon
        As above; ``moving_mean`` and ``moving_var`` are float64 arrays once set.
    steps : int
        Training calls since the moving statistics started.
    dgamma, dbeta : ndarray, shape (C,)
        Parameter gradients of the last ``backward``.
    batch_size : int
        Number of values each channel's statistics were taken over in the last
        training forward: ``N`` for 2-D input, ``N * H * W`` for 4-D input (as
        the seed's reshape to ``(N*H*W, C)`` gives).
    x_mu, x_std, std
        The seed's intermediates of the last training forward: centred input,
        standardised input (both shaped like the input) and the per-channel
        ``sqrt(var + epsilon)``.

    Notes
    -----
    4-D statistics are per channel over N, H and W, as in the seed's NHWC
    reshape and in PyTorch's ``BatchNorm2d``. The layer keeps a reference to the
    last training input for ``backward`` (as frameworks keep saved tensors):
    do not modify that array in place before calling ``backward``. NaN and
    infinite values in the data are not looked for (that would cost a pass over
    the data); they propagate to the outputs and, in training, to the moving
    statistics.

    Every call checks everything it uses before it computes or changes
    anything, so a call that raises leaves the layer's state as it was.
    Settings are checked again at every call, so rebinding one (``bn.rho =
    ...``) is checked too. What is accepted and what is refused:

    ===================  ===========================================  ==========================================
    What                 Accepted                                     Refused
    ===================  ===========================================  ==========================================
    ``x``                2-D ``(N, D)`` or 4-D ``(N, C, H, W)``;      ``TypeError``: complex, bool, strings,
                         float16 (computed in float32), float32,      objects, masked arrays. ``ValueError``:
                         float64, integers (float64); any byte        other dimensions, no channels, a channel
                         order (converted to the machine's)           count other than ``gamma``'s
    empty ``x``          prediction: ``N = 0`` or ``H * W = 0``       training: ``ValueError`` (a variance
                         gives an empty result                        needs at least 2 values per channel)
    ``dout``             real numbers, the last training input's      ``TypeError``, ``ValueError`` as ``x``
                         shape; converted to its dtype
    ``out``              a writeable, C-contiguous array of the       ``TypeError``: not an ndarray, masked.
                         result's shape and dtype, in the machine's   ``ValueError``: otherwise, or sharing any
                         byte order                                   memory with what the call reads (``x``,
                                                                      ``dout``) or the layer keeps (``gamma``,
                                                                      ``beta``, moving statistics, the last
                                                                      training input and intermediates)
    ``gamma``, ``beta``  1-D real arrays, one value per channel       ``TypeError``: not real, masked.
                                                                      ``ValueError``: another shape
    ``rho``,             a real number in [0, 1]: ``int``,            ``TypeError``: ``bool``, ``str``,
    ``momentum``         ``float``, NumPy scalars, ``Fraction``       ``Decimal``. ``ValueError``: outside
                                                                      [0, 1], NaN
    ``epsilon``          a positive, finite real number               ``TypeError`` as ``rho``;
                                                                      ``ValueError``: 0, negative, inf, NaN
    ``moving_mean``,     1-D real arrays, one value per channel;      ``TypeError``, ``ValueError`` (shape);
    ``moving_var``       given or used for prediction: finite, and    ``ValueError``: NaN, inf, a negative
                         ``moving_var`` non-negative                  variance
    ``train_flg`` and    ``True`` or ``False`` (NumPy bools too)      ``TypeError``: anything else, such as
    the flags                                                         ``"False"``, ``0`` or ``None``
    range                float32: any finite values. float64: a       ``ValueError``: a larger variance, a
                         batch variance below ``2**1000`` (about      ``var + epsilon`` below ``2**-1000``,
                         ``1e301``)                                   gradient sums that overflow float64, a
                                                                      float32 ``dx`` whose terms exceed float32
                                                                      by more than float64's precision
    ===================  ===========================================  ==========================================

    Extreme magnitudes are computed right: float32 data is computed with
    float64 accumulation (and float64 arithmetic where float32 would overflow or
    underflow), on every path, including ``staged=True``. A result whose exact
    value lies beyond the largest number of its dtype comes out as ``inf`` (IEEE
    rounding). ``staged=True`` refuses a backward whose per-channel nodes do not
    fit in float64; the closed form computes it.

    Examples
    --------
    >>> import numpy as np
    >>> from bnlit import BatchNormalization
    >>> bn = BatchNormalization(np.ones(3), np.zeros(3))
    >>> x = np.array([[1., 2., 3.], [2., 3., 2.], [3., 4., 4.], [4., 1., 2.]])
    >>> out = bn.forward(x)
    >>> np.round(out.mean(axis=0), 12) + 0.0, np.round(out.std(axis=0), 6)
    (array([0., 0., 0.]), array([1., 1., 1.]))
    """

    def __init__(
        self,
        gamma: ArrayLike,
        beta: ArrayLike,
        rho: float = 0.9,
        moving_mean: Optional[ArrayLike] = None,
        moving_var: Optional[ArrayLike] = None,
        *,
        epsilon: float = 1e-8,
        staged: bool = False,
        momentum: Optional[float] = None,
        unbiased_moving_var: bool = False,
        bias_correction: bool = False,
        engine: str = "auto",
        comm: object = None,
    ) -> None:
        channels = as_channel_vector(gamma, "gamma", None).shape[0]
        as_channel_vector(beta, "beta", channels)
        if momentum is not None:
            if rho != 0.9:
                raise ValueError(
                    f"give rho (weight of the old value) or momentum (weight of the new value), "
                    f"not both; got rho={rho!r} and momentum={momentum!r}"
                )
            rho = 1.0 - check_fraction("momentum", momentum)
        rho = check_fraction("rho", rho)
        epsilon = check_epsilon(epsilon)
        flags = {name: check_flag(name, value) for name, value in (
            ("staged", staged), ("unbiased_moving_var", unbiased_moving_var), ("bias_correction", bias_correction))}
        starts = [None if v is None else as_channel_vector(v, name, channels).copy()
                  for name, v in (("moving_mean", moving_mean), ("moving_var", moving_var))]
        check_moving(*(np.zeros(channels) if v is None else v for v in starts))
        self._engine = get_engine(engine)
        self._comm: Optional[Communicator] = None if comm is None else as_communicator(comm)
        if self._comm is not None and flags["staged"]:
            raise ValueError(_STAGED_SYNC)
        self._channels = channels  # the size of a synchronized exchange, fixed for the layer's life
        self.gamma, self.beta = gamma, beta
        self.rho, self.epsilon = rho, epsilon
        self.staged = flags["staged"]
        self.moving_mean: Optional[F64] = starts[0]
        self.moving_var: Optional[F64] = starts[1]
        self.unbiased_moving_var = flags["unbiased_moving_var"]
        self.bias_correction = flags["bias_correction"]
        #: Training calls that updated the moving statistics (for bias_correction).
        self.steps = 0
        self._moving_start = (self.moving_mean, self.moving_var)  # where the averages started
        self.batch_size: Optional[int] = None
        self.dgamma: Optional[Array] = None
        self.dbeta: Optional[Array] = None
        self.backward_steps: Optional[BackwardSteps] = None
        self._cache: Optional[TrainingCache] = None

    @property
    def engine(self) -> str:
        """The name of the compute engine."""
        return self._engine.name

    @property
    def comm(self) -> Optional[Communicator]:
        """The communicator a synchronized layer exchanges statistics through (else None)."""
        return self._comm

    def _params(self, channels: int) -> _Params:
        """Every setting a call uses, checked (they may have been rebound since)."""
        try:
            gamma = as_channel_vector(self.gamma, "gamma", channels)
            beta = as_channel_vector(self.beta, "beta", channels)
        except ValueError as err:
            raise ValueError(
                f"the input has {channels} channels (axis 1), which gamma and beta must match: {err}"
            ) from None
        for name in ("staged", "unbiased_moving_var", "bias_correction"):
            check_flag(name, getattr(self, name))
        return _Params(gamma, beta, check_fraction("rho", self.rho), check_epsilon(self.epsilon))

    def _kept(self, read: dict[str, object]) -> dict[str, object]:
        """Every array the call reads (``read``) or the layer keeps, named for an error message."""
        named = {f"{name}, which the call reads": a for name, a in read.items()}
        kept: dict[str, object] = {
            "gamma": self.gamma, "beta": self.beta, "moving_mean": self.moving_mean,
            "moving_var": self.moving_var, "dgamma": self.dgamma, "dbeta": self.dbeta,
            "the moving statistics' starting values": self._moving_start[0],
            "the starting moving_var": self._moving_start[1],
        }
        cache = self._cache
        if cache is not None:
            kept["the last training input"] = cache.x
            for part in (cache.stats, cache.steps, self.backward_steps):
                if part is not None:
                    kept.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part)})
        named.update({f"{name}, which the layer keeps": a for name, a in kept.items()})
        return named

    # ----------------------------------------------------------------- forward
    def forward(self, x: ArrayLike, train_flg: bool = True, *, out: Optional[Array] = None) -> Array:
        """Normalise a batch.

        Parameters
        ----------
        x : array_like, shape (N, D) or (N, C, H, W)
            Input batch. Integer input is computed in float64, float16 in
            float32; float32 and float64 keep their dtype. ``x`` is not modified.
        train_flg : bool, default True
            True: use the batch's statistics and update the moving averages.
            False (prediction): use the moving averages, which must exist.
        out : ndarray, optional
            C-contiguous array of the input's shape and compute dtype to write
            the result into (to reuse a buffer). By default a fresh array.

        Returns
        -------
        ndarray
            The normalised batch, shaped like ``x``.

        Raises
        ------
        TypeError
            ``x`` is not real-valued numeric data, or ``train_flg`` is not a bool.
        ValueError
            ``x`` is not 2-D or 4-D, its channel count differs from ``gamma``'s,
            a channel has fewer than 2 values in training, a setting or a moving
            statistic is invalid, or ``out`` is unfit (see the class's table).
        LayerStateError
            Prediction before any moving statistics exist.
        """
        # A synchronized layer's training call joins one exchange whatever happens, so its
        # checks run first and a refusal is shared (prediction exchanges nothing).
        comm = None if train_flg is False or train_flg is np.False_ else self._comm
        local: Optional[Moments] = None
        with refusing(comm, FORWARD, self._channels):
            train = check_flag("train_flg", train_flg)
            data = as_data(x, "x")
            params = self._params(data.shape[1])
            if train:
                count = data.size // data.shape[1]
                if comm is None and count < 2:
                    raise ValueError(
                        "training needs at least 2 values per channel to estimate a variance; "
                        f"got {count} for input shape {data.shape}"
                    )
                for name, moving in (("moving_mean", self.moving_mean), ("moving_var", self.moving_var)):
                    if moving is not None:
                        as_channel_vector(moving, name, data.shape[1])
            result = output(out, data, "out", self._kept({"x": data, "the given x": x}) if out is not None else {})
            if comm is not None:
                if self.staged:
                    raise ValueError(_STAGED_SYNC)
                with _quiet():
                    local = (self._engine.moments(as_3d(data)) if data.size else
                             Moments(0, np.zeros(data.shape[1]), np.zeros(data.shape[1])))
        if train:
            if local is None:
                self._train_forward(data, params, result)
            else:
                self._synchronized_forward(data, params, result, local)
            return result
        with _quiet():
            stats = self._prediction_stats(data.shape[1], params)
            if data.size:  # an empty batch has nothing to normalise
                self._engine.normalize_with(as_3d(data), stats, params.gamma, params.beta, as_3d(result))
        return result

    def _train_forward(self, x: Array, p: _Params, out: Array) -> None:
        steps = None
        with _quiet():  # a variance out of range is refused just below
            if self.staged:
                steps = staged_forward(x, p.gamma, p.beta, p.epsilon)
                stats = stats_from(steps.mu.reshape(-1).astype(np.float64), steps.var.reshape(-1).astype(np.float64),
                                   p.epsilon)
            else:
                stats = self._engine.train_forward(as_3d(x), p.gamma, p.beta, p.epsilon, as_3d(out))
        check_statistics(stats.mean, stats.var, stats.inv_std, p.epsilon)
        if steps is not None:
            with _quiet():
                out[...] = steps.out
        self._commit_training(x, stats, steps, x.size // x.shape[1], p.rho)

    def _synchronized_forward(self, x: Array, p: _Params, out: Array, local: Moments) -> None:
        """Normalise this worker's slice with the whole batch's statistics (one exchange)."""
        assert self._comm is not None
        whole = synchronized_moments(self._comm, local)
        # From here on every worker holds the same numbers, so a refusal below is shared.
        if whole.count < 2:
            raise ValueError(
                "training needs at least 2 values per channel to estimate a variance; the "
                f"{self._comm.size} workers' slices hold {whole.count} together"
            )
        stats = synchronized_stats(whole, p.epsilon)
        check_statistics(stats.mean, stats.var, stats.inv_std, p.epsilon)
        if x.size:
            with _quiet():
                self._engine.normalize_with(as_3d(x), stats, p.gamma, p.beta, as_3d(out))
        self._commit_training(x, stats, None, whole.count, p.rho)

    def _commit_training(self, x: Array, stats: Stats, steps: Optional[ForwardSteps], count: int, rho: float) -> None:
        moving_mean, moving_var, start = self._updated_moving_statistics(stats, count, rho)
        # Everything is computed and checked: only now does the layer's state change.
        if start is not None:  # the averages start here (from zeros, or from rebound values)
            self._moving_start = start
            self.steps = 0
        self.moving_mean, self.moving_var = moving_mean, moving_var
        self.steps += 1
        self.batch_size = count
        self._cache = TrainingCache(x, stats, steps, count)
        self.backward_steps = None

    def _updated_moving_statistics(
        self, stats: Stats, count: int, rho: float
    ) -> tuple[F64, F64, Optional[tuple[F64, F64]]]:
        """The moving statistics after this batch, and where they start when they start now:
        from zeros (there are none), or from values rebound since construction."""
        restart = self.moving_mean is None or self.moving_var is None
        old_mean = np.zeros(stats.mean.shape) if restart else np.asarray(self.moving_mean, np.float64)
        old_var = np.zeros(stats.mean.shape) if restart else np.asarray(self.moving_var, np.float64)
        start = None
        if restart or self._moving_start[0] is None or self._moving_start[1] is None:
            start = (old_mean.copy(), old_var.copy())
        batch_var = stats.var * (count / (count - 1)) if self.unbiased_moving_var else stats.var
        return rho * old_mean + (1 - rho) * stats.mean, rho * old_var + (1 - rho) * batch_var, start

    def _prediction_stats(self, channels: int, p: _Params) -> Stats:
        if self.moving_mean is None or self.moving_var is None:
            raise LayerStateError(
                "prediction (train_flg=False) needs moving statistics, and there are none yet: "
                "run a training forward first or pass moving_mean and moving_var"
            )
        mean = as_channel_vector(self.moving_mean, "moving_mean", channels)
        var = as_channel_vector(self.moving_var, "moving_var", channels)
        check_moving(mean, var)
        if self.bias_correction:
            mean, var = self._corrected(mean, var, p.rho)
        stats = stats_from(mean, var, p.epsilon)  # (called quietly)
        check_sum_fits(stats.inv_std)
        return stats

    def corrected_moving_statistics(self) -> tuple[F64, F64]:
        """The moving mean and variance with the weight of their starting value removed.

        After ``k`` training steps, ``moving = rho**k * start + (1 - rho**k) * average``
        where ``average`` is a weighted average of the batch statistics. This returns
        ``(moving - rho**k * start) / (1 - rho**k)``, as Adam corrects its moment
        estimates; prediction uses it when ``bias_correction=True``. It assumes the
        moving statistics changed only through this layer's training calls.
        """
        if self.moving_mean is None or self.moving_var is None:
            raise LayerStateError("there are no moving statistics yet: run a training forward first")
        mean = as_channel_vector(self.moving_mean, "moving_mean", None)
        var = as_channel_vector(self.moving_var, "moving_var", mean.shape[0])
        return self._corrected(mean, var, check_fraction("rho", self.rho))

    def _corrected(self, mean: F64, var: F64, rho: float) -> tuple[F64, F64]:
        weight = rho**self.steps
        if self.steps == 0 or weight == 1.0:
            return mean, var
        start_mean, start_var = self._moving_start  # set by the first training call at the latest
        assert start_mean is not None and start_var is not None
        if start_mean.shape != mean.shape:
            raise ValueError(
                f"bias_correction: the moving statistics have {mean.shape[0]} channels but started "
                f"with {start_mean.shape[0]}; they were rebound to another layer's"
            )
        mean = (mean - weight * start_mean) / (1 - weight)
        var = (var - weight * start_var) / (1 - weight)
        return mean, np.maximum(var, 0.0)

    @classmethod
    def like_pytorch(
        cls, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, comm: object = None
    ) -> "BatchNormalization":
        """A layer that computes exactly what ``torch.nn.BatchNorm1d/2d(num_features)`` does.

        Weight ones and bias zeros, running mean zeros and running variance
        ones, ``epsilon=eps``, ``momentum`` weighting the *new* statistic, and
        the running variance updated with the unbiased ``n / (n - 1)`` batch
        variance. (PyTorch's ``momentum=None``, a cumulative average, is not
        reproduced.) With ``comm``, what ``torch.nn.SyncBatchNorm`` computes on the
        whole batch (which PyTorch 2.13 refuses to run on CPU tensors).
        """
        return cls(
            np.ones(num_features), np.zeros(num_features),
            moving_mean=np.zeros(num_features), moving_var=np.ones(num_features),
            epsilon=eps, momentum=momentum, unbiased_moving_var=True, comm=comm,
        )

    # ---------------------------------------------------------------- backward
    def backward(self, dout: ArrayLike, *, out: Optional[Array] = None) -> Array:
        """Gradient of the loss with respect to the last training input.

        Also sets ``dgamma`` and ``dbeta``.

        Parameters
        ----------
        dout : array_like
            Gradient with respect to the output of the last *training*
            ``forward``, of the same shape.
        out : ndarray, optional
            C-contiguous array of that shape and compute dtype to write ``dx``
            into. By default a fresh array.

        Returns
        -------
        ndarray
            ``dx``, shaped like the input, computed in closed form::

                dx = gamma / (N * std) * (N * dout - sum(dout) - x_std * sum(dout * x_std))

            or, with ``staged=True``, through the nine steps a1 .. a9.

        Raises
        ------
        LayerStateError
            No training forward has run yet.
        TypeError, ValueError
            ``dout`` is not real numeric data or its shape is not that of the
            last training input; ``out`` is unfit.
        """
        comm = self._comm
        local: Optional[GradSums] = None
        with refusing(comm, BACKWARD, self._channels):
            cache = self._cache
            if cache is None:
                raise LayerStateError(
                    "backward needs a training forward first (forward(x, train_flg=True)); none has run"
                )
            x = cache.x
            grad = as_grad(dout, x)
            params = self._params(x.shape[1])
            result = output(out, x, "out", self._kept({"dout": grad, "the given dout": dout}) if out is not None else {})
            if comm is not None:
                with _quiet():
                    local = (self._engine.grad_sums(as_3d(x), as_3d(grad), cache.stats.mean, cache.stats.centred)
                             if x.size else GradSums(np.zeros(x.shape[1]), np.zeros(x.shape[1])))
                check_gradient_sums(local, cache.stats.mean, grad)
        if local is not None:
            return self._synchronized_backward(cache, grad, params.gamma, result, local)
        if cache.steps is not None:
            steps = self._staged_backward(cache, grad, params.gamma)
            with _quiet():
                result[...] = steps.grad_x
                self.dgamma, self.dbeta = (steps.dgamma.astype(x.dtype, copy=False),
                                           steps.dbeta.astype(x.dtype, copy=False))
            self.backward_steps = steps
            return result
        with _quiet():
            sums = self._engine.backward(as_3d(x), as_3d(grad), cache.stats, params.gamma, as_3d(result))
        check_gradient_sums(sums, cache.stats.mean, grad)
        self._commit_grads(x.dtype, cache.stats, sums)
        return result

    def _synchronized_backward(self, cache: TrainingCache, grad: Array, gamma: F64, out: Array, local: GradSums) -> Array:
        """This worker's slice of ``dx`` from the whole batch's gradient sums (one exchange)."""
        assert self._comm is not None
        sums, parts_finite = synchronized_grad_sums(self._comm, local)
        # Every worker holds the same sums now: a refusal below is shared.
        if parts_finite and not np.isfinite(np.concatenate(sums)).all():
            raise ValueError(
                f"the per-channel gradient sums of the {self._comm.size} workers together overflow "
                "float64 (dout, or dout times the centred input, is too large); scale dout down"
            )
        stats, x = cache.stats, cache.x
        with _quiet():
            scale, slope, offset = input_grad_coefficients(stats, gamma, sums, cache.count)
        check_result_terms(x.dtype, scale, slope, offset, stats.var, cache.count)
        if x.size:
            with _quiet():
                self._engine.input_grad(as_3d(x), as_3d(grad), stats.mean, scale, slope, offset, as_3d(out),
                                        stats.centred)
        self._commit_grads(x.dtype, stats, sums)
        return out

    def _commit_grads(self, dtype: np.dtype, stats: Stats, sums: GradSums) -> None:
        with _quiet():
            self.dgamma = (stats.inv_std * sums.sum_dout_xmu).astype(dtype)
            self.dbeta = sums.sum_dout.astype(dtype)

    @staticmethod
    def _staged_backward(cache: TrainingCache, grad: Array, gamma: F64) -> BackwardSteps:
        """The nine steps, refused when a per-channel node leaves float64's range."""
        assert cache.steps is not None
        with _quiet():
            steps = staged_backward(cache.steps, grad, gamma)
        chain = {"grad_std_inv": steps.grad_std_inv, "grad_std": steps.grad_std, "grad_var": steps.grad_var,
                 "grad_x_mu_sq": steps.grad_x_mu_sq}
        check_gradient_sums((steps.dbeta, steps.dgamma, steps.grad_mu, *chain.values()), cache.stats.mean, grad, gamma)
        check_staged_nodes(chain, cache.steps.std, cache.steps.x_mu, steps.grad_x_mu_1)
        n = cache.steps.n
        with _quiet():
            slope = -np.ravel(steps.dgamma) * cache.stats.inv_std / n
            check_result_terms(cache.x.dtype, gamma * cache.stats.inv_std, slope, -np.ravel(steps.dbeta) / n,
                                cache.stats.var, n)
        return steps
