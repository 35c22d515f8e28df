"""bnlit's compute engines, one module each, behind one contract (:class:`Engine`).

The layer validates input and keeps state; an engine only computes. Each engine
is a sibling module here whose ``ENGINE`` object implements :class:`Engine`:

- ``numpy`` (:mod:`bnlit.engines.numpy`): streaming NumPy kernels; always there.

:func:`get_engine` turns a name into an engine.
"""

from __future__ import annotations

import importlib

from ._base import Engine

__all__ = ["Engine", "get_engine", "ENGINES"]

#: Engine names and the module that holds each one's ``ENGINE``.
ENGINES = {"numpy": "bnlit.engines.numpy"}


def get_engine(name: str = "numpy") -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}; got {name!r}")
    engine: Engine = importlib.import_module(ENGINES[name]).ENGINE
    return engine
