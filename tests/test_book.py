"""The book builds strictly and shows what it promises.

One strict build (-W, every notebook executed afresh into a scratch cache) serves
every check below. Expected numbers come from the hand-worked formulas of the
seed's examples (see test_seed_examples.py), not from bnlit.
"""

from __future__ import annotations

import math
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "index", "forward", "graph", "backward", "prediction", "seed_examples",
    "exercise", "conventions", "pitfalls", "training", "performance", "api",
]
NOTEBOOK_PAGES = [p for p in PAGES if p != "api"]

pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
            "-d", str(out / "doctrees"),
            "-D", f"nb_execution_cache_path={out / 'cache'}",
            str(DOCS), str(out / "html"),
        ],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out / "html"


def page(book: Path, name: str) -> str:
    return (book / f"{name}.html").read_text(encoding="utf-8")


def test_every_page_is_built(book: Path) -> None:
    for name in PAGES:
        assert (book / f"{name}.html").is_file(), name
    index = page(book, "index")
    for name in PAGES[1:]:
        assert f'href="{name}.html"' in index, name


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_no_page_shows_an_error(book: Path, name: str) -> None:
    html = page(book, name)
    for sign in ("Traceback (most recent call last)", "output traceback", "output stderr", "output error"):
        assert sign not in html, (name, sign)


def test_seed_2d_page_shows_live_outputs(book: Path) -> None:
    html = page(book, "seed_examples")
    eps = 1e-8
    # Training: column 0 is 1..4, mean 5/2, variance 5/4. Prediction after one step: 1/10 of both.
    train = (1 - 2.5) / math.sqrt(1.25 + eps)
    predict = (1 - 0.25) / math.sqrt(0.125 + eps)
    assert f"{train:.8f}" in html
    assert f"{predict:.8f}" in html
    # Backward residue of the seed's dout = x/10 (hand formula), glued into the prose.
    s = math.sqrt(11 / 16 + eps)  # column 2: the largest residue
    residue = 1.25 / (10 * s) * eps / s**2
    assert f"{residue:.1e}" in html


def test_seed_4d_page_shows_live_outputs(book: Path) -> None:
    html = page(book, "seed_examples")
    eps = 1e-8
    var = 20 / 3 + 729  # every channel of arange(108).reshape(2, 6, 3, 3)
    assert f"{(0 - 31) / math.sqrt(var + eps):.8f}" in html  # first training output
    s = math.sqrt(var + eps)
    residue = 31 / (10 * s) * eps / s**2  # the largest |x - mean| is 31
    assert f"{residue:.1e}" in html
    assert "(2, 6, 3, 3)" in html and "(1, 6, 1, 1)" in html  # the shapes, printed


@pytest.mark.parametrize("name", ["forward", "backward", "graph", "seed_examples", "prediction"])
def test_derivation_pages_render_mathjax(book: Path, name: str) -> None:
    html = page(book, name)
    assert html.count('class="output text_latex math') + html.count('class="math notranslate') >= 3
    assert "mathjax" in html.lower()


def test_backward_page_shows_every_step(book: Path) -> None:
    html = page(book, "backward")
    for k in range(1, 10):
        assert f"a{k}: SymPy&#39;s formula matches bnlit&#39;s a{k}" in html or f"a{k}: SymPy's formula matches bnlit's a{k}" in html


@pytest.mark.parametrize("name", ["index", "graph", "prediction"])
def test_figures_are_svg(book: Path, name: str) -> None:
    images = re.findall(r'<img[^>]+src="([^"]+)"', page(book, name))
    assert any(src.endswith(".svg") for src in images), images
    for src in images:
        assert (book / src).is_file(), src


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_each_page_offers_its_notebook(book: Path, name: str) -> None:
    assert f'_sources/{name}.ipynb"' in page(book, name)
    assert (book / "_sources" / f"{name}.ipynb").is_file()


def test_copy_buttons_skip_outputs(book: Path) -> None:
    script = (book / "_static" / "copybutton.js").read_text(encoding="utf-8")
    assert "div:not(.output) > div.highlight pre" in script


def test_api_page_documents_the_layer(book: Path) -> None:
    html = page(book, "api")
    for name in ("BatchNormalization", "forward", "backward", "LayerStateError", "staged_backward"):
        assert name in html, name


def test_exercise_page_runs_the_checker(book: Path) -> None:
    html = page(book, "exercise")
    assert "All clear: 21 quantities" in html
    assert "First wrong quantity: a7" in html and "First wrong quantity: dx" in html
    assert "raised NotImplementedError" in html
    assert "穴埋め" in html  # the notebook's original, in its dropdown
    assert "dropdown" in html


def test_conventions_page_compares_both_conventions(book: Path) -> None:
    html = page(book, "conventions")
    assert "moving variance, seed convention" in html and "moving variance, PyTorch convention" in html
    assert "momentum=0.1" in html and "rho=0.9" in html


def test_pitfalls_and_training_pages_show_their_results(book: Path) -> None:
    pitfalls = page(book, "pitfalls")
    assert "E[x^2] - E[x]^2, float32:" in pitfalls and "ValueError: training needs at least 2 values" in pitfalls
    training = page(book, "training")
    assert "This page trained 22 networks" in training
    assert training.count(".svg") >= 3
