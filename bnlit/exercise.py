"""A step-by-step checker for the course notebook's exercise.

The notebook asks learners to fill in a ``BatchNormalization`` class whose
private ``__forward`` and ``__backward`` compute the graph's nodes as local
variables (``mu``, ``x_mu``, ..., ``a1`` .. ``a9``). :func:`check` runs such a
class on fixed small 2-D and 4-D inputs, reads those local variables as each
method returns, and reports, in the order of the computational graph, the
first quantity that differs from bnlit's staged graph, with the expected and
the actual values and a one-line hint.

>>> from bnlit.exercise import check
>>> report = check(MyBatchNormalization)        # doctest: +SKIP
>>> report.ok, report.step                      # doctest: +SKIP
(False, 'a7')

``str(report)`` is the message to read: the first wrong quantity, the expected
and the actual values, and a hint.
"""

from __future__ import annotations

import contextlib
import io
import sys
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Optional

import numpy as np

from .graph import staged_backward, staged_forward
from .layer import BatchNormalization

__all__ = ["STEPS", "HINTS", "Report", "check"]

#: Every quantity the checker compares, in the order of the computational graph.
STEPS = (
    "mu", "x_mu", "var", "std", "std_inv", "x_std", "out", "moving_mean", "moving_var",
    "dbeta", "dgamma", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "dx",
)

#: One line per step: what it computes.
HINTS = {
    "mu": "mu is the mean of x over the batch, axis 0: one value per column.",
    "x_mu": "x_mu is x minus mu: the centred input, shape (N, D).",
    "var": "var is the mean of x_mu**2 over axis 0 (divide by N, not N - 1).",
    "std": "std is the square root of var + epsilon.",
    "std_inv": "std_inv is 1 / std.",
    "x_std": "x_std is x_mu * std_inv: the standardised input.",
    "out": "out is gamma * x_std + beta (prediction: the same with the moving mean and variance).",
    "moving_mean": "moving_mean = rho * moving_mean + (1 - rho) * mu: rho weights the old value.",
    "moving_var": "moving_var = rho * moving_var + (1 - rho) * var.",
    "dbeta": "dbeta is dout summed over axis 0.",
    "dgamma": "dgamma is (x_std * dout) summed over axis 0.",
    "a1": "a1, the gradient of x_std, is gamma * dout.",
    "a2": "a2, the gradient of x_mu along the first path, is a1 * std_inv.",
    "a3": "a3, the gradient of std_inv, is (a1 * x_mu) summed over axis 0.",
    "a4": "a4, the gradient of std, is -a3 / std**2 (the derivative of 1/std).",
    "a5": "a5, the gradient of var, is 0.5 * a4 / std (the derivative of sqrt(var + eps)).",
    "a6": "a6, the gradient of x_mu**2, is a5 / N for every row.",
    "a7": "a7, the gradient of x_mu along the second path, is 2 * x_mu * a6.",
    "a8": "a8, the gradient of mu, is -(a2 + a7) summed over axis 0.",
    "a9": "a9, the gradient of x through mu, is a8 / N for every row.",
    "dx": "dx adds the three paths: a2 + a7 + a9.",
}

_FORWARD_LOCALS = ("mu", "x_mu", "var", "std", "std_inv", "x_std")
_BACKWARD_LOCALS = ("dbeta", "dgamma") + tuple(f"a{k}" for k in range(1, 10))
_EPSILON = 1e-8  # the notebook's default
_RHO = 0.9


@dataclass
class Report:
    """What :func:`check` found.

    Attributes
    ----------
    ok : bool
        True when every quantity that could be compared matched.
    step : str or None
        The notebook's name of the first wrong quantity, one of :data:`STEPS`,
        or None when all is right.
    scenario : str or None
        Which input revealed it ("2-D input", "4-D input", with the call).
    expected, actual : ndarray or None
        The values compared at ``step``.
    unchecked : list of str
        Intermediates that could not be read (named differently in the class).
    """

    ok: bool
    step: Optional[str] = None
    scenario: Optional[str] = None
    expected: Optional[np.ndarray] = None
    actual: Optional[Any] = None
    unchecked: list[str] = field(default_factory=list)
    message: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass
class _Run:
    """What one scenario's calls returned and left behind."""

    locals: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"__forward": [], "__backward": []})
    values: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # the method that raised, with the exception


@contextlib.contextmanager
def _recording_locals(run: _Run) -> Any:
    """Record the local variables of every ``__forward`` / ``__backward`` as it returns."""

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code.co_name in run.locals:
            run.locals[frame.f_code.co_name].append(dict(frame.f_locals))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _call(run: _Run, label: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's method quietly; on an exception, note it in ``run``."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), _recording_locals(run):
            return method(*args, **kwargs)
    except Exception as err:  # the learner's code may raise anything
        frames = traceback.extract_tb(err.__traceback__)
        last = frames[-1] if frames else None
        where = "" if last is None else f" (line {last.lineno}: {last.line})" if last.line else f" (line {last.lineno})"
        run.error = f"{label} raised {type(err).__name__}: {err}{where}"
        return None


def _scenarios() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed inputs: (name, x, gamma, beta, dout). dout is random, not x/10 (that hides bugs)."""
    rng = np.random.default_rng(2024)
    x2 = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 2.0], [3.0, 4.0, 4.0], [4.0, 1.0, 2.0]])
    x4 = rng.normal(2.0, 1.5, size=(2, 3, 2, 2)).round(2)
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, -0.2, 0.3])
    return [
        ("2-D input", x2, gamma, beta, rng.normal(size=x2.shape).round(2)),
        ("4-D input", x4, gamma, beta, rng.normal(size=x4.shape).round(2)),
    ]


def _to_rows(a: np.ndarray) -> np.ndarray:
    """The notebook's view of a 4-D array: (N, C, H, W) -> (N*H*W, C)."""
    return a if a.ndim == 2 else a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def _expected(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dout: np.ndarray) -> dict[str, np.ndarray]:
    """Reference values: the intermediates from bnlit's staged graph in the notebook's
    (N, D) layout, the public results from bnlit's layer."""
    f = staged_forward(_to_rows(x), gamma, beta, _EPSILON)
    b = staged_backward(f, _to_rows(dout))
    values = {name: getattr(f, name) for name in _FORWARD_LOCALS}
    values |= {f"a{k}": getattr(b, f"a{k}") for k in range(1, 10)}
    layer = BatchNormalization(gamma, beta, _RHO, epsilon=_EPSILON)
    values["out"] = layer.forward(x, train_flg=True)
    values["moving_mean"], values["moving_var"] = layer.moving_mean, layer.moving_var
    values["predict"] = layer.forward(x, train_flg=False)
    values["dx"] = layer.backward(dout)
    values["dgamma"], values["dbeta"] = layer.dgamma, layer.dbeta
    return values


def _matches(actual: Any, expected: np.ndarray) -> bool:
    """Same values, allowing per-channel results as (D,), (1, D) or broadcast to (N, D)."""
    try:
        a = np.asarray(actual, dtype=float)
        shape = np.broadcast_shapes(a.shape, expected.shape)
    except (TypeError, ValueError):
        return False
    if np.prod(shape) != max(a.size, expected.size):  # e.g. (D, 1) against (1, D)
        return False
    scale = max(1.0, float(np.max(np.abs(expected))))
    a, e = np.broadcast_arrays(a, expected)
    return bool(np.allclose(a, e, rtol=1e-6, atol=1e-9 * scale))


def _show(a: Any) -> str:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        return repr(a)
    with np.printoptions(precision=6, suppress=False, threshold=24, linewidth=88):
        return f"shape {arr.shape}\n" + "\n".join("      " + line for line in str(arr).splitlines())


def check(cls: type) -> Report:
    """Run a learner's ``BatchNormalization`` class and locate its first mistake.

    The class must follow the notebook's interface:
    ``cls(gamma, beta)``, ``forward(x, train_flg=True)``, ``backward(dout)``,
    with attributes ``moving_mean``, ``moving_var``, ``dgamma`` and ``dbeta``.
    Each scenario (a 2-D and a 4-D input) uses a fresh instance; whatever the
    class prints is swallowed. Its intermediates are read from the local
    variables of ``__forward`` and ``__backward`` under the notebook's names;
    where a name is missing, only the public results are compared.

    Parameters
    ----------
    cls : type
        The learner's class.

    Returns
    -------
    Report
        ``report.ok``, ``report.step`` (first wrong quantity, or None) and
        ``str(report)``, the message to read.
    """
    unchecked: list[str] = []
    for scenario, x, gamma, beta, dout in _scenarios():
        want = _expected(x, gamma, beta, dout)
        run = _Run()
        layer = _call(run, f"{cls.__name__}(gamma, beta)", cls, gamma.copy(), beta.copy())
        calls = [
            ("out", "forward(x, train_flg=True)", lambda: layer.forward(x.copy(), train_flg=True)),
            ("predict", "forward(x, train_flg=False)", lambda: layer.forward(x.copy(), train_flg=False)),
            ("dx", "backward(dout)", lambda: layer.backward(dout.copy())),
        ]
        for name, label, call in calls:
            if run.error is not None:
                break
            result = _call(run, label, call)
            if run.error is None:
                run.values[name] = result
            if name == "out" and run.error is None:
                run.values["moving_mean"] = getattr(layer, "moving_mean", None)
                run.values["moving_var"] = getattr(layer, "moving_var", None)
            if name == "dx" and run.error is None:
                run.values["dgamma"] = getattr(layer, "dgamma", None)
                run.values["dbeta"] = getattr(layer, "dbeta", None)
        forward_locals = run.locals["__forward"][0] if run.locals["__forward"] else {}
        backward_locals = run.locals["__backward"][0] if run.locals["__backward"] else {}

        for step in STEPS:
            label = scenario + (", forward" if STEPS.index(step) < STEPS.index("dbeta") else ", backward")
            if step in _FORWARD_LOCALS or step in _BACKWARD_LOCALS[2:]:
                where = forward_locals if step in _FORWARD_LOCALS else backward_locals
                if step not in where:
                    if run.error is not None:
                        return _raised(run.error, step, scenario)
                    if step not in unchecked:
                        unchecked.append(step)
                    continue
                actual = where[step]
            elif step in run.values:
                actual = run.values[step]
            else:  # a public result never computed: the call before it raised
                return _raised(run.error or "the class stopped early", step, scenario)
            if not _matches(actual, want[step]):
                return _wrong(step, label, want[step], actual, unchecked)
            if step == "moving_var":  # prediction uses the moving statistics just checked
                if "predict" not in run.values:
                    return _raised(run.error or "the class stopped early", "out", scenario)
                if not _matches(run.values["predict"], want["predict"]):
                    return _wrong("out", scenario + ", prediction (train_flg=False)", want["predict"],
                                  run.values["predict"], unchecked)
        if run.error is not None:
            return _raised(run.error, "dx", scenario)

    names = [s for s in STEPS if s not in unchecked]
    message = _wrap(f"All clear: {len(names)} quantities match bnlit on the 2-D and 4-D inputs ({', '.join(names)}).")
    if unchecked:
        message += "\n" + _wrap(
            f"Not checked, because the class has no local variable of that name: {', '.join(unchecked)}."
            " The public results (out, moving statistics, dgamma, dbeta, dx) were checked instead."
        )
    return Report(True, unchecked=unchecked, message=message)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=80, subsequent_indent=indent)


def _wrong(step: str, label: str, expected: np.ndarray, actual: Any, unchecked: list[str]) -> Report:
    before = STEPS[: STEPS.index(step)]
    right = [s for s in before if s not in unchecked]
    message = (
        f"First wrong quantity: {step} ({label}).\n"
        f"  expected {_show(expected)}\n"
        f"  got      {_show(actual)}\n"
        f"  hint: {HINTS[step]}"
    )
    if right:
        message += "\n" + _wrap(f"Everything before it is right: {', '.join(right)}.")
    return Report(False, step, label, np.asarray(expected), actual, list(unchecked), message)


def _raised(error: str, step: str, scenario: str) -> Report:
    message = (
        f"The class raised an exception, on the {scenario}:\n  {error}.\n"
        f"The first quantity that could not be checked is {step}.\n  hint: {HINTS[step]}"
    )
    return Report(False, step, scenario, None, None, [], message)
