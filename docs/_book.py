"""Helpers shared by the book's pages (not part of bnlit).

The pages import this module from the folder they run in (``docs/``); the layer
itself always comes from :mod:`bnlit`. What is here is machinery, so that each
cell of a derivation page can be the lesson itself:

- :data:`symbols`, the SymPy symbols of one channel of the layer, with the
  names the pages display (σ_ε for the square root of the variance plus ε);
- :func:`in_batch` and :func:`written_with_statistics`, two rewrites SymPy
  cannot do on its own for a batch of symbolic size ``n``, and
  :func:`reused_indices`, which finds nested sums that reuse an index;
- :class:`StepChecker`, which checks each derived backward step against the
  intermediates of bnlit's staged layer;
- :func:`evaluate`, :func:`central_difference`, :func:`show` and
  :func:`use_book_figures` for numbers, displayed formulas and figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import matplotlib as mpl
import numpy as np
import sympy as sp
from IPython.display import Math, display
from matplotlib_inline.backend_inline import set_matplotlib_formats
from sympy.simplify.simplify import factor_sum

__all__ = [
    "Symbols", "symbols", "in_batch", "written_with_statistics", "reused_indices", "StepChecker", "StepCheck",
    "evaluate", "rows_from_one", "central_difference", "show", "use_book_figures",
]

Step = Union[int, str]  # 1 .. 9 for the seed's a1 .. a9, or "dbeta", "dgamma", "dx"


# ----------------------------------------------------------------------------- symbols
@dataclass(frozen=True)
class Symbols:
    """The SymPy symbols of one channel of the layer, as the pages display them.

    Attributes
    ----------
    n : Symbol
        The batch size (number of values per channel), a positive integer.
    i, j, k, l : Symbol
        Row indices, positive integers. The pages use ``j`` for "this row" and
        ``i``, ``k``, ``l`` as summation indices, a different one for each
        level of nested sums.
    x, x_mu, x_mu_sq, x_hat, dout : IndexedBase
        Per-row values: the input, ``x - mu``, ``(x - mu)**2``, the
        standardised input x̂ and the gradient arriving from above.
    mu, var : Symbol
        The batch mean μ and the (biased) batch variance σ².
    sigma_eps, sigma_eps_inv : Symbol
        σ_ε = √(σ² + ε), the notebook's ``std``, and its inverse (``std_inv``).
        σ² is always the variance; σ_ε is never written as plain σ.
    gamma, beta, epsilon : Symbol
        The scale γ, the shift β and the ε added to the variance.
    a : dict
        The notebook's backward steps: ``a[1]``, ``a[2]``, ``a[7]`` are per
        row (``IndexedBase``), the others one value per channel (``Symbol``).
    """

    n: sp.Symbol
    i: sp.Symbol
    j: sp.Symbol
    k: sp.Symbol
    l: sp.Symbol  # noqa: E741 (a summation index, as in the displayed formulas)
    x: sp.IndexedBase
    x_mu: sp.IndexedBase
    x_mu_sq: sp.IndexedBase
    x_hat: sp.IndexedBase
    dout: sp.IndexedBase
    mu: sp.Symbol
    var: sp.Symbol
    sigma_eps: sp.Symbol
    sigma_eps_inv: sp.Symbol
    gamma: sp.Symbol
    beta: sp.Symbol
    epsilon: sp.Symbol
    a: Mapping[int, Union[sp.IndexedBase, sp.Symbol]] = field(repr=False)

    def batch_sum(self, term: sp.Expr, index: sp.Symbol | None = None) -> sp.Sum:
        """``Sum(term, (index, 1, n))``: a sum over the rows of the batch (``index`` defaults to ``i``)."""
        return sp.Sum(term, (self.i if index is None else index, 1, self.n))


def _make_symbols() -> Symbols:
    row = dict(integer=True, positive=True)
    n = sp.Symbol("n", **row)
    i, j, k, l = (sp.Symbol(name, **row) for name in "ijkl")  # noqa: E741
    indexed = {
        name: sp.IndexedBase(latex, real=True)
        for name, latex in [("x", "x"), ("x_mu", r"x_{\mu}"), ("x_mu_sq", r"x_{\mu}^{2}"),
                            ("x_hat", r"\hat{x}"), ("dout", "dout")]
    }
    a: dict[int, Union[sp.IndexedBase, sp.Symbol]] = {k_: sp.IndexedBase(f"a_{k_}") for k_ in (1, 2, 7)}
    a |= {k_: sp.Symbol(f"a_{k_}") for k_ in (3, 4, 5, 6, 8, 9)}
    return Symbols(
        n=n, i=i, j=j, k=k, l=l, **indexed,
        mu=sp.Symbol(r"\mu", real=True),
        var=sp.Symbol(r"\sigma^{2}", nonnegative=True),
        sigma_eps=sp.Symbol(r"\sigma_\varepsilon", positive=True),
        sigma_eps_inv=sp.Symbol(r"\sigma_\varepsilon^{-1}", positive=True),
        gamma=sp.Symbol("gamma", real=True),
        beta=sp.Symbol("beta", real=True),
        epsilon=sp.Symbol("varepsilon", positive=True),
        a=a,
    )


symbols = _make_symbols()
"""The one set of symbols the derivation pages share (see :class:`Symbols`)."""


# ----------------------------------------------------------------------------- rewrites
def in_batch(expr: sp.Expr, row: sp.Symbol | None = None, n: sp.Symbol | None = None) -> sp.Expr:
    """``expr`` with every ``Piecewise`` replaced by its value for a row of the batch.

    SymPy writes the derivative of a batch sum ``sum_i t_i`` with respect to
    one term ``t_j`` as ``Piecewise((1, j <= n), (0, True))``: it cannot know
    that ``j`` is a row of the batch. Here ``1 <= row <= n`` is given, so each
    ``Piecewise`` becomes its first value, but only after checking that the
    first condition holds at both ends, ``row = 1`` and ``row = n`` (enough for
    the linear conditions SymPy writes there).

    Parameters
    ----------
    expr : Expr
        A derived expression.
    row, n : Symbol, optional
        The row index and the batch size; by default ``symbols.j`` and ``symbols.n``.

    Returns
    -------
    Expr
        ``expr`` without ``Piecewise``.

    Raises
    ------
    ValueError
        A ``Piecewise`` whose first condition does not hold for every row
        ``1 .. n``; its condition is named.
    """
    row = symbols.j if row is None else row
    n = symbols.n if n is None else n

    def first_value(piecewise: sp.Piecewise) -> sp.Expr:
        value, condition = piecewise.args[0]
        if not all(condition.subs(row, end) == sp.true for end in (1, n)):
            raise ValueError(
                f"expected a condition that holds for every row {row} = 1 .. {n}; got {condition}"
            )
        return value

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), first_value)


def _is_batch_sum(e: sp.Basic, n: sp.Symbol) -> bool:
    return isinstance(e, sp.Sum) and len(e.limits) == 1 and tuple(e.limits[0][1:]) == (1, n)


def written_with_statistics(expr: sp.Expr, s: Symbols | None = None, *, sigma_eps: bool = True) -> sp.Expr:
    """``expr``, written out in ``x[1] .. x[n]``, rewritten with μ, σ² and σ_ε.

    Uses only the definitions: every ``sum_l x_l`` becomes ``n*mu``, every
    ``sum_l (x_l - mu)**2`` becomes ``n*sigma^2``, any other batch sum is
    expanded and evaluated (so ``sum_l (x_l - mu)`` becomes ``n*mu - n*mu = 0``),
    and (with ``sigma_eps``) every power of ``sqrt(sigma^2 + epsilon)``
    becomes a power of σ_ε.

    Parameters
    ----------
    expr : Expr
        An expression in the per-row ``x`` (and other symbols), whose batch
        sums run from 1 to ``n``.
    s : Symbols, optional
        The symbols to use; by default :data:`symbols`.
    sigma_eps : bool
        Whether to write ``sqrt(sigma^2 + epsilon)`` as σ_ε (also in its
        powers, so ``sigma^2 + epsilon`` becomes ``sigma_eps**2``).

    Returns
    -------
    Expr
        The same expression in terms of μ, σ² (and σ_ε).
    """
    s = symbols if s is None else s

    def is_sum_of_x(e: sp.Basic) -> bool:
        return _is_batch_sum(e, s.n) and e.function == s.x[e.limits[0][0]]

    def is_sum_of_squares(e: sp.Basic) -> bool:
        if not _is_batch_sum(e, s.n):
            return False
        return sp.expand(e.function - (s.x[e.limits[0][0]] - s.mu) ** 2) == 0

    expr = expr.replace(is_sum_of_x, lambda e: s.n * s.mu)  # innermost first: the mean
    expr = expr.replace(is_sum_of_squares, lambda e: s.n * s.var)
    expr = expr.replace(lambda e: _is_batch_sum(e, s.n), lambda e: factor_sum(sp.expand(e).doit()))
    expr = expr.replace(is_sum_of_x, lambda e: s.n * s.mu)
    return expr.subs(sp.sqrt(s.var + s.epsilon), s.sigma_eps) if sigma_eps else expr


def reused_indices(expr: sp.Basic) -> set[sp.Symbol]:
    """Summation indices that a ``Sum`` reuses inside another ``Sum`` over the same index.

    SymPy reads ``sum_i (x_i - sum_i x_i / n)`` correctly (the inner ``i`` is
    bound by the inner sum), but a reader does not: the pages assert that
    what they display has an empty set here.

    Parameters
    ----------
    expr : Basic
        Any SymPy expression.

    Returns
    -------
    set of Symbol
        The indices bound twice along some path from the root; empty if none.
    """
    found: set[sp.Symbol] = set()

    def walk(e: sp.Basic, bound: frozenset[sp.Symbol]) -> None:
        if isinstance(e, sp.Sum):
            indices = {limit[0] for limit in e.limits}
            found.update(indices & bound)
            bound = bound | indices
        for arg in e.args:
            walk(arg, bound)

    walk(expr, frozenset())
    return found


# ----------------------------------------------------------------------------- numbers
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
    n: sp.Symbol | None = None,
    rows: int,
    row_index: sp.Symbol | None = None,
) -> np.ndarray:
    """Evaluate a derived expression on arrays, with ``lambdify``.

    Parameters
    ----------
    expr : Expr
        The expression; batch sums run from 1 to ``n``.
    values : mapping
        A value for every symbol of ``expr``: ``(rows, D)`` arrays for indexed
        quantities (``IndexedBase``), ``(D,)`` arrays (or scalars) for the
        others. Every channel is evaluated at once.
    n : Symbol, optional
        The batch size symbol (default ``symbols.n``); it becomes ``rows`` and
        the batch sums are written out.
    rows : int
        The batch size.
    row_index : Symbol, optional
        If given, ``expr`` is evaluated for each row ``1 .. rows`` and the
        results are stacked, shape ``(rows, D)``.

    Returns
    -------
    ndarray
        The value, shape ``(D,)`` (or ``(rows, D)`` with ``row_index``).
    """
    n = symbols.n if n is None else n
    names: Sequence[sp.Basic] = list(values)
    indexed = [isinstance(name, sp.IndexedBase) for name in names]
    args = [rows_from_one(v) if ix else np.asarray(v, dtype=float) for ix, v in zip(indexed, values.values())]
    channels = np.broadcast_shapes(*(a.shape[1:] if ix else a.shape for ix, a in zip(indexed, args)))

    def at(e: sp.Expr) -> np.ndarray:
        concrete = e.subs(n, rows).doit()
        return np.asarray(sp.lambdify(names, concrete, "numpy")(*args), dtype=float)

    if row_index is None:
        return at(expr)
    return np.stack([np.broadcast_to(at(expr.subs(row_index, r)), channels) for r in range(1, rows + 1)])


def central_difference(fn: Callable[[np.ndarray], float], at: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Gradient of the scalar ``fn`` at ``at`` by central differences, one element at a time.

    Parameters
    ----------
    fn : callable
        Takes an array shaped like ``at`` and returns a number.
    at : array_like
        Where to differentiate (converted to float64).
    h : float
        The step: ``(fn(at + h e) - fn(at - h e)) / (2 h)`` for each unit array ``e``.

    Returns
    -------
    ndarray
        The gradient, shaped like ``at``.
    """
    at = np.array(at, dtype=np.float64)
    grad = np.empty_like(at)
    for index in np.ndindex(at.shape):
        step = np.zeros_like(at)
        step[index] = h
        grad[index] = (fn(at + step) - fn(at - step)) / (2 * h)
    return grad


