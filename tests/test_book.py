"""The book builds strictly and shows what it promises.

One strict build (-W, every notebook executed afresh into a scratch cache) serves
every check below. Expected numbers come from the hand-worked formulas of the
seed's examples (see test_seed_examples.py), not from bnlit.
"""

from __future__ import annotations

import html as html_lib
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "index", "forward", "graph", "backward", "prediction", "seed_examples",
    "exercise", "gradient_check", "conventions", "pitfalls", "training", "performance", "distributed", "api",
    "references",
]
NOTEBOOK_PAGES = [p for p in PAGES if p not in ("api", "references")]
BIB_KEYS = ["ioffe2015", "santurkar2018", "kratzert2016", "cs231n", "saitoh2016", "zhang2023d2l", "goodfellow2016", "chan1979"]

pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def book(editions: dict[str, Path]) -> Path:
    """The English edition of the session's strict build (tests/_book_build.py)."""
    return editions["en"]


def page(book: Path, name: str) -> str:
    return (book / f"{name}.html").read_text(encoding="utf-8")


def text(book: Path, name: str) -> str:
    """The page's HTML with entities decoded (quotes, <, >), for checking printed outputs."""
    return html_lib.unescape(page(book, name))


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


def outputs(book: Path, name: str) -> list[str]:
    """The text of every printed output block of a page, in order."""
    blocks = re.findall(r'<div class="output (?:stream|text_plain)[^"]*">\s*<div class="highlight[^"]*"><pre>(.*?)</pre>',
                        page(book, name), re.S)
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", b)) for b in blocks]


def _printed(values: list[list[float]]) -> str:
    """How NumPy prints a matrix of hand-computed values (the page prints bnlit's with print())."""
    import numpy as np

    return str(np.array(values))


def test_seed_2d_page_shows_live_outputs(book: Path) -> None:
    """Whole printed matrices, at their place after the notebook's labels: columns 0 and 1
    share their statistics, so single numbers found anywhere would prove little."""
    eps = 1e-8
    x = [[1, 2, 3], [2, 3, 2], [3, 4, 4], [4, 1, 2]]
    mean, var = [10 / 4, 10 / 4, 11 / 4], [5 / 4, 5 / 4, 11 / 16]  # by hand, per column
    train = [[(row[c] - mean[c]) / math.sqrt(var[c] + eps) for c in range(3)] for row in x]
    # After one training step the moving statistics are 1/10 of the batch's.
    predict = [[(row[c] - 0.1 * mean[c]) / math.sqrt(0.1 * var[c] + eps) for c in range(3)] for row in x]
    cell = outputs(book, "seed_examples")[0]
    assert "学習時の順伝播計算\n" + _printed(train) + "\n" in cell
    assert "予測時の順伝播計算\n" + _printed(predict) + "\n" in cell
    # Backward residue of the seed's dout = x/10 (hand formula), glued into the prose.
    s = math.sqrt(11 / 16 + eps)  # column 2: the largest residue
    residue = 1.25 / (10 * s) * eps / s**2
    assert f"{residue:.1e}" in page(book, "seed_examples")


def test_seed_4d_page_shows_live_outputs(book: Path) -> None:
    html = page(book, "seed_examples")
    eps = 1e-8
    var = 20 / 3 + 729  # every channel of arange(108).reshape(2, 6, 3, 3); channel c has mean 9c + 31
    cell = next(o for o in outputs(book, "seed_examples") if "(2, 6, 3, 3)" in o)
    training, prediction = cell.split("学習時の順伝播計算", 1)[1].split("予測時の順伝播計算", 1)
    assert f"[[[[{(0 - 31) / math.sqrt(var + eps):.8f}" in training.replace(" ", "")  # first training output
    # Prediction after one step, example 1, channel 5, last value: x = 54 + 45 + 8 = 107.
    last = (107 - 0.1 * (9 * 5 + 31)) / math.sqrt(0.1 * var + eps)
    assert f"{last:.8f}]]]]" in prediction.replace(" ", "")
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


