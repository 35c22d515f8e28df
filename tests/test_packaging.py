"""The project installs as a package: a wheel holds every module and py.typed."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.packaging
def test_wheel_installs_and_imports(tmp_path: Path) -> None:
    # Built from a clean copy: a build/ folder left by an earlier build would hide a
    # module that the packaging settings leave out.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "_build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
    )
    (wheel,) = wheels.glob("bnlit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module of the package, subpackages included (found recursively, not listed).
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bnlit").rglob("*.py")}
    assert any("/" in s.removeprefix("bnlit/") for s in sources), "expected at least one subpackage"
    missing = (sources | {"bnlit/py.typed"}) - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    # Import every module of the installed package, then run the layer.
    # A module of an optional engine may need its extra (numba, mpi4py, torch) and nothing else.
    code = (
        "import importlib, pkgutil, bnlit, numpy as np\n"
        "for m in pkgutil.walk_packages(bnlit.__path__, 'bnlit.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ModuleNotFoundError as err:\n"
        "        assert err.name in ('numba', 'mpi4py', 'torch'), (m.name, err)\n"
        "print(bnlit.__file__)\n"
        "print(bnlit.BatchNormalization(np.ones(2), np.zeros(2)).forward(np.eye(2)).tolist())"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n{code}"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    location, values = result.stdout.splitlines()
    assert location.startswith(str(target))
    v = 0.5 / math.sqrt(0.25 + 1e-8)  # eye(2): each column is 1, 0 with mean 0.5, variance 0.25
    assert sum(json.loads(values), []) == pytest.approx([v, -v, -v, v], rel=1e-15)
