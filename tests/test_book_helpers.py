"""The book's helper module (docs/_book.py): symbols, rewrites and the step checker.

The derivation pages rely on these helpers to stop the build when a formula is
wrong, so the tests plant wrong formulas and expect the helpers to refuse them.
Expected values are written by hand or come from bnlit's staged layer (the
thing the book checks against), never from the helper under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sympy")
pytest.importorskip("IPython")
pytest.importorskip("matplotlib_inline")
import sympy as sp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
import _book  # noqa: E402
from _book import (  # noqa: E402
    StepChecker, central_difference, evaluate, in_batch, reused_indices, symbols as s, written_with_statistics,
)

from bnlit import BatchNormalization  # noqa: E402

X_SEED = np.array([[1, 2, 3], [2, 3, 2], [3, 4, 4], [4, 1, 2]], dtype=float)
n, i, j, k, l = s.n, s.i, s.j, s.k, s.l
a, x, x_mu, x_hat, dout = s.a, s.x, s.x_mu, s.x_hat, s.dout


@pytest.fixture
def checker(rng: np.random.Generator) -> StepChecker:
    bn = BatchNormalization(rng.normal(1.0, 0.5, 3), np.zeros(3), staged=True)
    bn.forward(X_SEED)
    bn.backward(rng.normal(size=X_SEED.shape))
    return StepChecker(bn)


# The notebook's nine steps, as the backward page derives them (in terms of the step before).
RIGHT_STEPS = {
    1: s.gamma * dout[j],
    2: a[1][j] * s.sigma_eps_inv,
    3: s.batch_sum(a[1][i] * x_mu[i]),
    4: -a[3] / s.sigma_eps**2,
    5: a[4] / (2 * s.sigma_eps),
    6: a[5] / n,
    7: 2 * a[6] * x_mu[j],
    8: s.batch_sum(-a[2][i] - a[7][i]),
    9: a[8] / n,
}


def check_up_to(checker: StepChecker, last: int) -> None:
    for step in range(1, last):
        checker.check(step, RIGHT_STEPS[step])


# ----------------------------------------------------------------------------- symbols
def test_symbols_keep_the_variance_and_sigma_eps_apart() -> None:
    assert sp.latex(s.sigma_eps) == r"\sigma_{\varepsilon}"  # SymPy adds the braces
    assert sp.latex(s.var) == r"\sigma^{2}"
    assert sp.latex(s.epsilon) == r"\varepsilon"
    everything = [v for v in vars(s).values() if isinstance(v, sp.Basic)] + list(s.a.values())
    assert not any(sp.latex(v) == r"\sigma" for v in everything)  # never plain sigma
    assert len({sp.latex(v) for v in everything}) == len(everything)  # no two alike


def test_batch_sum_runs_over_the_batch_with_its_own_index() -> None:
    assert s.batch_sum(x[i]) == sp.Sum(x[i], (i, 1, n))
    assert s.batch_sum(x[k], k) == sp.Sum(x[k], (k, 1, n))


# ----------------------------------------------------------------------------- rewrites
def test_in_batch_takes_the_in_batch_case_of_a_derivative() -> None:
    derivative = sp.diff(s.batch_sum(x[i]) / n, x[j]).doit()
    assert derivative.has(sp.Piecewise)  # what SymPy gives on its own
    assert in_batch(derivative) == 1 / n


def test_in_batch_refuses_a_condition_that_fails_for_some_row() -> None:
    last_row_excluded = sp.Piecewise((1, j < n), (0, True))  # false for j = n
    with pytest.raises(ValueError, match="every row"):
        in_batch(last_row_excluded)
    first_row_excluded = sp.Piecewise((1, (j > 1) & (j <= n)), (0, True))  # false for j = 1
    with pytest.raises(ValueError, match="every row"):
        in_batch(first_row_excluded)


def test_written_with_statistics_applies_the_definitions() -> None:
    mean = s.batch_sum(x[k], k) / n
    var = s.batch_sum((x[l] - mean) ** 2, l) / n
    assert written_with_statistics(mean) == s.mu
    assert written_with_statistics(var) == s.var
    assert written_with_statistics(s.batch_sum(x[i] - mean)) == 0  # centred values sum to zero
    assert written_with_statistics(1 / sp.sqrt(var + s.epsilon)) == 1 / s.sigma_eps
    assert written_with_statistics(var / (var + s.epsilon), sigma_eps=False) == s.var / (s.var + s.epsilon)


def test_written_with_statistics_leaves_other_sums_alone() -> None:
    assert written_with_statistics(s.batch_sum(dout[i] * x[i])) == s.batch_sum(dout[i] * x[i])
    assert written_with_statistics(s.batch_sum(x[i] ** 2)) == s.batch_sum(x[i] ** 2)  # not a variance


def test_reused_indices_finds_a_nested_sum_over_the_same_index() -> None:
    same = s.batch_sum((x[i] - s.batch_sum(x[i]) / n) ** 2)
    distinct = s.batch_sum((x[i] - s.batch_sum(x[k], k) / n) ** 2)
    assert reused_indices(same) == {i}
    assert reused_indices(distinct) == set()
    assert reused_indices(s.batch_sum(x[i]) + s.batch_sum(dout[i])) == set()  # side by side is fine


# ----------------------------------------------------------------------------- numbers
def test_central_difference_of_a_known_function() -> None:
    at = np.array([[1.0, -2.0], [0.5, 3.0]])
    grad = central_difference(lambda z: float(np.sum(z**3)), at)
    np.testing.assert_allclose(grad, 3 * at**2, rtol=1e-8)


def test_evaluate_reads_rows_from_one() -> None:
    values = {x: X_SEED}
    rows = evaluate(x[j], values, rows=4, row_index=j)
    np.testing.assert_array_equal(rows, X_SEED)
    wrong_row = evaluate(x[j - 1], values, rows=4, row_index=j)  # reads a row before the first
    assert np.isnan(wrong_row[0]).all()
    np.testing.assert_allclose(evaluate(s.batch_sum(x[i]) / n, values, rows=4), X_SEED.mean(axis=0))


# ----------------------------------------------------------------------------- the step checker
def test_step_checker_accepts_the_right_steps(checker: StepChecker) -> None:
    for step, formula in RIGHT_STEPS.items():
        result = checker.check(step, formula)
        assert result.error_this_step < 1e-13 and result.error_so_far < 1e-13
        assert repr(result) == f"a{step}: SymPy's formula matches bnlit's a{step} (largest difference {result.error_so_far:.1e})"
    assert checker.check("dx", a[2][j] + a[7][j] + a[9]).name == "dx"
    assert checker.check("dbeta", s.batch_sum(dout[i])).name == "dbeta"
    assert checker.check("dgamma", s.batch_sum(dout[i] * x_hat[i])).name == "dgamma"


@pytest.mark.parametrize(
    ("step", "wrong"),
    [
        (1, dout[j]),  # gamma forgotten
        (3, a[1][j] * x_mu[j]),  # not summed over the rows
        (4, -a[3] / s.var),  # divided by the variance instead of sigma_eps squared
        (5, a[4] / s.sigma_eps),  # the 1/2 of the square root forgotten
        (6, a[5]),  # 1/n forgotten
        (7, a[6] * x_mu[j]),  # the factor 2 forgotten
        (8, s.batch_sum(a[2][i] + a[7][i])),  # the minus sign of d(x - mu)/d mu forgotten
        (9, a[8]),  # not shared out
    ],
)
def test_step_checker_catches_a_wrong_formula(checker: StepChecker, step: int, wrong: sp.Expr) -> None:
    check_up_to(checker, step)
    with pytest.raises(AssertionError, match=f"a{step}: SymPy's formula differs from bnlit's a{step}"):
        checker.check(step, wrong)
    assert step not in checker.so_far  # a refused step is not recorded
    checker.check(step, RIGHT_STEPS[step])  # and the right one still passes


def test_step_checker_also_compares_the_formula_written_in_the_batch_alone(checker: StepChecker) -> None:
    checker.check(1, RIGHT_STEPS[1])
    checker.so_far[1] = dout[j]  # an earlier formula gone wrong: gamma lost on the way
    with pytest.raises(AssertionError, match="a2: .*written in the batch alone"):
        checker.check(2, RIGHT_STEPS[2])  # right with bnlit's a1, wrong composed


def test_step_checker_catches_a_formula_that_reads_outside_the_batch(checker: StepChecker) -> None:
    with pytest.raises(AssertionError, match="a1"):
        checker.check(1, s.gamma * dout[j - 1])  # row 0 does not exist: NaN


def test_step_checker_catches_wrong_parameter_gradients(checker: StepChecker) -> None:
    with pytest.raises(AssertionError, match="dgamma"):
        checker.check("dgamma", s.batch_sum(dout[i]))
    with pytest.raises(AssertionError, match="dbeta"):
        checker.check("dbeta", s.batch_sum(dout[i] * x_hat[i]))


def test_step_checker_catches_a_wrong_dx(checker: StepChecker) -> None:
    check_up_to(checker, 10)
    with pytest.raises(AssertionError, match="dx"):
        checker.check("dx", a[2][j] + a[7][j])  # the path through the mean forgotten


def test_step_checker_wants_the_steps_in_order(checker: StepChecker) -> None:
    with pytest.raises(ValueError, match="a2 uses a1, not checked yet"):
        checker.check(2, RIGHT_STEPS[2])
    with pytest.raises(ValueError, match="expected a step"):
        checker.check(10, RIGHT_STEPS[2])


def test_step_checker_writes_a_step_in_the_batch_alone(checker: StepChecker) -> None:
    check_up_to(checker, 4)
    full = checker.in_terms_of_batch(a[3])
    assert not any(full.has(base) for base in a.values())
    assert full == s.batch_sum(s.gamma * dout[i] * x_mu[i])


def test_step_checker_needs_a_staged_2d_layer() -> None:
    plain = BatchNormalization(np.ones(3), np.zeros(3))
    plain.forward(X_SEED)
    plain.backward(np.ones_like(X_SEED))
    with pytest.raises(ValueError, match="staged=True"):
        StepChecker(plain)
    four_d = BatchNormalization(np.ones(2), np.zeros(2), staged=True)
    x4 = np.arange(16.0).reshape(2, 2, 2, 2)
    four_d.forward(x4)
    four_d.backward(np.ones_like(x4))
    with pytest.raises(ValueError, match="2-D input"):
        StepChecker(four_d)


def test_the_module_lists_what_it_exports() -> None:
    assert all(hasattr(_book, name) for name in _book.__all__)
