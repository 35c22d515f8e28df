"""Every page of the built book, read offline in a real browser (issue 9).

The book is built like ``make html``, zipped and unzipped elsewhere
(tests/_book_build.py). Each page of the unzipped copy is opened from
``file://`` in headless Debian chromium with the network off: every request
that is not ``file://`` is blocked and counted as a failure. For every page:
the math is typeset by the book's own MathJax (no raw TeX delimiters left),
every image loaded, no request failed, the console shows no error, and no code
cell is wider than its column in a 1280-pixel window. A screenshot of each page
in the light and the dark theme goes into a scratch folder.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _book_build import LANGUAGES, ZIP_FOLDER, BuiltBook
from _optional import require, require_program

# Skipped on a learner's machine without them (a failure in CI, which installs both).
sync_api = require("playwright.sync_api", install="pip install playwright (it drives the system's chromium)")
CHROMIUM = Path(require_program("chromium", install="apt-get install chromium (as root)"))

pytestmark = [pytest.mark.book, pytest.mark.browser]

#: Folders of the unzipped book that each hold one edition of it (one per
#: language). The pages directly in the book's folder (the language chooser)
#: are visited too.
HTML_ROOTS = list(LANGUAGES)
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WIDTH, HEIGHT = 1280, 900
#: Pages the book's derivations put formulas on; a build that lost its math
#: would otherwise pass the per-page checks with nothing to check.
MATH_PAGES = ["forward.html", "graph.html", "backward.html", "prediction.html", "seed_examples.html"]
#: Searched for on each edition's search page: a word most pages use.
SEARCH = "gamma"

# Runs in the page once MathJax is done: what a reader would see of the math.
MATH_STATE = r"""
async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) await mj.startup.promise;
  await document.fonts.ready;
  const math = Array.from(document.querySelectorAll(".math"));
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue;
    if (!(text.includes("\\(") || text.includes("\\[") || text.includes("$$"))) continue;
    if (node.parentElement.closest("pre, code, script, style, textarea, mjx-container, .highlight")) continue;
    raw.push(text.trim().slice(0, 80));
  }
  return {
    containers: document.querySelectorAll("mjx-container").length,
    untypeset: math.filter(e => !e.querySelector("mjx-container")).map(e => e.textContent.trim().slice(0, 80)),
    raw: raw,
  };
}
"""
# Every image, lazy or not, loaded and decoded: the ones that did not.
IMAGES = """
async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(i => { i.loading = "eager"; return i.decode().catch(() => null); }));
  return {count: images.length,
          broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"))};
}
"""
# The search page once it is done, in any language: Sphinx's searchtools.js has
# made its summary and stopped its "Searching" pulse.
SEARCH_DONE = """
() => { const done = document.querySelector(".search-summary") && typeof Search !== "undefined"
                     && Search._pulse_status === -1;
        return done ? {results: document.querySelectorAll("#search-results li").length} : null; }
