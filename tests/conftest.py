"""Fixtures shared by the tests, and CI's rule for optional dependencies (see _optional.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import Phase, settings

# Under `make mutation` (mutmut sets MUTANT_UNDER_TEST) a failing example is reason enough:
# no shrinking (a mutant that makes simulated workers wait would shrink for minutes), and
# the same examples for every mutant.
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], derandomize=True)
if os.environ.get("MUTANT_UNDER_TEST"):
    settings.load_profile("mutation")

from _book_build import built_book, editions, gettext_templates  # noqa: F401  (the built book, one build per session)
from _optional import in_ci, is_missing_dependency

#: Modules whose tests all run once per engine (the numba runs skip, naming the
#: install, where numba is missing); test_kernels tests the NumPy engine's own paths.
ENGINE_MODULES = {
    "test_gradients": ["numpy", "numba"],
    "test_properties": ["numpy", "numba"],
    "test_errors": ["numpy", "numba"],
    "test_seed_examples": ["numpy", "numba"],
    "test_torch": ["numpy", "numba"],
    "test_kernels": ["numpy"],
    # The adversarial suite of issue 12 checks the NumPy engine's paths by name.
    "test_robustness": ["numpy"],
    "test_stateful": ["numpy"],
    "test_contracts": ["numpy"],
    "test_intermediates": ["numpy"],
}


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `make mutation`, a mutant's tests run fastest first, by the durations mutmut
    recorded in its stats run (in the working directory it runs from): mutmut stops at the
    first failure, so a killed mutant rarely reaches the slow tests."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    try:
        with open("mutmut-stats.json", encoding="utf-8") as f:
            durations = json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    engines = ENGINE_MODULES.get(metafunc.module.__name__.rsplit(".", 1)[-1])
    if engines:
        metafunc.parametrize("bnlit_engine", engines, indirect=True, scope="module")


@pytest.fixture(autouse=True)
def fresh_checker_reference() -> None:
    """Under a mutant of `make mutation`, the exercise checker computes its reference values
    afresh in every test: they are cached per process, and a copy cached before the mutant
    was active (mutmut's fork server) would hide every mutant of that computation. In the
    stats run the cache stays, so only the first checker test is tied to the layer's code."""
    if os.environ.get("MUTANT_UNDER_TEST") not in (None, "", "stats"):
        import bnlit.exercise

        bnlit.exercise._EXPECTED.clear()


@pytest.fixture(scope="module", autouse=True)
def bnlit_engine(request: pytest.FixtureRequest):
    """The engine a module's layers use by default (through BNLIT_ENGINE), when
    ENGINE_MODULES names the module; elsewhere the default ("auto") stands."""
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    if name == "numba":
        pytest.importorskip("numba", reason='the numba engine is optional: pip install "bnlit[fast]"')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BNLIT_ENGINE", name)
        yield name
