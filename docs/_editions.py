"""Cell outputs for every edition of the book at once.

The pages are executed once and the result serves the English and the Japanese
build alike (the execution cache does not depend on the language). A figure or
a report whose text is in a language is therefore made in every language, and
each edition shows its own (``.bnlit-lang-<code>`` in ``_static/bnlit.css``).

Figure text is written in English in the page, wrapped in ``tr("...")`` (or
marked ``N_("...")`` where it is kept in a variable and translated later);
``make translations`` collects those strings (``_ext/catalogs.py``) into the
catalog ``locales/<lang>/LC_MESSAGES/figures.po``, where they are translated
like the pages' prose.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
from IPython.display import HTML, display

DOCS = Path(__file__).resolve().parent
LANGUAGES = ("en", "ja")
FIGURE_CATALOG = "figures"
#: A font with Japanese glyphs that pip installs (matplotlib-fontja ships IPAexGothic).
JAPANESE_FONT = "IPAexGothic"


@lru_cache(maxsize=None)
def _catalog(lang: str) -> dict[str, str]:
    if lang == "en":
        return {}
    from babel.messages.pofile import read_po

    path = DOCS / "locales" / lang / "LC_MESSAGES" / f"{FIGURE_CATALOG}.po"
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id and m.string and not m.fuzzy}


def translator(lang: str) -> Callable[[str], str]:
    """``tr(text)``: ``text`` in ``lang`` (English when the catalog lacks it)."""
    catalog = _catalog(lang)
    return lambda text: catalog.get(text, text)


def _font_for(lang: str) -> dict[str, object]:
    if lang != "ja":
        return {}
    import matplotlib_fontja  # noqa: F401  (registers IPAexGothic with matplotlib)

    return {"font.family": [JAPANESE_FONT], "axes.unicode_minus": False}


def _svg(fig: mpl.figure.Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _texts(fig: mpl.figure.Figure) -> str:
    """The figure's words (titles, labels, legends) for the image's ``alt`` text."""
    found = [t.get_text() for t in fig.findobj(mpl.text.Text) if t.get_visible()]
    words = [t for t in found if re.search(r"[^\W\d_]{2,}", t)]
    return " · ".join(dict.fromkeys(words))


def N_(text: str) -> str:
    """Mark figure text kept in a variable for translation; ``tr(variable)`` translates it."""
    return text


def figure(draw: Callable[[Callable[[str], str]], mpl.figure.Figure]) -> None:
    """Show the figure ``draw(tr)`` returns, drawn once per language.

    ``draw`` builds a Matplotlib figure, passing every piece of text through
    ``tr``. Each edition shows its own drawing (as an SVG image whose glyphs are
    paths, so it needs no font on the reader's machine); its ``alt`` text lists
    the figure's words.
    """
    images = []
    # IPAexGothic has no bold face: Matplotlib logs that it uses the regular one.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    for lang in LANGUAGES:
        with mpl.rc_context(_font_for(lang)):
            fig = draw(translator(lang))
            alt, svg = _texts(fig), _svg(fig)
        data = base64.b64encode(svg.encode()).decode()
        images.append(
            f'<img class="bnlit-figure bnlit-lang-{lang}" lang="{lang}" alt="{html.escape(alt)}" '
            f'src="data:image/svg+xml;base64,{data}">'
        )
    display(HTML('<div class="bnlit-figures">' + "".join(images) + "</div>"))


def text(by_language: dict[str, str], *, pre: bool = True) -> None:
    """Show a text given in every language (each edition shows its own)."""
    assert set(by_language) == set(LANGUAGES), f"give the text in {LANGUAGES}"
    tag = "pre" if pre else "div"
    parts = [
        f'<{tag} class="bnlit-text bnlit-lang-{lang}" lang="{lang}">{html.escape(value)}</{tag}>'
        for lang, value in by_language.items()
    ]
    display(HTML("".join(parts)))
