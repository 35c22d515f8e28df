"""bnlit is a typed package (it ships py.typed): its annotations must hold up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_type_errors_in_bnlit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "bnlit"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