@pytest.mark.parametrize("name", ["index", "graph", "prediction", "pitfalls", "training", "performance", "distributed"])
def test_figures_are_svg_in_every_language(book: Path, name: str) -> None:
    """Each figure is drawn once per edition, as an SVG image inside the page."""
    import base64

    figures = re.findall(r'<img class="bnlit-figure bnlit-lang-(\w+)" lang="\w+" alt="([^"]*)" src="([^"]+)"', page(book, name))
    assert figures and {lang for lang, _, _ in figures} == {"en", "ja"}, name
    for lang, alt, src in figures:
        assert src.startswith("data:image/svg+xml;base64,"), src[:40]
        svg = base64.b64decode(src.split(",", 1)[1]).decode()
        assert "<svg" in svg and "</svg>" in svg
        assert alt.strip(), (name, lang)


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_each_page_offers_its_notebook(book: Path, name: str) -> None:
    assert f'_sources/{name}.ipynb"' in page(book, name)
    assert (book / "_sources" / f"{name}.ipynb").is_file()


def test_copy_buttons_skip_outputs(book: Path) -> None:
    script = (book / "_static" / "copybutton.js").read_text(encoding="utf-8")
    assert "div:not(.output) > div.highlight pre" in script


def test_api_page_documents_the_layer(book: Path) -> None:
    html = page(book, "api")
    for name in ("BatchNormalization", "forward", "backward", "LayerStateError", "staged_backward",
                 "bnlit.distributed.ThreadGroup", "bnlit.distributed.PeerError", "buffer_bytes"):
        assert name in html, name


def test_distributed_page_shows_the_exchange_and_the_refusal(book: Path) -> None:
    shown = text(book, "distributed")
    per_call = 8 * 4 * (2 * 64 + 3)  # float64 bytes of a (K, 2C + 3) buffer, K = 4 workers, C = 64 channels
    assert shown.count(f"(forward, backward): [{per_call}, {per_call}]") == 3  # batches of 8, 64 and 512 rows
    assert re.search(r"adding the four rows in all 24 orders:\s+1 result", shown)
    assert "worker 1: ValueError: the input has 3 channels" in shown
    for rank in (0, 2):
        assert f"worker {rank}: PeerError: worker 1 refused its part of this training forward call" in shown


def test_exercise_page_runs_the_checker(book: Path) -> None:
    html = page(book, "exercise")
    assert re.search(r"All clear: \d+ quantities", html)
    assert "First wrong quantity: a7" in html and "First wrong quantity: dx" in html
    assert "First wrong quantity: moving_mean" in html
    assert "raised NotImplementedError" in html
    assert "穴埋め" in html  # the notebook's original, in its dropdown
    assert "dropdown" in html


def test_exercise_page_shows_each_report_in_both_languages(book: Path) -> None:
    html = page(book, "exercise")
    reports = {lang: re.findall(rf'<pre class="bnlit-text bnlit-lang-{lang}" lang="{lang}">(.*?)</pre>', html, re.S)
               for lang in ("en", "ja")}
    assert len(reports["en"]) == len(reports["ja"]) >= 5
    for ja in reports["ja"]:
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", ja), ja[:200]


def test_conventions_page_compares_both_conventions(book: Path) -> None:
    html = page(book, "conventions")
    assert "moving variance, seed convention" in html and "moving variance, PyTorch convention" in html
    assert "momentum=0.1" in html and "rho=0.9" in html


def test_pitfalls_and_training_pages_show_their_results(book: Path) -> None:
    pitfalls = page(book, "pitfalls")
    assert "E[x^2] - E[x]^2, float32:" in pitfalls and "ValueError: training needs at least 2 values" in pitfalls
    training = page(book, "training")
    assert "This page trained 22 networks" in training
    assert training.count('class="bnlit-figure bnlit-lang-en"') >= 4



def test_pitfalls_page_shows_where_epsilon_rounds_away(book: Path) -> None:
    shown = text(book, "pitfalls")
    # float32 spacing is 2**-25 on [0.25, 0.5): half of it, 1.49e-8, exceeds 1e-8; below 0.25 it does not.
    assert "float32: var + 1e-8 == var from var = 0.25 up" in shown
    # float64 spacing is 2**-25 first on [2**27, 2**28).
    assert f"float64: var + 1e-8 == var from var = {2.0**27:.6g} up" in shown
    assert "bnlit:  std**2 - var = [" in shown and "dtype float64" in shown
    assert "the notebook's class, output: [[0.5 0.5 0.5]]  dx: [[0. 0. 0.]]" in shown


