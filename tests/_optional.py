"""Optional dependencies of the tests (torch, numba, mpi4py, a browser).

On a learner's machine a test whose optional dependency is missing skips, with a
reason that names what to install. In CI (``CI=true``) every optional test must
run: there :func:`require` fails instead of skipping, and the hook in
``conftest.py`` turns any other skip for a missing dependency (``pytest.importorskip``,
or a reason that says what to install) into a failure.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from types import ModuleType

import pytest

#: The words every skip made by :func:`require` starts with.
MISSING = "optional dependency missing"


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: every optional test must run here)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, install: str) -> ModuleType:
    """``module`` imported; when it is missing, a skip naming ``install`` (a failure in CI).

    Use it at module level (``torch = require("torch", install="pip install torch==2.13.0")``)
    or inside a test.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        problem = str(err)
    _skip_or_fail(f"{MISSING}: {module} ({problem}); install it with: {install}")
    raise AssertionError("not reached: skip and fail raise")


def require_program(name: str, install: str) -> str:
    """The path of the program ``name`` on PATH; when it is missing, as :func:`require`."""
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(f"{MISSING}: the program {name} is not on PATH; install it with: {install}")
        raise AssertionError("not reached")
    return path


def is_missing_dependency(reason: str) -> bool:
    """Whether a skip's reason says that something is not installed."""
    return MISSING in reason or "could not import" in reason or re.search(r"\binstall", reason) is not None
