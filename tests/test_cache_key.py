"""The execution cache key sees every file the pages can read (MyST-NB #299).

jupyter-cache keys only on cell source; the book keys its cache folder on a
hash of everything else the pages read. Each kind of file is edited in a
scratch copy of the project, and the key must change; editing a page's text
must not change it (jupyter-cache handles cells itself), and neither must the
book's language (both editions share one execution).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_extension():
    spec = importlib.util.spec_from_file_location("bnlit_book_under_test", ROOT / "docs" / "_ext" / "bnlit_book.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "bnlit", tmp_path / "bnlit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("_build", "__pycache__"))
    return tmp_path


EDITS = [
    "bnlit/layer.py",
    "bnlit/engines/numpy.py",  # a subpackage
    "bnlit/locale/ja/LC_MESSAGES/bnlit.po",  # the library's catalogs (created if missing)
    "docs/_book.py",
    "docs/_exercise_solution.py",  # read by the exercise page (missed by the old key)
    "docs/data/benchmark.json",
    "docs/_ext/bnlit_book.py",
    "docs/conf.py",
    "docs/_static/bnlit.css",
    "docs/locales/ja/LC_MESSAGES/figures.po",  # figure text, read by the cells (created if missing)
]


@pytest.mark.parametrize("name", EDITS)
def test_the_key_changes_when_a_file_the_pages_read_changes(project: Path, name: str) -> None:
    key = _load_extension().execution_key
    before = key(project / "docs")
    assert key(project / "docs") == before  # stable while nothing changes
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    assert key(project / "docs") != before, name


def test_editing_a_page_or_its_translation_or_choosing_a_language_keeps_the_key(project: Path, monkeypatch) -> None:
    key = _load_extension().execution_key
    before = key(project / "docs")
    (project / "docs" / "index.md").write_text("# Another text\n", encoding="utf-8")
    page_catalog = project / "docs" / "locales" / "ja" / "LC_MESSAGES" / "index.po"
    page_catalog.parent.mkdir(parents=True, exist_ok=True)
    page_catalog.write_text('msgid "a"\nmsgstr "b"\n', encoding="utf-8")
    monkeypatch.setenv("READTHEDOCS_LANGUAGE", "ja")
    assert key(project / "docs") == before


def test_build_products_are_not_inputs(project: Path) -> None:
    ext = _load_extension()
    before = ext.execution_key(project / "docs")
    for junk in ("docs/_build/html/index.html", "bnlit/__pycache__/layer.cpython.pyc"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    assert ext.execution_key(project / "docs") == before


def test_stale_cache_folders_are_removed(project: Path) -> None:
    ext = _load_extension()
    stale = project / "docs" / "_build" / ".jupyter_cache" / "0123456789abcdef"
    stale.mkdir(parents=True)
    current = Path(ext.execution_cache_path(project / "docs"))
    assert not stale.exists() and current.parent == stale.parent
    assert sys.modules.get("bnlit_book_under_test") is None  # loaded without touching sys.modules
