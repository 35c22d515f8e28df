"""Sphinx configuration of the bnlit book (build settings only; pages hold content)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
from pathlib import Path

import bnlit

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

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
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
# --- Notebooks: executed at build time, strictly, with a cache keyed on bnlit itself.
nb_execution_mode = "cache"
nb_execution_raise_on_error = True
nb_execution_show_tb = True  # a failing cell prints its traceback in the build log
nb_execution_timeout = 300
nb_merge_streams = True
nb_render_markdown_format = "myst"  # Markdown outputs (tables built by cells) may hold math
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]


def _execution_key() -> str:
    """Hash of what the pages read besides their own cells: bnlit's sources, the
    book's helper module and data, and the libraries the pages run with.

    jupyter-cache keys only on cell source (MyST-NB issue #299): keying the cache
    folder on this hash makes a changed bnlit (or data, or library) re-execute
    the pages.
    """
    digest = hashlib.sha256()
    inputs = [*(ROOT / "bnlit").glob("*.py"), DOCS / "_book.py", *(DOCS / "data").glob("*")]
    for path in sorted(inputs):
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    for dist in ("numpy", "sympy", "matplotlib", "myst-nb", "ipykernel"):
        digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


# Overridable with -D nb_execution_cache_path=... (the tests build into a scratch folder).
_CACHES = DOCS / "_build" / ".jupyter_cache"
nb_execution_cache_path = str(_CACHES / _execution_key())
# Caches of older sources can never be used again: keep only the current one.
for _stale in _CACHES.glob("*"):
    if _stale.is_dir() and _stale.name != Path(nb_execution_cache_path).name:
        shutil.rmtree(_stale, ignore_errors=True)

# --- HTML
html_theme = "sphinx_book_theme"
html_title = "bnlit: batch normalization, derived and verified"
html_static_path = ["_static"]
html_css_files = ["bnlit.css"]
html_theme_options = {
    "use_download_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
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


def _offer_notebook_download(app, pagename, templatename, context, doctree) -> None:
    """Offer each executed page as ``.ipynb`` in the theme's download menu.

    sphinx-book-theme does this only when launch buttons are configured (which
    needs a public repository); this does the same copy without them.
    """
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app) -> None:
    # Before the theme's own handler (priority 500) builds the download menu.
    app.connect("html-page-context", _offer_notebook_download, priority=400)
