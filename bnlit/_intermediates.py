"""The seed's cached intermediates (``x_mu``, ``x_std``, ``std`` ...) as read-only views
of what the last training forward left; the layer inherits them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from numpy.typing import NDArray

from .graph import ForwardSteps
from .stats import Stats

Array = NDArray[np.floating]


@dataclass(frozen=True)
class TrainingCache:
    """What the last training forward leaves for ``backward``."""

    x: Array  # the input, in the compute dtype (not a copy when already float)
    stats: Stats  # per-channel mean, var, inv_std
    steps: Optional[ForwardSteps]  # the staged graph's nodes, in staged mode
    count: int = 0  # values per channel the statistics ran over (every worker's, when synchronized)


class SeedIntermediates:
    """Read-only views of the last training forward, under the seed's names."""

    _cache: Optional[TrainingCache]

    def _per_channel(self, v: NDArray[np.float64]) -> Array:
        """A per-channel vector shaped to broadcast against the input (channels on axis 1)."""
        assert self._cache is not None
        shape = [1] * self._cache.x.ndim
        shape[1] = -1
        return v.astype(self._cache.x.dtype).reshape(shape)

    @property
    def x_mu(self) -> Optional[Array]:
        """Centred input ``x - mu`` of the last training forward (input's layout)."""
        c = self._cache
        if c is None:
            return None
        if c.steps is not None:
            return c.steps.x_mu
        return c.x - self._per_channel(c.stats.mean)

    @property
    def x_std(self) -> Optional[Array]:
        """Standardised input ``(x - mu) / std`` of the last training forward."""
        c = self._cache
        if c is None:
            return None
        if c.steps is not None:
            return c.steps.x_std
        return (c.x - self._per_channel(c.stats.mean)) * self._per_channel(c.stats.inv_std)

    @property
    def std(self) -> Optional[NDArray[np.float64]]:
        """Per-channel ``sqrt(var + epsilon)`` of the last training forward, shape (C,)."""
        c = self._cache
        return None if c is None else 1.0 / c.stats.inv_std

    @property
    def mean(self) -> Optional[NDArray[np.float64]]:
        """Per-channel batch mean ``mu`` of the last training forward, shape (C,)."""
        return None if self._cache is None else self._cache.stats.mean

    @property
    def var(self) -> Optional[NDArray[np.float64]]:
        """Per-channel biased batch variance of the last training forward, shape (C,)."""
        return None if self._cache is None else self._cache.stats.var

    @property
    def forward_steps(self) -> Optional[ForwardSteps]:
        """Every node of the last training forward, when ``staged=True``."""
        return None if self._cache is None else self._cache.steps