def test_conventions_page_runs_one_value_per_channel_and_zero_kara(book: Path) -> None:
    shown = text(book, "conventions")
    for shape in ("(1, 3)", "(1, 3, 1, 1)"):
        assert f"input {shape}, the notebook's class: output [ 0.5 -1.   2. ], dx [0. 0. 0.]" in shown
        assert f"input {shape}, bnlit: ValueError: training needs at least 2 values per channel" in shown
    assert "10e-7 == 1e-6: True" in shown
    assert "statistics: 54 per-activation (ゼロから作る) against 6 per-channel (bnlit)" in shown  # C*H*W = 6*3*3
    # Each activation of arange(108).reshape(2, 6, 3, 3) holds v and v + 54: variance 27**2.
    difference = 27 / math.sqrt(729 + 1e-7) - 27 / math.sqrt(729 + 1e-6)
    assert f"{difference:.1e}" in shown


def test_seed_examples_page_shows_the_symmetric_jacobian_and_backward_after_prediction(book: Path) -> None:
    shown = text(book, "seed_examples")
    # Column [1, 2, 3, 4]: J[0, 0] = (1 - 1/4 - x_hat_0**2 / 4) / sigma_eps with x_hat_0**2 = 2.25 / 1.25.
    j00 = (1 - 0.25 - (2.25 / 1.25) / 4) / math.sqrt(1.25 + 1e-8)
    assert f"{j00:.4f}" in shown
    assert "largest |J - J^T|:" in shown and "P @ dout, the notebook's dout (x / 10): [0. 0. 0. 0.]" in shown
    assert "the notebook's class, dx equal with and without the prediction: True" in shown
    assert "bnlit, dx equal with and without the prediction: True" in shown


def test_exercise_page_shows_the_template_bug_both_ways(book: Path) -> None:
    shown = text(book, "exercise")
    assert "created without moving statistics    the second training call raised UnboundLocalError" in shown
    assert "created with moving statistics       the first training call raised UnboundLocalError" in shown
    assert shown.count("both training calls ran") >= 2


def test_gradient_check_page_separates_right_from_wrong(book: Path) -> None:
    shown = text(book, "gradient_check")
    correct = re.findall(r"(?:2-D \(5, 3\)|4-D \(2, 3, 2, 2\)) \{'dx': '([^']+)'", shown)
    assert len(correct) == 2 and all(float(v) < 1e-7 for v in correct), correct
    wrong = re.findall(r"(?:a7 without the factor 2|dx without the second path a7|a1 without gamma)\s+\{'dx': '([^']+)'",
                       shown)
    assert len(wrong) == 3 and all(float(v) > 1e-3 for v in wrong), wrong
    assert "constant dout" in shown and "N = 1" in shown and "gamma = 1" in shown
    assert "correct class, float32:" in shown


def test_training_page_shows_the_bias_gradient_and_batch_sizes(book: Path) -> None:
    shown = text(book, "training")
    for k in (1, 2):
        db = re.search(rf"affine {k} \(before batch norm\): largest \|db\| ([0-9.e+-]+)", shown)
        assert db and float(db.group(1)) < 1e-12, k
    last = re.search(r"affine 3 \(last layer, no batch norm after it\): largest \|db\| ([0-9.e+-]+)", shown)
    assert last and float(last.group(1)) > 1e-3
    assert "training loss, last epoch" in shown
    for n in (2, 4, 16, 64):  # one row per batch size
        assert re.search(rf"<td[^>]*><p>{n}</p></td>", shown), n


def test_references_page_lists_every_work(book: Path) -> None:
    shown = text(book, "references")
    for fragment in ("Ioffe", "Santurkar", "Kratzert", "CS231n", "斎藤康毅", "Dive into Deep Learning"):
        assert fragment in shown, fragment
    assert 'href="references.html#' in page(book, "index")  # citations link to the list


def test_every_reference_is_cited_and_every_citation_exists() -> None:
    bib = (DOCS / "references.bib").read_text(encoding="utf-8")
    assert sorted(re.findall(r"^@\w+\{(\w+),", bib, re.M)) == sorted(BIB_KEYS)
    cited = {key for path in DOCS.glob("*.md") for key in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", path.read_text(encoding="utf-8"))}
    cited = {key.strip() for group in cited for key in group.split(",")}
    assert cited == set(BIB_KEYS), cited ^ set(BIB_KEYS)
