"""The project installs as a package: a wheel holds every module and py.typed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.packaging
def test_wheel_installs_and_imports(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    (wheel,) = wheels.glob("bnlit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"bnlit/{p.name}" for p in (ROOT / "bnlit").glob("*.py")}
    assert sources | {"bnlit/py.typed"} <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    code = "import bnlit, numpy as np; print(bnlit.__file__); print(bnlit.BatchNormalization(np.ones(2), np.zeros(2)).forward(np.eye(2)).tolist())"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    location, values = result.stdout.splitlines()
    assert location.startswith(str(target))
    v = 0.5 / math.sqrt(0.25 + 1e-8)  # eye(2): each column is 1, 0 with mean 0.5, variance 0.25
    assert sum(json.loads(values), []) == pytest.approx([v, -v, -v, v], rel=1e-15)
