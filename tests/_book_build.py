"""The built book, as a reader gets it: one strict build per test session.

The fixture :func:`built_book` builds like ``make html``: one strict build
(``-W --keep-going``) per language of the Makefile's ``LANGUAGES`` into
``html/<lang>``, sharing one scratch execution cache (the pages run once), the
language chooser as ``html/index.html``; then it packs ``html`` with the same
script as ``make html`` (docs/_ext/book_zip.py) and unzips the zip into another
scratch folder. Tests that open pages read the unzipped copy: what a teacher
hands to a class. :func:`editions` gives each language's folder of the build.
``tests/conftest.py`` makes both fixtures available to every test module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ZIP_SCRIPT = DOCS / "_ext" / "book_zip.py"
CHOOSER = DOCS / "_chooser" / "index.html"
#: The editions ``make html`` builds, in its order (the Makefile's ``LANGUAGES``).
LANGUAGES = tuple(re.search(r"^LANGUAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split())
#: The single folder every file of the zip sits in (see docs/_ext/book_zip.py).
ZIP_FOLDER = "bnlit-book"


@dataclass(frozen=True)
class BuiltBook:
    html: Path  # Sphinx's output folder
    gettext: Path  # the message templates (.pot) of the English sources, as `make translations` extracts them
    archive: Path  # the zip that ``make html`` also writes
    unzipped: Path  # the book's folder after unzipping the archive elsewhere


def build_book(out: Path) -> BuiltBook:
    """Build every edition strictly into ``out / 'html'``, zip it, unzip the zip into ``out / 'unzipped'``."""
    for lang in LANGUAGES:
        result = subprocess.run(
            [
                sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                "-D", f"language={lang}", "-d", str(out / "doctrees" / lang),
                "-D", f"nb_execution_cache_path={out / 'cache'}",
                str(DOCS), str(out / "html" / lang),
            ],
            capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, f"the {lang!r} edition: " + result.stdout[-5000:] + result.stderr[-5000:]
    # The English messages, extracted from the same execution (the cache is shared).
    extracted = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "gettext", "-d", str(out / "doctrees" / "gettext"),
         "-D", f"nb_execution_cache_path={out / 'cache'}", str(DOCS), str(out / "gettext")],
        capture_output=True, text=True, timeout=900,
    )
    assert extracted.returncode == 0, extracted.stdout[-5000:] + extracted.stderr[-5000:]
    shutil.copyfile(CHOOSER, out / "html" / "index.html")
    archive = out / "bnlit-book.zip"
    packed = subprocess.run(
        [sys.executable, str(ZIP_SCRIPT), str(out / "html"), str(archive)],
        capture_output=True, text=True, timeout=300,
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr
    with zipfile.ZipFile(archive) as book:
        book.extractall(out / "unzipped")
    return BuiltBook(html=out / "html", gettext=out / "gettext", archive=archive, unzipped=out / "unzipped" / ZIP_FOLDER)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    return build_book(tmp_path_factory.mktemp("built_book"))


@pytest.fixture(scope="session")
def editions(built_book: BuiltBook) -> dict[str, Path]:
    """Each language's folder of the build; the chooser is ``index.html`` beside them."""
    return {lang: built_book.html / lang for lang in LANGUAGES}


@pytest.fixture(scope="session")
def gettext_templates(built_book: BuiltBook) -> Path:
    """The .pot files of the English sources, to compare with the catalogs."""
    return built_book.gettext
