"""Translations of the library strings a reader sees (the exercise checker's reports).

English is the source language: the English text in the code is the message
id, and English needs no catalog. Every other language has a gettext catalog
inside the package, shipped in the wheel as package data::

    bnlit/locale/<lang>/LC_MESSAGES/bnlit.po   the translations (edited, committed)
    bnlit/locale/<lang>/LC_MESSAGES/bnlit.mo   compiled from the .po (committed, shipped)

Messages are marked in the code with :func:`N_` (a no-op that tools can find)
and translated at the time of use with ``translation(lang).gettext``. Numbers
are never part of a message: they are formatted into ``{placeholders}``, so a
translation does not go stale when a number changes.

After changing a marked message, refresh the catalog and compile it (GNU
gettext; ``pybabel compile`` from the docs environment does the last step too)::

    xgettext --from-code=UTF-8 --language=Python --keyword=N_ --no-location \\
        --no-wrap -o /tmp/bnlit.pot bnlit/exercise.py
    msgmerge --update --no-wrap --no-fuzzy-matching --backup=none \\
        bnlit/locale/ja/LC_MESSAGES/bnlit.po /tmp/bnlit.pot
    # translate every new message, then
    msgfmt --check -o bnlit/locale/ja/LC_MESSAGES/bnlit.mo bnlit/locale/ja/LC_MESSAGES/bnlit.po

``tests/test_exercise.py`` fails while a marked message has no translation or
the ``.mo`` does not hold what the ``.po`` says.
"""

from __future__ import annotations

import functools
import gettext
from pathlib import Path

__all__ = ["DOMAIN", "LOCALEDIR", "N_", "languages", "translation"]

#: The gettext domain of bnlit's library strings.
DOMAIN = "bnlit"
#: Where the catalogs live: inside the package, so an installed wheel has them.
LOCALEDIR = Path(__file__).resolve().with_name("locale")
_SOURCE = "en"


def N_(message: str) -> str:
    """Mark ``message`` for translation (it is translated where it is shown)."""
    return message


def languages() -> tuple[str, ...]:
    """The languages bnlit's reports can be written in: English and every shipped catalog."""
    found = sorted(p.parent.parent.name for p in LOCALEDIR.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))
    return (_SOURCE, *found)


@functools.lru_cache(maxsize=None)
def translation(lang: str) -> gettext.NullTranslations:
    """The catalog for ``lang`` (``"en"``, ``"ja"``, ...).

    Raises
    ------
    ValueError
        No catalog for ``lang``; the message lists the languages there are.
    """
    if not isinstance(lang, str):
        raise TypeError(f"lang must be a language code such as 'en' or 'ja'; got {type(lang).__name__}")
    if lang == _SOURCE:
        return gettext.NullTranslations()
    if lang not in languages():
        raise ValueError(f"lang must be one of {', '.join(map(repr, languages()))}; got {lang!r}")
    return gettext.translation(DOMAIN, str(LOCALEDIR), languages=[lang])
