"""Fixtures shared by the tests, and CI's rule for optional dependencies (see _optional.py)."""

from __future__ import annotations

import numpy as np
import pytest

from _book_build import built_book, editions  # noqa: F401  (the built book, one build per session)
from _optional import in_ci, is_missing_dependency


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


# In CI a skip for a missing optional dependency is a failure, wherever it was raised.
def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if is_missing_dependency(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\nCI=true: a test skipped for a missing optional dependency is a failure; "
            ".ci/run installs every optional piece"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    _fail_in_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    _fail_in_ci((yield).get_result())
