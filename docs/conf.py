"""Sphinx configuration of the bnlit book (build settings only; pages hold content)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bnlit

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))  # the book's own extensions

from bnlit_book import execution_cache_path  # noqa: E402

project = "bnlit"
author = "The bnlit team"
copyright = "2026, the bnlit team"
release = version = bnlit.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_togglebutton",
    "bnlit_book",  # .ipynb downloads (docs/_ext/bnlit_book.py)
    "sphinxcontrib.bibtex",  # citations from docs/references.bib, listed on references.md
    "offline_math",  # MathJax served from _static, no CDN (docs/_ext/offline_math.py)
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md", "_ext", "_chooser"]
templates_path = ["_templates"]

# --- Languages: one build per language from the English sources and the
# catalogs in docs/locales/<lang>/LC_MESSAGES/<page>.po (`make translations`).
# Read the Docs tells each translation project its language.
LANGUAGES = {"en": "English", "ja": "日本語"}
language = os.environ.get("READTHEDOCS_LANGUAGE", "en")  # -D language=ja overrides
locale_dirs = ["locales/"]
gettext_compact = False  # one catalog per page
gettext_uuid = False
gettext_location = False  # catalogs do not change when only line numbers do
# Napoleon turns docstring types ("str or None") into links that a translated
# field list cannot carry over; Sphinx then warns, though the text is right.
# The catalogs' own check (docs/_ext/catalogs.py, run by the tests) verifies that
# every role, formula, code span and link of a message survives its translation.
suppress_warnings = ["i18n.inconsistent_references"]
# --- Notebooks: executed at build time, strictly, with a cache keyed on bnlit itself.
nb_execution_mode = "cache"
nb_execution_raise_on_error = True
nb_execution_show_tb = True  # a failing cell prints its traceback in the build log
nb_execution_timeout = 300
nb_merge_streams = True
nb_render_markdown_format = "myst"  # Markdown outputs (tables built by cells) may hold math
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
bibtex_default_style = "plain"  # numbered list, sorted by author


# The cache folder is keyed on everything the pages read besides their cells
# (docs/_ext/bnlit_book.py); overridable with -D nb_execution_cache_path=...
nb_execution_cache_path = execution_cache_path(DOCS)

# --- HTML
html_theme = "sphinx_book_theme"
html_title = "bnlit: batch normalization, derived and verified"
html_static_path = ["_static"]
html_css_files = ["bnlit.css"]
html_theme_options = {
    "use_download_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # The switch to the same page in the other language, in every page's header.
    "article_header_end": ["language-switch.html", "article-header-buttons.html"],
}
html_context = {
    "bnlit_languages": LANGUAGES,
    # Where the editions sit relative to each other: docs/_build/html/<lang>/ here,
    # /<lang>/<version>/ on Read the Docs.
    "bnlit_edition_up": "../../" if os.environ.get("READTHEDOCS") else "../",
    "bnlit_edition_path": (os.environ.get("READTHEDOCS_VERSION", "latest") + "/") if os.environ.get("READTHEDOCS") else "",
    # Light or dark as the reader's system says; unset, a first visit logs "Got invalid theme mode".
    "default_mode": "auto",
}
# Search results without page excerpts: fetching the pages for them fails when the
# book is read from files (file://), the book's first use.
html_show_search_summary = False
# Copy buttons on code cells, not on their outputs.
copybutton_selector = "div:not(.output) > div.highlight pre"
copybutton_exclude = ".linenos, .gp, .go"

# --- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
