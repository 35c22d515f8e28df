"""Pack the built book into one zip that opens anywhere once unzipped.

``make html`` runs ``python docs/_ext/book_zip.py docs/_build/html docs/_build/bnlit-book.zip``.
Every file sits under one folder, ``bnlit-book/``, so that unzipping gives
``bnlit-book/index.html``; the book needs no network (docs/_ext/offline_math.py).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

FOLDER = "bnlit-book"
#: Sphinx's record of the build's settings: no use to a reader.
SKIP = {".buildinfo", ".buildinfo.bak"}


def zip_book(html: Path, archive: Path) -> int:
    """Write every file under ``html`` into ``archive`` below :data:`FOLDER`; return the count."""
    if not (html / "index.html").is_file():
        raise FileNotFoundError(f"expected a built book with index.html in {html}, found none")
    files = sorted(p for p in html.rglob("*") if p.is_file() and p.name not in SKIP)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".part")  # a failed run leaves no half zip
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as book:
        for path in files:
            book.write(path, f"{FOLDER}/{path.relative_to(html).as_posix()}")
    partial.replace(archive)
    return len(files)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python book_zip.py HTML_DIR ZIP_FILE")
    count = zip_book(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{sys.argv[2]}: {count} files; unzip it and open {FOLDER}/index.html")
