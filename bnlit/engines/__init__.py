"""bnlit's compute engines, one module each, behind one contract (:class:`Engine`).

The layer validates input and keeps state; an engine only computes. Each engine
is a sibling module here whose ``ENGINE`` object implements :class:`Engine`:

- ``numpy`` (:mod:`bnlit.engines.numpy`): streaming NumPy kernels; always there.
- ``numba`` (:mod:`bnlit.engines.numba`): fused compiled loops; needs the
  optional numba (``pip install "bnlit[fast]"``).

:func:`get_engine` turns a name into an engine. ``"auto"`` (the layer's
default) means the environment variable ``BNLIT_ENGINE`` when it is set, else
numba when it is installed, else NumPy.
"""

from __future__ import annotations

import importlib
import os

from ._base import Engine

__all__ = ["Engine", "get_engine", "resolve", "ENGINES"]

#: Engine names and the module that holds each one's ``ENGINE``.
ENGINES = {"numpy": "bnlit.engines.numpy", "numba": "bnlit.engines.numba"}
#: What to install for the optional engines.
INSTALL = {"numba": 'pip install "bnlit[fast]"'}


def _available(name: str) -> bool:
    """Whether the engine ``name`` can run here (its optional package imports)."""
    return bool(getattr(importlib.import_module(ENGINES[name]), "AVAILABLE", True))


def resolve(name: str = "auto") -> str:
    """The engine name ``name`` stands for: itself, or for ``"auto"`` the one
    ``BNLIT_ENGINE`` names, else ``"numba"`` when numba is installed, else ``"numpy"``."""
    if name == "auto":
        name = os.environ.get("BNLIT_ENGINE", "").strip() or "auto"
        if name not in ENGINES and name != "auto":
            raise ValueError(
                f"BNLIT_ENGINE must be one of {sorted(ENGINES)} or 'auto'; got {name!r}"
            )
    if name == "auto":
        return "numba" if _available("numba") else "numpy"
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)} or 'auto'; got {name!r}")
    return name


def get_engine(name: str = "auto") -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`, or ``"auto"``: see :func:`resolve`).

    Raises
    ------
    ValueError
        ``name`` (or ``BNLIT_ENGINE``) names no engine.
    ImportError
        The engine needs an optional package that is not installed.
    """
    name = resolve(name)
    if not _available(name):
        raise ImportError(
            f"the {name} engine needs the optional package {name}, which is not installed "
            f"here: {INSTALL[name]} (or use engine='numpy')"
        )
    engine: Engine = importlib.import_module(ENGINES[name]).ENGINE
    return engine
