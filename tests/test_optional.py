"""CI's rule for optional dependencies: a skip on a learner's machine, a failure in CI.

Each case runs pytest in a scratch folder with this suite's conftest.py and
_optional.py, on tests that need a module that does not exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _optional import in_ci, is_missing_dependency

HERE = Path(__file__).resolve().parent

CASES = '''
import pytest
from _optional import require, require_program

def test_require_module():
    require("bnlit_no_such_module", install="pip install bnlit-no-such-module")

def test_require_program():
    require_program("bnlit-no-such-program", install="apt-get install bnlit-no-such-program")

def test_importorskip():
    pytest.importorskip("bnlit_no_such_module")

@pytest.mark.skip(reason="not on this platform")
def test_other_skip():
    pass

def test_runs():
    pass
'''


MODULE_LEVEL = '''
from _optional import require

torch = require("bnlit_no_such_module", install="pip install bnlit-no-such-module")

def test_never_collected_without_it():
    pass
'''


def run(tmp_path: Path, ci: str | None) -> str:
    """pytest's summary of the two files above, with CI set to ``ci`` (or unset)."""
    shutil.copy(HERE / "_optional.py", tmp_path / "_optional.py")
    # The real conftest (its CI rule), less the book's fixtures, which need the project.
    conftest = (HERE / "conftest.py").read_text(encoding="utf-8")
    (tmp_path / "conftest.py").write_text(
        "\n".join(line for line in conftest.splitlines() if not line.startswith("from _book_build import")),
        encoding="utf-8")
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({} if ci is None else {"CI": ci})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--continue-on-collection-errors",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    return f"exit code {result.returncode}\n{result.stdout}"


def test_a_learner_gets_skips_that_say_what_to_install(tmp_path) -> None:
    summary = run(tmp_path, ci=None)
    assert summary.startswith("exit code 0"), summary
    assert "1 passed, 5 skipped" in summary
    assert "install it with: pip install bnlit-no-such-module" in summary
    assert "install it with: apt-get install bnlit-no-such-program" in summary


def test_ci_fails_on_every_skip_for_a_missing_dependency(tmp_path) -> None:
    summary = run(tmp_path, ci="true")
    assert summary.startswith("exit code 1"), summary
    assert "3 failed, 1 passed, 1 skipped, 1 error" in summary
    for name in ("test_require_module", "test_require_program", "test_importorskip"):
        assert f"FAILED test_cases.py::{name}" in summary
    assert "ERROR test_module_level.py" in summary
    assert "SKIPPED [1] test_cases.py:14: not on this platform" in summary


def test_what_counts_as_ci(monkeypatch) -> None:
    for value, ci in [("true", True), ("1", True), ("True", True), ("false", False), ("", False), ("0", False)]:
        monkeypatch.setenv("CI", value)
        assert in_ci() is ci, value
    monkeypatch.delenv("CI")
    assert not in_ci()


def test_which_reasons_name_a_missing_dependency() -> None:
    assert is_missing_dependency("could not import 'torch': No module named 'torch'")
    assert is_missing_dependency("the browser test needs Chromium: apt-get install chromium")
    assert is_missing_dependency("optional dependency missing: numba")
    assert not is_missing_dependency("not on this platform")
