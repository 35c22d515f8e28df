"""The built book, as a reader gets it: one strict build per test session.

The fixture :func:`built_book` builds like ``make html`` (``-W --keep-going``,
every notebook executed afresh into a scratch cache), packs the result with the
same script as ``make html`` (docs/_ext/book_zip.py) and unzips the zip into
another scratch folder. Tests that open pages read the unzipped copy: what a
teacher hands to a class. ``tests/conftest.py`` makes the fixture available to
every test module.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ZIP_SCRIPT = DOCS / "_ext" / "book_zip.py"
#: The single folder every file of the zip sits in (see docs/_ext/book_zip.py).
ZIP_FOLDER = "bnlit-book"


@dataclass(frozen=True)
class BuiltBook:
    html: Path  # Sphinx's output folder
    archive: Path  # the zip that ``make html`` also writes
    unzipped: Path  # the book's folder after unzipping the archive elsewhere


def build_book(out: Path) -> BuiltBook:
    """Build the book strictly into ``out``, zip it, unzip the zip into ``out / 'unzipped'``."""
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
            "-d", str(out / "doctrees"),
            "-D", f"nb_execution_cache_path={out / 'cache'}",
            str(DOCS), str(out / "html"),
        ],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    archive = out / "bnlit-book.zip"
    packed = subprocess.run(
        [sys.executable, str(ZIP_SCRIPT), str(out / "html"), str(archive)],
        capture_output=True, text=True, timeout=300,
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr
    with zipfile.ZipFile(archive) as book:
        book.extractall(out / "unzipped")
    return BuiltBook(html=out / "html", archive=archive, unzipped=out / "unzipped" / ZIP_FOLDER)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    return build_book(tmp_path_factory.mktemp("built_book"))
