"""Math that renders without network: the book serves its own MathJax 3.

MathJax 3.2.2 comes from the PyPI package ``sphinx-mathjax-offline`` (a ``docs``
dependency). Its own Sphinx hook is not used: it copies all 24 MB of MathJax and
declares no parallel safety, so ``sphinx-build -j 2`` refuses it. This extension
copies only what the pages load (about 2 MB) into ``_static/mathjax`` with
MathJax's licence, and points ``mathjax_path`` there. MathJax 3 fits the
``mathjax3_config`` that MyST-NB sets.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path
from typing import Any

from sphinx.errors import ExtensionError
from sphinx.ext.mathjax import MATHJAX_URL

DIST = "sphinx-mathjax-offline"
VERSION = "3.2.2"
#: Where the package keeps MathJax, relative to its install location.
PACKAGED = "sphinx-mathjax-offline/static/mathjax"
#: Folder under the book's ``_static``, and the script each page with math loads.
TARGET = "mathjax"
ENTRY = "tex-chtml.js"
#: The component, the CommonHTML fonts it asks for, and the TeX extensions it
#: loads on demand (autoload: \boldsymbol, \cancel, ...). all-packages.js is
#: left out: only the tex-full components use it.
SUBSET = (ENTRY, "output/chtml/fonts/woff-v2/*.woff", "input/tex/extensions/*.js")
LEFT_OUT = {"input/tex/extensions/all-packages.js"}
LICENSE = Path(__file__).with_name("mathjax-LICENSE.txt")


def mathjax_source() -> Path:
    """The folder of MathJax inside the installed ``sphinx-mathjax-offline``."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ExtensionError(
            f"offline math needs the package {DIST!r}, which is not installed: "
            'pip install ".[docs]" (or pip install sphinx-mathjax-offline)'
        ) from None
    root = Path(str(dist.locate_file(PACKAGED)))
    entry = root / ENTRY
    if not entry.is_file():
        raise ExtensionError(f"expected MathJax's {ENTRY} in {root} (from {DIST} {dist.version}), found none")
    found = re.search(r'VERSION="(3\.[0-9.]+)"', entry.read_text(encoding="utf-8"))
    if found is None or found.group(1) != VERSION:
        # The licence notice names the version: a new one must be looked at first.
        raise ExtensionError(
            f"expected MathJax {VERSION} in {entry}, found {found.group(1) if found else 'no version'}"
        )
    return root


def subset_files(root: Path) -> list[Path]:
    """The files of :data:`SUBSET` under ``root``, relative to it."""
    files = {path.relative_to(root) for pattern in SUBSET for path in root.glob(pattern)}
    return sorted(path for path in files if path.as_posix() not in LEFT_OUT)


def copy_subset(root: Path, target: Path) -> int:
    """Copy the subset and the licence into ``target``; return the bytes copied."""
    size = 0
    for relative in [*subset_files(root), None]:
        source = LICENSE if relative is None else root / relative
        dest = target / ("LICENSE.txt" if relative is None else relative)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        size += dest.stat().st_size
    return size


def _use_local_copy(app: Any, config: Any) -> None:
    # Only Sphinx's default (a CDN) is replaced: -D mathjax_path=... still wins.
    if config.mathjax_path == MATHJAX_URL:
        config.mathjax_path = f"{TARGET}/{ENTRY}"


def _copy_after_build(app: Any, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    if app.config.mathjax_path != f"{TARGET}/{ENTRY}":
        return
    copy_subset(mathjax_source(), Path(app.outdir) / "_static" / TARGET)


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.mathjax")
    mathjax_source()  # fail at the start of a build, not after it, when MathJax is missing
    app.connect("config-inited", _use_local_copy)
    app.connect("build-finished", _copy_after_build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
