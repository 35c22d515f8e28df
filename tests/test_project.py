"""What a newcomer relies on: the README's commands and example, and the CI and RTD files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_two_commands_and_they_are_make_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("html", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "docs/_build/html/index.html" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out, dx, pred = namespace["out"], namespace["dx"], namespace["pred"]
    assert out.dtype == np.float32 and out.shape == (32, 64, 8, 8)
    assert np.abs(dx).max() > 0.1  # a real gradient, not the all-ones dout's zero
    assert pred.shape == out.shape


def test_readthedocs_config_points_at_real_files() -> None:
    config = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text())
    assert config["version"] == 2
    assert config["build"]["os"]
    assert str(config["build"]["tools"]["python"]).startswith("3.")
    sphinx = config["sphinx"]
    assert sphinx["configuration"].endswith("conf.py")
    assert (ROOT / sphinx["configuration"]).is_file()
    assert sphinx["fail_on_warning"] is True
    installs = config["python"]["install"]
    project = [item for item in installs if item.get("method") == "pip"]
    assert project and (ROOT / project[0]["path"] / "pyproject.toml").is_file()
    assert "docs" in project[0]["extra_requirements"]
    for item in installs:
        if "requirements" in item:
            assert (ROOT / item["requirements"]).is_file()
