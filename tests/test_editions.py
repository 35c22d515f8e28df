"""Both editions, English and Japanese, from one set of sources.

Built by the session's book build (tests/_book_build.py): the same strict
build as `make html`, one per language, sharing one execution.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import _prose

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import catalogs  # noqa: E402

pytestmark = pytest.mark.book

LOCALE = DOCS / "locales" / "ja"
#: Words that stay as they are in Japanese prose: names of people, projects,
#: libraries and of the code's own identifiers.
NAMES = {
    "bnlit", "numpy", "sympy", "pytorch", "torch", "keras", "matplotlib", "sphinx", "python",
    "kratzert", "ioffe", "szegedy", "santurkar", "cs231n", "d2l", "adam", "jupyter", "numba",
    "batchnormalization", "batchnorm1d", "batchnorm2d", "float32", "float64", "float16",
    "gamma", "beta", "rho", "epsilon", "momentum", "dout", "dgamma", "dbeta", "moving_mean",
    "moving_var", "train_flg", "forward", "backward", "staged", "true", "false", "none",
    "x_mu", "x_std", "std", "var", "mean", "std_inv", "relu", "affine", "softmax", "sgd",
    "ipynb", "html", "svg", "api", "gpu", "cpu", "mpi", "like_pytorch", "nan", "inf",
}


def _html_pages(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.html")
            if not p.relative_to(root).parts[0].startswith("_static")}


def test_every_page_exists_in_both_languages(editions: dict[str, Path]) -> None:
    en, ja = _html_pages(editions["en"]), _html_pages(editions["ja"])
    assert en == ja
    assert "glossary.html" in en and "backward.html" in en


def test_chooser_leads_to_both_editions(editions: dict[str, Path]) -> None:
    chooser = (editions["en"].parent / "index.html").read_text(encoding="utf-8")
    for lang in ("en", "ja"):
        assert f'href="{lang}/index.html"' in chooser
        assert (editions[lang] / "index.html").is_file()


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_switch_leads_to_the_same_page_in_the_other_language(editions: dict[str, Path], lang: str) -> None:
    other = "ja" if lang == "en" else "en"
    switch = re.compile(r'<a class="btn bnlit-language-switch" href="([^"]+)"')
    checked = 0
    for page in _html_pages(editions[lang]):
        html = (editions[lang] / page).read_text(encoding="utf-8")
        links = switch.findall(html)
        if page.startswith(("_modules", "genindex", "search", "py-modindex")) and not links:
            continue  # generated pages without the article header
        assert len(links) == 1, page
        target = ((editions[lang] / page).parent / links[0]).resolve()
        assert target == (editions[other] / page).resolve(), (page, links[0])
        assert target.is_file()
        checked += 1
    assert checked >= 12


def test_japanese_pages_declare_their_language(editions: dict[str, Path]) -> None:
    for page in _html_pages(editions["ja"]):
        head = (editions["ja"] / page).read_text(encoding="utf-8")[:400]
        assert 'lang="ja"' in head, page


def test_japanese_pages_have_no_english_paragraph(editions: dict[str, Path]) -> None:
    english = {}
    for page in sorted(_html_pages(editions["ja"])):
        if page.startswith(("_modules", "genindex", "search", "py-modindex")):
            continue
        html = (editions["ja"] / page).read_text(encoding="utf-8")
        found = [p for p in _prose.paragraphs(html) if _prose.is_english(p, NAMES)]
        if page == "glossary.html":  # its first column is the English term, on purpose
            found = [p for p in found if len(p.split()) > 6]
        if found:
            english[page] = found[:3]
    assert not english, english


def test_the_english_check_sees_english(editions: dict[str, Path]) -> None:
    """The check above is not blind: the English edition fails it."""
    html = (editions["en"] / "backward.html").read_text(encoding="utf-8")
    assert sum(_prose.is_english(p, NAMES) for p in _prose.paragraphs(html)) >= 10


def test_figures_speak_the_page_language(editions: dict[str, Path]) -> None:
    figures = re.compile(r'<img class="bnlit-figure bnlit-lang-(\w+)" lang="\w+" alt="([^"]*)"')
    pages_with_figures = 0
    for page in _html_pages(editions["ja"]):
        found = figures.findall((editions["ja"] / page).read_text(encoding="utf-8"))
        if not found:
            continue
        pages_with_figures += 1
        ja = [alt for lang, alt in found if lang == "ja"]
        assert ja and len(ja) == len(found) / 2, page
        for alt in ja:
            assert _prose.CJK.search(alt), (page, alt)
            assert not _prose.is_english(alt, NAMES), (page, alt)
    assert pages_with_figures >= 3


@pytest.mark.parametrize("query, page", [("逆伝播", "backward"), ("移動平均", "prediction"), ("計算グラフ", "graph")])
def test_japanese_search_finds_the_page(editions: dict[str, Path], query: str, page: str) -> None:
    """Sphinx's Japanese search splits the query as it split the pages; every piece must lead to the page."""
    import json

    from sphinx.search.ja import DefaultSplitter

    index_js = (editions["ja"] / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(index_js[index_js.index("(") + 1 : index_js.rindex(")")])
    doc = index["docnames"].index(page)
    for word in DefaultSplitter({}).split(query):
        word = word.strip().lower()
        if not word:
            continue
        hits = index["terms"].get(word, []) if word in index["terms"] else []
        hits = [hits] if isinstance(hits, int) else hits
        titles = index["titleterms"].get(word, [])
        titles = [titles] if isinstance(titles, int) else titles
        assert doc in hits or doc in titles, (query, word)


def test_every_message_is_translated() -> None:
    todo = {name: s.untranslated + s.fuzzy for name, s in catalogs.status(LOCALE).items() if s.untranslated or s.fuzzy}
    assert not todo, {k: v[:3] for k, v in todo.items()}


def test_translations_keep_roles_math_code_and_links() -> None:
    assert catalogs.problems(LOCALE) == []


def test_the_catalogs_cover_every_english_message(gettext_templates: Path) -> None:
    """A paragraph added to the English sources without its translation fails here."""
    from babel.messages.pofile import read_po

    missing = {}
    for pot in sorted(gettext_templates.glob("*.pot")):
        with pot.open("rb") as f:
            wanted = {m.id for m in read_po(f) if m.id and catalogs.needs_translation(m.id)}
        po = LOCALE / "LC_MESSAGES" / (pot.stem + ".po")
        have = set()
        if po.is_file():
            with po.open("rb") as f:
                have = {m.id for m in read_po(f) if m.id and m.string and not m.fuzzy}
        if wanted - have:
            missing[pot.stem] = sorted(wanted - have)[:3]
    assert not missing, missing


def test_figure_strings_are_in_the_catalog() -> None:
    from babel.messages.pofile import read_po

    with (LOCALE / "LC_MESSAGES" / "figures.po").open("rb") as f:
        have = {m.id for m in read_po(f) if m.id and m.string and not m.fuzzy}
    strings = catalogs.figure_strings(DOCS)
    assert strings, "the pages' figures should pass their text through tr()"
    assert not set(strings) - have, sorted(set(strings) - have)
