"""Helpers shared by the book's pages (not part of bnlit).

They show SymPy results as LaTeX, evaluate SymPy expressions on bnlit's arrays,
and give figures one style. The pages import this module from the folder they
run in (``docs/``); the layer itself always comes from :mod:`bnlit`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import sympy as sp
from IPython.display import Math, display
from matplotlib_inline.backend_inline import set_matplotlib_formats


def use_book_figures() -> None:
    """Crisp SVG figures on a white card (readable in light and dark themes)."""
    set_matplotlib_formats("svg")
    mpl.rcParams.update(
        {
            "figure.facecolor": "white",
            "axes.facecolor": "white",
            "savefig.facecolor": "white",
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.fonttype": "path",
        }
    )


def show(lhs: object, *rhs: object) -> None:
    """Display ``lhs = rhs[0] = rhs[1] ...`` as one line of LaTeX (MathJax)."""
    parts = [lhs if isinstance(lhs, str) else sp.latex(lhs)]
    parts += [r if isinstance(r, str) else sp.latex(r) for r in rhs]
    display(Math(" = ".join(parts)))


def rows_from_one(a: np.ndarray) -> np.ndarray:
    """``a`` with a NaN row in front, so that SymPy's row index 1..n picks rows 0..n-1.

    A derivation that wrongly read row 0 would turn the check's result into NaN.
    """
    a = np.asarray(a, dtype=float)
    return np.concatenate([np.full((1,) + a.shape[1:], np.nan), a])


def evaluate(
    expr: sp.Expr,
    values: Mapping[sp.Basic, np.ndarray],
    *,
    n: sp.Symbol,
    rows: int,
    row_index: sp.Symbol | None = None,
) -> np.ndarray:
    """Evaluate a derived expression on arrays, with ``lambdify``.

    ``n`` becomes the batch size ``rows`` and batch sums are written out. Indexed
    quantities (``IndexedBase``) take ``(rows, D)`` arrays, scalars take ``(D,)``
    arrays: every channel is evaluated at once. With ``row_index`` the expression
    is evaluated for each row ``1..rows`` and the results are stacked.
    """
    symbols: Sequence[sp.Basic] = list(values)
    indexed = [isinstance(s, sp.IndexedBase) for s in symbols]
    args = [rows_from_one(v) if ix else np.asarray(v, dtype=float) for ix, v in zip(indexed, values.values())]
    channels = np.broadcast_shapes(*(a.shape[1:] if ix else a.shape for ix, a in zip(indexed, args)))

    def at(e: sp.Expr) -> np.ndarray:
        concrete = e.subs(n, rows).doit()
        return np.asarray(sp.lambdify(symbols, concrete, "numpy")(*args), dtype=float)

    if row_index is None:
        return at(expr)
    return np.stack([np.broadcast_to(at(expr.subs(row_index, r)), channels) for r in range(1, rows + 1)])
