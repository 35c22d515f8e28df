"""The translation catalogs: the figures' strings, and what is left to translate.

``python docs/_ext/catalogs.py figures docs docs/_build/gettext`` writes
``figures.pot``: every ``tr("...")`` string in the pages' code (figure text, see
``docs/_editions.py``), next to the pages' own templates, so that
``sphinx-intl update`` merges it into ``figures.po`` like the rest.

``python docs/_ext/catalogs.py status docs/locales/ja`` prints a line per
catalog and exits 1 when anything is left to translate. Both run in
``make translations``; the tests use :func:`status` and :func:`figure_strings`.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

_TR_CALL = re.compile(r"""\b(?:tr|N_)\(\s*(?P<literal>[rR]?"(?:\\.|[^"\\])*"|[rR]?'(?:\\.|[^'\\])*')\s*[,)]""")


def figure_strings(docs: Path) -> list[str]:
    """Every ``tr("...")`` and ``N_("...")`` string in the pages' code, in page order."""
    found: dict[str, None] = {}
    for page in sorted(docs.glob("*.md")):
        for m in _TR_CALL.finditer(page.read_text(encoding="utf-8")):
            found[ast.literal_eval(m.group("literal"))] = None
    return list(found)


def write_figure_template(docs: Path, out: Path) -> None:
    catalog = Catalog(project="bnlit", fuzzy=False)
    for text in figure_strings(docs):
        catalog.add(text)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "figures.pot").open("wb") as f:
        write_po(f, catalog, width=0, omit_header=False)


@dataclass
class CatalogStatus:
    translated: int = 0
    untranslated: list[str] = field(default_factory=list)
    fuzzy: list[str] = field(default_factory=list)
    obsolete: int = 0


def needs_translation(text: str) -> bool:
    """Whether a message has words in it: numbers, math and code alone stay as they are."""
    words = re.sub(r"\$[^$]*\$|`[^`]*`", " ", text)
    return re.search(r"[A-Za-z]{2,}", words) is not None


# What a translation must carry over unchanged: roles with their targets, math,
# inline code and link targets.
_KEEP = [
    re.compile(r"\{[\w:-]+\}`[^`]*`"),  # {glue:text}`name:.2f`, {doc}`page`, {cite}`key`
    re.compile(r"\$\$.*?\$\$|\$[^$]+\$", re.S),  # math
    re.compile(r"(?<![}A-Za-z0-9_])`[^`]+`"),  # inline code
    re.compile(r"\]\(([^)]*)\)"),  # link targets
    re.compile(r"\{\w*\}"),  # str.format fields of figure text
]


_TITLED_ROLE = re.compile(r"^(\{[\w:-]+\})`[^`<]*<([^`>]+)>`$")


def kept_parts(text: str) -> list[str]:
    """The roles, math, code and link targets in ``text``, sorted.

    A cross-reference role with a title of its own (``{ref}`the title <label>```)
    keeps only its role and target: the title is prose, and is translated.
    """
    parts: list[str] = []
    for pattern in _KEEP:
        parts += [_TITLED_ROLE.sub(r"\1`<\2>`", m.group(0)) for m in pattern.finditer(text)]
        text = pattern.sub(" ", text)
    return sorted(parts)


def problems(locale: Path) -> list[str]:
    """Translations that lost or changed a role, a formula, code or a link target."""
    found = []
    folder = locale / "LC_MESSAGES"
    for path in sorted(folder.rglob("*.po")):
        with path.open("rb") as f:
            catalog = read_po(f)
        for message in catalog:
            if message.id and isinstance(message.string, str) and message.string and not message.fuzzy:
                # Each must appear (a translation may repeat one, or order them otherwise).
                want, got = set(kept_parts(message.id)), set(kept_parts(message.string))
                if want != got:
                    missing = sorted(set(want) - set(got))
                    extra = sorted(set(got) - set(want))
                    found.append(f"{path.name}: {message.id[:60]!r}: missing {missing}, unexpected {extra}")
    return found


def status(locale: Path) -> dict[str, CatalogStatus]:
    """Per catalog (path relative to ``locale/LC_MESSAGES``), the messages' state."""
    result = {}
    folder = locale / "LC_MESSAGES"
    for path in sorted(folder.rglob("*.po")):
        with path.open("rb") as f:
            catalog = read_po(f)
        s = CatalogStatus(obsolete=len(catalog.obsolete))
        for message in catalog:
            if not message.id:
                continue  # the header
            text = message.id if isinstance(message.id, str) else message.id[0]
            if not needs_translation(text):
                continue
            if message.fuzzy:
                s.fuzzy.append(text)
            elif not message.string or (not isinstance(message.string, str) and not all(message.string)):
                s.untranslated.append(text)
            else:
                s.translated += 1
        result[path.relative_to(folder).as_posix()] = s
    return result


def main(locale: str) -> int:
    broken = problems(Path(locale))
    for line in broken:
        print(f"    broken: {line}")
    todo = len(broken)
    for name, s in status(Path(locale)).items():
        todo += len(s.untranslated) + len(s.fuzzy)
        print(f"{name:32} {s.translated:4} translated  {len(s.untranslated):4} new  {len(s.fuzzy):4} fuzzy  {s.obsolete:4} obsolete")
        for text in s.untranslated + s.fuzzy:
            print(f"    to do: {text[:100]!r}")
    print(f"{todo} messages to translate or review" if todo else "every message is translated")
    return 1 if todo else 0


if __name__ == "__main__":
    if sys.argv[1] == "figures":
        write_figure_template(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(main(sys.argv[2]))