"""
THEME = "mode => { document.documentElement.dataset.theme = mode; document.documentElement.dataset.mode = mode; }"
# Opens what a reader can open (dropdowns, toggled cells), then finds code wider than its box.
OVERFLOW = """
() => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  document.querySelectorAll(".toggle-hidden").forEach(e => e.classList.remove("toggle-hidden"));
  return Array.from(document.querySelectorAll("main pre"))
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => `${p.scrollWidth}px in ${p.clientWidth}px: ${p.textContent.split("\\n")[0].slice(0, 60)}`);
}
"""


@dataclass
class Visit:
    """What one page showed, and what went wrong while it loaded."""

    has_math: bool  # the built HTML holds math elements
    final_url: str = ""  # where the browser ended up (the chooser moves on to an edition)
    search_results: int = 0  # on a search page opened with a query
    containers: int = 0
    untypeset: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    overflowing: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


def book_pages(unzipped: Path) -> list[Path]:
    """The pages beside the editions, and every HTML page of every edition (not the
    theme's templates in _static)."""
    pages = sorted(unzipped.glob("*.html"))
    for root in HTML_ROOTS:
        folder = unzipped / root
        pages += [p for p in sorted(folder.rglob("*.html")) if "_static" not in p.relative_to(folder).parts]
    return pages


def visit(browser, path: Path, shots: Path, name: str, query: str = "", search: bool = False) -> Visit:
    """Open ``path`` (with ``query`` after it) as a first visit: a fresh profile, no stored theme."""
    html = path.read_text(encoding="utf-8")
    seen = Visit(has_math=re.search(r'class="[^"]*\bmath\b', html) is not None)
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, service_workers="block")
    page = context.new_page()
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console_errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: seen.failed.append(f"{r.url} ({r.failure})"))

    def offline(route) -> None:
        url = route.request.url
        if url.startswith("file:"):
            route.continue_()
        else:
            seen.blocked.append(url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.goto(path.as_uri() + query, wait_until="load")
    page.wait_for_load_state("load")  # after a redirect too
    seen.final_url = page.url
    if search:
        try:
            seen.search_results = page.wait_for_function(SEARCH_DONE, timeout=30_000).json_value()["results"]
        except sync_api.TimeoutError:
            seen.search_results = -1  # the search never finished
    math = page.evaluate(MATH_STATE)
    seen.containers, seen.untypeset, seen.raw_tex = math["containers"], math["untypeset"], math["raw"]
    images = page.evaluate(IMAGES)
    seen.images, seen.broken_images = images["count"], images["broken"]
    for mode in ("light", "dark"):
        page.evaluate(THEME, mode)
        shot = shots / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{mode}.png"
        page.screenshot(path=str(shot), full_page=True)
        seen.screenshots.append(shot)
    page.evaluate(THEME, "light")
    seen.overflowing = page.evaluate(OVERFLOW)
    context.close()
    return seen


@pytest.fixture(scope="module")
def visits(built_book: BuiltBook, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Visit]:
    shots = tmp_path_factory.mktemp("screenshots")
    seen = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        for path in book_pages(built_book.unzipped):
            name = path.relative_to(built_book.unzipped).as_posix()
            seen[name] = visit(browser, path, shots, name)
        for root in HTML_ROOTS:  # a reader's search, answered from files alone
            search = built_book.unzipped / root / "search.html"
            name = search.relative_to(built_book.unzipped).as_posix() + f"?q={SEARCH}"
            seen[name] = visit(browser, search, shots, name, query=f"?q={SEARCH}", search=True)
        seen["index.html#choose"] = visit(browser, built_book.unzipped / "index.html", shots,
                                          "index.html#choose", query="#choose")
        browser.close()
    return seen


def problems(visits: dict[str, Visit], attribute: str) -> dict[str, list[str]]:
    return {name: getattr(v, attribute) for name, v in visits.items() if getattr(v, attribute)}


def test_zip_holds_the_book_in_one_folder(built_book: BuiltBook) -> None:
    with zipfile.ZipFile(built_book.archive) as book:
        names = book.namelist()
    assert all(name.startswith(f"{ZIP_FOLDER}/") for name in names)  # unzipping makes one folder
    wanted = [Path(ZIP_FOLDER, root, inside).as_posix() for root in HTML_ROOTS
              for inside in ("index.html", "_static/mathjax/tex-chtml.js", "_static/mathjax/LICENSE.txt")]
    assert [name for name in wanted if name not in names] == []


def test_every_page_of_the_zip_is_visited(built_book: BuiltBook, visits: dict[str, Visit]) -> None:
    built = {p.relative_to(built_book.html).as_posix() for p in built_book.html.rglob("*.html")
             if "_static" not in p.relative_to(built_book.html).parts}
    pages = {name for name in visits if "?" not in name and "#" not in name}
    assert pages == built  # the zip holds every page of the build
    for root in HTML_ROOTS:
        assert Path(root, "index.html").as_posix() in visits


def test_chooser_leads_to_an_edition(visits: dict[str, Visit]) -> None:
    # Headless chromium asks for English: the chooser moves on to that edition.
    assert visits["index.html"].final_url.endswith(f"/{LANGUAGES[0]}/index.html")
    assert visits["index.html#choose"].final_url.endswith("/index.html#choose")  # stays, for choosing


def test_search_finds_pages_offline(visits: dict[str, Visit]) -> None:
    for root in HTML_ROOTS:
        name = Path(root, "search.html").as_posix() + f"?q={SEARCH}"
        assert visits[name].search_results >= 5, name  # the derivation pages all say gamma


def test_math_is_typeset(visits: dict[str, Visit]) -> None:
    for name in (Path(root, page).as_posix() for root in HTML_ROOTS for page in MATH_PAGES):
        assert visits[name].has_math, name
    assert problems(visits, "untypeset") == {}
    assert {n: v.containers for n, v in visits.items() if v.has_math and v.containers == 0} == {}
    assert problems(visits, "raw_tex") == {}


def test_no_request_leaves_the_book(visits: dict[str, Visit]) -> None:
    assert problems(visits, "blocked") == {}


def test_no_request_fails(visits: dict[str, Visit]) -> None:
    assert problems(visits, "failed") == {}


def test_every_image_loads(visits: dict[str, Visit]) -> None:
    assert sum(v.images for v in visits.values()) >= 5  # the figures of the book are there to check
    assert problems(visits, "broken_images") == {}


def test_console_shows_no_error(visits: dict[str, Visit]) -> None:
    assert problems(visits, "console_errors") == {}


def test_code_fits_its_column_at_1280_pixels(visits: dict[str, Visit]) -> None:
    assert problems(visits, "overflowing") == {}


def test_screenshots_in_light_and_dark(visits: dict[str, Visit]) -> None:
    for name, seen in visits.items():
        light, dark = (shot.read_bytes() for shot in seen.screenshots)
        assert light.startswith(b"\x89PNG") and dark.startswith(b"\x89PNG"), name
        if any(name.startswith(f"{root}/") for root in HTML_ROOTS):  # the chooser has no themes
            assert light != dark, f"{name}: the dark theme looks like the light one"
