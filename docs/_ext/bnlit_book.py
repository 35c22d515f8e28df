"""The book's own Sphinx machinery: the execution-cache key and the notebook downloads.

``conf.py`` calls :func:`execution_cache_path` for its setting and lists this
module as an extension (for :func:`offer_notebook_download`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Libraries whose versions can change what the pages compute or show.
LIBRARIES = ("numpy", "sympy", "matplotlib", "myst-nb", "ipykernel")
#: Optional libraries whose presence changes what the pages run on (bnlit's engine, torch).
OPTIONAL_LIBRARIES = ("numba", "torch")
#: Folders under docs/ that hold build products, not inputs.
SKIP_DIRS = {"_build", "__pycache__", ".ipynb_checkpoints", ".jupyter_cache"}


#: The one catalog under docs/locales that cells read (figure text, see docs/_editions.py).
#: The pages' own catalogs are applied by Sphinx to what the cells produced and
#: never reach a cell: editing a translation must not re-execute the book.
CELL_CATALOG = "figures.po"


def _files(folder: Path, skip_pages: bool) -> Iterator[Path]:
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if not path.is_file() or set(relative) & SKIP_DIRS:
            continue
        if skip_pages and (path.suffix == ".md" or (relative[0] == "locales" and path.name != CELL_CATALOG)):
            continue
        yield path


def key_inputs(docs: Path) -> list[Path]:
    """Every file the pages can read besides their own cells.

    All of the package (recursively: engines, its message catalogs, data), and
    every file under ``docs/`` that is not a page (the book's helpers, data,
    extensions, static files, bibliography, the figures' catalogs). The pages'
    cells are keyed by jupyter-cache itself; the pages' catalogs only translate
    what the cells produced.
    """
    root = docs.parent
    return sorted([*_files(root / "bnlit", skip_pages=False), *_files(docs, skip_pages=True)])


def execution_key(docs: Path) -> str:
    """Hash of :func:`key_inputs`' contents and the libraries the pages run with.

    jupyter-cache keys only on cell source (MyST-NB issue #299): keying the cache
    folder on this hash makes a changed bnlit (or helper, data, library)
    re-execute the pages. It does not depend on the book's language, so every
    edition shares one execution.
    """
    root = docs.parent
    digest = hashlib.sha256()
    for path in key_inputs(docs):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for dist in LIBRARIES:
        digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    for dist in OPTIONAL_LIBRARIES:  # the pages run on the engine they find
        try:
            digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist} absent".encode())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


def execution_cache_path(docs: Path) -> str:
    """The cache folder for the current key; older keys' folders are removed
    (they can never be used again)."""
    caches = docs / "_build" / ".jupyter_cache"
    current = caches / execution_key(docs)
    for stale in caches.glob("*"):
        if stale.is_dir() and stale != current:
            shutil.rmtree(stale, ignore_errors=True)
    return str(current)


def offer_notebook_download(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
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


def glue_in_translations() -> None:
    """Let ``{glue:...}`` roles work inside translated text.

    Sphinx parses a translated paragraph as a small document of its own, which
    lacks the notebook's glue data, so MyST-NB's glue roles fail there ("No key
    ... found in glue data"). Such a role is turned into MyST-NB's own
    cross-document form, ``{glue:text}`/page.md::key:fmt```, which is resolved
    after reading from the page's glue cache: the same number as in English.
    """
    from myst_nb.ext.glue import roles

    for role in (roles.PasteTextRole, roles.PasteRoleAny, roles.PasteMarkdownRole):
        if getattr(role.run, "_bnlit_translated", False):
            continue
        original = role.run

        def run(self: Any, original: Any = original, role: Any = role) -> Any:
            env = getattr(self.document.settings, "env", None)
            if env is not None and "nb_renderer" not in self.document and "::" not in self.text:
                page = Path(env.doc2path(env.docname)).relative_to(env.srcdir).as_posix()
                text = self.text if ":" in self.text else self.text + ":s"  # key:format, as MyST-NB splits it
                self.text = f"/{page}::{text}" if role is roles.PasteTextRole else f"/{page}::{self.text}"
            return original(self)

        run._bnlit_translated = True  # type: ignore[attr-defined]
        role.run = run


#: MyST-NB's buttons for hidden code, per edition (its defaults are English).
CODE_PROMPTS = {"ja": ("コードを表示", "コードを隠す")}
#: The book's title, per edition.
TITLES = {"ja": "bnlit：バッチ正規化を導出し、検証する"}


def localize_code_prompts(app: Any, config: Any) -> None:
    """The show/hide buttons of hidden code cells, and the title, in the edition's language."""
    if config.language in CODE_PROMPTS:
        config.nb_code_prompt_show, config.nb_code_prompt_hide = CODE_PROMPTS[config.language]
    config.html_title = TITLES.get(config.language, config.html_title)


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", localize_code_prompts)
    # Before the theme's own handler (priority 500) builds the download menu.
    app.connect("html-page-context", offer_notebook_download, priority=400)
    glue_in_translations()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