# ----------------------------------------------------------------------------- checking steps
@dataclass(frozen=True)
class StepCheck:
    """The result of one :meth:`StepChecker.check`: a step that matched bnlit.

    Its ``repr`` is the line the page shows.
    """

    name: str
    error_this_step: float  # largest |difference| with bnlit's upstream values as inputs
    error_so_far: float  # largest |difference| written in terms of the batch alone

    def __repr__(self) -> str:
        return f"{self.name}: SymPy's formula matches bnlit's {self.name} (largest difference {self.error_so_far:.1e})"


class StepChecker:
    """Checks derived backward steps against the intermediates of bnlit's staged layer.

    Each :meth:`check` runs two comparisons, and raises if either fails:

    - *this step*: the formula, evaluated with bnlit's values for its inputs
      (the forward intermediates and the earlier steps ``a_m``), equals bnlit's
      value of the step;
    - *so far*: the formula with every earlier step substituted by its own
      formula, so written in terms of the batch alone, equals it too.

    Parameters
    ----------
    layer : bnlit.BatchNormalization
        A layer made with ``staged=True`` that has run a training ``forward``
        on 2-D input and then ``backward``; its ``forward_steps`` and
        ``backward_steps`` are the values checked against.
    s : Symbols, optional
        The symbols the formulas are written in; by default :data:`symbols`.
    rtol, atol : float
        Tolerances of the comparisons (``numpy.allclose``).

    Raises
    ------
    ValueError
        The layer has no staged intermediates, or its input was not 2-D.
    """

    def __init__(self, layer: object, s: Symbols | None = None, *, rtol: float = 1e-12, atol: float = 1e-14):
        f, b = getattr(layer, "forward_steps", None), getattr(layer, "backward_steps", None)
        if f is None or b is None:
            raise ValueError(
                "expected a layer made with staged=True that has run forward(x) and backward(dout); "
                f"got forward_steps={type(f).__name__}, backward_steps={type(b).__name__}"
            )
        if f.x.ndim != 2:
            raise ValueError(f"expected a layer run on 2-D input (N, D); got input of shape {f.x.shape}")
        self.s = symbols if s is None else s
        self.rows = f.x.shape[0]
        self.rtol, self.atol = rtol, atol
        s_ = self.s
        self.values: dict[sp.Basic, np.ndarray] = {
            s_.x: f.x, s_.x_mu: f.x_mu, s_.x_mu_sq: f.x_mu_sq, s_.x_hat: f.x_std, s_.dout: b.dout,
            s_.mu: f.mu.ravel(), s_.var: f.var.ravel(), s_.sigma_eps: f.std.ravel(),
            s_.sigma_eps_inv: f.std_inv.ravel(), s_.gamma: f.gamma.ravel(),
            s_.epsilon: np.asarray(f.epsilon),
        }
        """bnlit's forward values (and ``dout``), by symbol."""
        self.expected: dict[Step, np.ndarray] = {k: getattr(b, f"a{k}") for k in range(1, 10)}
        self.expected |= {"dbeta": b.dbeta, "dgamma": b.dgamma, "dx": b.dx}
        self.derived: dict[int, sp.Expr] = {}
        """Each checked step ``a_k``: its formula in terms of the steps before it."""
        self.so_far: dict[int, sp.Expr] = {}
        """Each checked step ``a_k``: its formula in terms of the batch alone."""

    def in_terms_of_batch(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` with every checked step ``a_k`` replaced by its formula in terms of the batch."""
        j = self.s.j
        for k, full in self.so_far.items():
            base = self.s.a[k]
            if isinstance(base, sp.IndexedBase):  # a_k[row] -> the formula at that row (also inside sums)
                expr = expr.replace(lambda e, base=base: isinstance(e, sp.Indexed) and e.base == base,
                                    lambda e, full=full: full.subs(j, e.indices[0]))
            else:
                expr = expr.subs(base, full)
        return expr

    def evaluate(self, expr: sp.Expr, extra: Mapping[sp.Basic, np.ndarray] | None = None) -> np.ndarray:
        """``expr`` evaluated on bnlit's values: shape ``(N, D)`` if it depends on the row ``j``, else ``(D,)``."""
        values = {**self.values, **(extra or {})}
        row = self.s.j if expr.has(self.s.j) else None
        return evaluate(expr, values, n=self.s.n, rows=self.rows, row_index=row)

    def _unknown_steps(self, expr: sp.Expr, step: Step) -> list[str]:
        used = [k for k, base in self.s.a.items() if expr.has(base)]
        return [f"a{k}" for k in used if k not in self.so_far or k == step]

    def check(self, step: Step, expr: sp.Expr) -> StepCheck:
        """Record ``expr`` as the formula of ``step`` and compare it with bnlit's value.

        Parameters
        ----------
        step : int or str
            1 .. 9 for the notebook's ``a1`` .. ``a9``, or ``"dbeta"``,
            ``"dgamma"``, ``"dx"``.
        expr : Expr
            The derived formula, in terms of forward quantities and of steps
            checked before (per-row formulas use the row index ``j``).

        Returns
        -------
        StepCheck
            The largest differences; its ``repr`` is one line for the page.

        Raises
        ------
        ValueError
            An unknown step, or a formula that uses a step not checked yet.
        AssertionError
            The formula does not give bnlit's value; the message names the
            step and the largest difference.
        """
        if step not in self.expected:
            raise ValueError(f"expected a step 1 .. 9, 'dbeta', 'dgamma' or 'dx'; got {step!r}")
        name = f"a{step}" if isinstance(step, int) else step
        missing = self._unknown_steps(expr, step)
        if missing:
            raise ValueError(f"{name} uses {', '.join(missing)}, not checked yet: check the steps in order")
        full = self.in_terms_of_batch(expr)
        upstream = {
            self.s.a[m]: self.expected[m].reshape(self.rows, -1) if isinstance(self.s.a[m], sp.IndexedBase)
            else self.expected[m].ravel()
            for m in self.so_far
        }
        want = np.asarray(self.expected[step], dtype=float)
        batch_shape = self.values[self.s.x].shape  # (N, D): per-channel values broadcast to every row
        errors = []
        for formula, extra in ((expr, upstream), (full, None)):
            got = self.evaluate(formula, extra)
            try:
                got_b, want_b = np.broadcast_to(got, batch_shape), np.broadcast_to(want, batch_shape)
            except ValueError:
                raise AssertionError(f"{name}: SymPy's formula has shape {got.shape}, bnlit's {want.shape}") from None
            error = float(np.max(np.abs(got_b - want_b)))
            if not np.allclose(got_b, want_b, rtol=self.rtol, atol=self.atol):
                raise AssertionError(
                    f"{name}: SymPy's formula differs from bnlit's {name}; largest difference {error:.3g}"
                    f" ({'with bnlit upstream values' if extra is not None else 'written in the batch alone'})"
                )
            errors.append(error)
        if isinstance(step, int):
            self.derived[step], self.so_far[step] = expr, full
        return StepCheck(name, *errors)


# ----------------------------------------------------------------------------- display
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
