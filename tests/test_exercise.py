"""The exercise checker finds the first wrong step of a learner's class, and survives it.

The learner's class is the finished exercise in docs/_exercise_solution.py
(the notebook's structure, prints and template bug included); each planted
mistake changes one line of it (or adds one). Messages are compared whole:
word for word where the printed arrays are left out, character for character
in the golden reports.
"""

from __future__ import annotations

import ast
import builtins
import gettext
import itertools
import linecache
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bnlit
import bnlit.exercise as exercise
from bnlit._i18n import LOCALEDIR, languages, translation
from bnlit.exercise import HINTS, STEPS, check

from _mutmut_fork import child_calls_count_for_mutmut  # noqa: F401 - autouse, for `make mutation`

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = (ROOT / "docs" / "_exercise_solution.py").read_text()
_names = itertools.count()


def learner_class(replace: dict[str, str] | None = None, *, source_lines: bool = False) -> type:
    """The finished class with lines replaced. With ``source_lines``, its source is
    registered in linecache, as IPython does for a notebook cell."""
    source = SOLUTION
    for old, new in (replace or {}).items():
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    # Unique even when this module is imported twice (test_exercise_mutants.py imports it):
    # a name registered in linecache by one copy must not lend its source to another's class.
    filename = f"<learner-{next(_names)}-{uuid.uuid4().hex[:8]}>"
    if source_lines:
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["BatchNormalization"]


def line_of(text: str, replace: dict[str, str]) -> int:
    """The line number of ``text`` in the solution after ``replace``."""
    source = SOLUTION
    for old, new in replace.items():
        source = source.replace(old, new)
    (number,) = [i for i, line in enumerate(source.splitlines(), 1) if text in line]
    return number


def skeleton(message: str) -> str:
    """The message without the printed arrays (the "expected" and "got" blocks), one space
    between words: what is compared word for word."""
    kept, in_block = [], False
    for line in message.splitlines():
        if line.startswith(("  expected ", "  got      ", "  正しい値 ", "  実際の値 ")):
            in_block = True
            continue
        if in_block and line.startswith("      "):
            continue
        in_block = False
        kept.append(line)
    return " ".join(" ".join(kept).split())


# --------------------------------------------------------------------- a correct class
ALL_CLEAR = """\
All clear: 21 quantities match bnlit on the 2-D and 4-D inputs (mu, x_mu, var,
std, std_inv, x_std, out, moving_mean, moving_var, dbeta, dgamma, a1, a2, a3,
a4, a5, a6, a7, a8, a9, dx).
Prediction on a batch of another size is right too, and the moving statistics
keep their shape."""


def test_a_correct_class_gets_an_all_clear(capfd) -> None:
    report = check(learner_class())
    assert report.ok and report.step is None and report.unchecked == []
    assert str(report) == ALL_CLEAR
    assert capfd.readouterr() == ("", "")  # the class's shape prints are swallowed ...
    printed = report.stdout.splitlines()  # ... and kept:
    assert printed.count("mu.shape= (4, 3)") == 1  # the 4 rows of the 2-D input
    assert printed.count("mu.shape= (16, 3)") == 1  # the N*H*W = 2*2*4 rows of the 4-D input
    assert report.stderr == ""


def test_the_template_bug_does_not_mislead_the_checker() -> None:
    cls = learner_class()
    layer = cls(np.ones(3), np.zeros(3))
    layer.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    with pytest.raises(NameError):  # N, D are set only while the moving statistics are None
        layer.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    given = cls(np.ones(3), np.zeros(3), moving_mean=np.zeros(3), moving_var=np.ones(3))
    with pytest.raises(NameError):  # ... so with moving statistics given, the first call fails
        given.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    assert check(cls).ok  # a fresh instance per scenario, built from gamma and beta only


# ------------------------------------------------ one planted mistake for every step
FWD2, PRED2, BWD2 = "2-D input, forward", "2-D input, prediction on a batch of another size", "2-D input, backward"
FWD4, PRED4, BWD4 = "4-D input, forward", "4-D input, prediction on a batch of another size", "4-D input, backward"
HINT_ROWS = ("On 4-D input, forward hands __forward one row per pixel: first x.transpose(0, 2, 3, 1) moves "
             "the channels last, then x.reshape(N*H*W, C). Reshaping without the transpose mixes the channels.")
HINT_IMAGE = ("On 4-D input, forward turns the rows back into an image: out.reshape(N, H, W, C), then "
              "out.transpose(0, 3, 1, 2) back to (N, C, H, W).")
HINT_DROWS = ("On 4-D input, backward hands __backward one row per pixel, as forward does with x: "
              "dout.transpose(0, 2, 3, 1), then dout.reshape(N*H*W, C).")
HINT_DIMAGE = ("On 4-D input, backward turns the rows of dx back into an image: dx.reshape(N, H, W, C), "
               "then dx.transpose(0, 3, 1, 2).")
HINT_PRED_X_MU = ("In prediction, x_mu is x - moving_mean: the moving mean, not this batch's mean, and nothing "
                  "of the training batch's size (the batch may have any number of rows).")
HINT_PRED_X_STD = "In prediction, x_std is x_mu / np.sqrt(moving_var + epsilon)."


def shape_sentence(step: str, got: str, want: str) -> str:
    return (f"{step} has shape {got} after training; it must keep the shape {want} it started with, "
            "or prediction on a batch of another size fails.")


# (id, step, where, replace, hint when not HINTS[step], shape sentence)
PLANTED = [
    ("mu", "mu", FWD2, {"mu = np.mean(x, axis=0)  # D values": "mu = np.mean(x, axis=1)[:, None]"}, None, None),
    ("x_mu", "x_mu", FWD2, {"x_mu = x - mu  # N x D": "x_mu = mu - x  # N x D"}, None, None),
    ("var", "var", FWD2, {"var = np.mean(x_mu**2, axis=0)  # D values": "var = np.sum(x_mu**2, axis=0) / (N - 1)"},
     None, None),
    ("std", "std", FWD2, {"std = np.sqrt(var + epsilon)  # D values": "std = var + epsilon"}, None, None),
    # A near miss: std off by a few parts in a million. A loose tolerance blames dx instead.
    ("std epsilon=1e-5", "std", FWD2, {"epsilon=1e-8):": "epsilon=1e-5):"}, None, None),
    # Only the 4-D input's constant channel shows these two: there var = 0 and epsilon is all of std.
    ("std 4-D only", "std", FWD4, {"std = np.sqrt(var + epsilon)  # D values": "std = np.sqrt(var) + epsilon"},
     None, None),
    ("std_inv 4-D only", "std_inv", FWD4, {"std_inv = 1 / std\n": "std_inv = 1 / np.sqrt(var)\n"}, None, None),
    ("x_std", "x_std", FWD2, {"x_std = x_mu * std_inv  # N x D": "x_std = x * std_inv  # N x D"}, None, None),
    ("out", "out", FWD2, {"out = self.gamma * x_std + self.beta  # N x D": "out = self.gamma * x_std  # N x D"},
     None, None),
    ("moving_mean rho", "moving_mean", FWD2,
     {"self.moving_mean = self.rho * self.moving_mean + (1 - self.rho) * mu[0]":
      "self.moving_mean = (1 - self.rho) * self.moving_mean + self.rho * mu[0]"}, None, None),
    # Issue 8: the broadcast (N, D) mu in the update. Prediction on another batch size would fail.
    ("moving_mean shape 2-D", "moving_mean", FWD2,
     {"self.moving_mean = self.rho * self.moving_mean + (1 - self.rho) * mu[0]":
      "self.moving_mean = self.rho * self.moving_mean + (1 - self.rho) * mu"},
     None, shape_sentence("moving_mean", "(4, 3)", "(3,)")),
    ("moving_mean shape 4-D", "moving_mean", FWD4,
     {"out = out.reshape(N, H, W, C)  # back to 4-D":
      "self.moving_mean = self.moving_mean.reshape(1, C, 1, 1)  # to broadcast over NCHW\n"
      "            out = out.reshape(N, H, W, C)  # back to 4-D"},
     None, shape_sentence("moving_mean", "(1, 3, 1, 1)", "(3,)")),
    ("moving_var", "moving_var", FWD2,
     {"(1 - self.rho) * var": "(1 - self.rho) * std"}, None, None),
    ("moving_var shape", "moving_var", FWD2,
     {"var = np.mean(x_mu**2, axis=0)  # D values": "var = np.mean(x_mu**2, axis=0, keepdims=True)"},
     None, shape_sentence("moving_var", "(1, 3)", "(3,)")),
    ("x_mu in prediction", "x_mu", PRED2, {"x_mu = x - self.moving_mean  # N x D": "x_mu = x - np.mean(x, axis=0)"},
     HINT_PRED_X_MU, None),
    ("x_std in prediction 4-D only", "x_std", PRED4,
     {"x_std = x_mu / np.sqrt(self.moving_var + epsilon)  # N x D": "x_std = x_mu / np.sqrt(self.moving_var)"},
     HINT_PRED_X_STD, None),
    ("no NHWC transpose", "mu", FWD4, {"x = x.transpose(0, 2, 3, 1)  # to NHWC": "pass  # no transpose"},
     HINT_ROWS, None),
    ("no NCHW transpose back", "out", FWD4,
     {"out = out.transpose(0, 3, 1, 2)  # back to NCHW": "out = out.reshape(N, C, H, W)"}, HINT_IMAGE, None),
    ("dbeta", "dbeta", BWD2, {"dbeta = np.sum(dout, axis=0)": "dbeta = np.mean(dout, axis=0)"}, None, None),
    ("dgamma", "dgamma", BWD2, {"dgamma = np.sum(self.x_std * dout, axis=0)": "dgamma = np.sum(dout, axis=0)"},
     None, None),
    ("a1", "a1", BWD2, {"a1 = self.gamma * dout": "a1 = dout"}, None, None),
    ("a2", "a2", BWD2, {"a2 = a1 / self.std": "a2 = a1 * self.std"}, None, None),
    ("a3", "a3", BWD2, {"        a3 = np.sum(a3, axis=0)  # summed over N\n": ""}, None, None),
    ("a4", "a4", BWD2, {"a4 = -a3 / (self.std * self.std)": "a4 = a3 / (self.std * self.std)"}, None, None),
    ("a5", "a5", BWD2, {"a5 = 0.5 * a4 / self.std": "a5 = 0.5 * a4 * self.std"}, None, None),
    ("a6", "a6", BWD2, {"a6 = a5 / N  # gradient of x_mu**2": "a6 = a5  # gradient of x_mu**2"}, None, None),
    ("a7", "a7", BWD2, {"a7 = 2.0 * self.x_mu * a6": "a7 = self.x_mu * a6"}, None, None),
    ("a8", "a8", BWD2, {"a8 = -(a2 + a7)  # gradient of mu": "a8 = a2 + a7  # gradient of mu"}, None, None),
    ("a9", "a9", BWD2, {"a9 = a8 / N  # gradient of x through mu": "a9 = a8  # gradient of x through mu"},
     None, None),
    ("dx", "dx", BWD2, {"dx = a2 + a7 + a9": "dx = a2 + a9"}, None, None),
    ("no NHWC transpose in backward", "dbeta", BWD4,
     {"dout = dout.transpose(0, 2, 3, 1)\n": "pass\n"}, HINT_DROWS, None),
    ("no NCHW transpose of dx", "dx", BWD4, {"dx = dx.transpose(0, 3, 1, 2)": "dx = dx.reshape(N, C, H, W)"},
     HINT_DIMAGE, None),
]
PLANTED_IDS = [case[0] for case in PLANTED]


def expected_skeleton(step: str, where: str, hint: str | None, shape: str | None) -> str:
    """The report a planted mistake must give, arrays left out, built from the checker's rules."""
    if "prediction" in where:  # everything of the training pass came before
        right = STEPS[: STEPS.index("moving_var") + 1]
    else:
        right = STEPS[: STEPS.index(step)]
    lines = [f"First wrong quantity: {step} ({where})."]
    if shape:
        lines.append(shape)
    lines.append(f"hint: {hint or HINTS[step]}")
    if right:
        lines.append(f"Everything before it is right: {', '.join(right)}.")
    if where.startswith("4-D"):
        lines.append("The 2-D input passed every check.")
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("name, step, where, replace, hint, shape", PLANTED, ids=PLANTED_IDS)
def test_a_planted_mistake_is_located(name, step, where, replace, hint, shape) -> None:
    report = check(learner_class(replace))
    assert (report.ok, report.step, report.scenario) == (False, step, where)
    assert skeleton(str(report)) == expected_skeleton(step, where, hint, shape)


def test_every_step_has_a_planted_mistake_and_4d_has_its_own() -> None:
    assert {step for _name, step, *_ in PLANTED} == set(STEPS)
    assert {where for _n, _s, where, *_ in PLANTED} == {FWD2, PRED2, BWD2, FWD4, PRED4, BWD4}


def test_a_report_in_full_with_its_arrays() -> None:
    """moving_mean = 0.1 * (column means 2.5, 2.75, 3.0) after one step from zeros; the broadcast
    (N, D) mu gives it 4 equal rows."""
    report = check(learner_class({"(1 - self.rho) * mu[0]": "(1 - self.rho) * mu"}))
    assert str(report) == """\
First wrong quantity: moving_mean (2-D input, forward).
  expected shape (3,)
      [0.25  0.275 0.3  ]
  got      shape (4, 3)
      [[0.25  0.275 0.3  ]
       [0.25  0.275 0.3  ]
       [0.25  0.275 0.3  ]
       [0.25  0.275 0.3  ]]
  moving_mean has shape (4, 3) after training; it must keep the shape (3,) it
    started with, or prediction on a batch of another size fails.
  hint: moving_mean = rho * moving_mean + (1 - rho) * mu, with the D values of
    mu (mu[0] once mu is broadcast to (N, D)): rho weights the old value, and
    moving_mean keeps its shape (D,).
Everything before it is right: mu, x_mu, var, std, std_inv, x_std, out."""
    np.testing.assert_allclose(report.expected, [0.25, 0.275, 0.3], rtol=1e-15)
    assert report.actual.shape == (4, 3)


def test_a_zero_prints_as_zero() -> None:
    """Column 2 of the 2-D input is 3, 2, 4, 3 with mean 3: x_mu, so a7, has zeros there,
    which the float arithmetic makes -0.0; the report prints 0., not -0."""
    report = check(learner_class({"a7 = 2.0 * self.x_mu * a6": "a7 = self.x_mu * a6"}))
    assert report.expected[0, 2] == 0 and np.signbit(report.expected[0, 2])
    assert re.findall(r"-?0\.(?!\d)", str(report)) == ["0."] * 4


def test_leaving_a7_out_of_a8_is_not_a_mistake() -> None:
    """sum(a7) = 2 * a6 * sum(x_mu) = 0: the second path adds nothing to a8, and the checker agrees."""
    report = check(learner_class({"a8 = -(a2 + a7)  # gradient of mu": "a8 = -a2  # gradient of mu"}))
    assert report.ok


# ------------------------------------------------------- a class that raises or stops
RAISE_IN_VAR = {"var = np.mean(x_mu**2, axis=0)  # D values": "var = np.mean(x_mu**2, axis=0) + blank"}


def test_an_exception_is_located_with_its_line_and_source() -> None:
    line = line_of("+ blank", RAISE_IN_VAR)
    report = check(learner_class(RAISE_IN_VAR, source_lines=True))
    assert (report.ok, report.step, report.scenario) == (False, "var", FWD2)
    assert str(report) == f"""\
The class raised an exception on the 2-D input:
  forward(x, train_flg=True) raised NameError: name 'blank' is not defined (line {line}: var = np.mean(x_mu**2, axis=0) + blank)
The first quantity that could not be checked is var.
  hint: var is the mean of x_mu**2 over axis 0 (divide by N, not N - 1)."""


def test_an_exception_without_source_gives_the_line_number_alone() -> None:
    line = line_of("+ blank", RAISE_IN_VAR)
    report = check(learner_class(RAISE_IN_VAR))
    assert str(report).splitlines()[1] == (
        f"  forward(x, train_flg=True) raised NameError: name 'blank' is not defined (line {line})")


def test_an_exception_inside_numpy_is_placed_at_the_learners_line() -> None:
    """Prediction with the training batch's size: NumPy raises, the report shows the learner's line."""
    replace = {"x_mu = x - self.moving_mean  # N x D":
               "x_mu = x - np.broadcast_to(self.moving_mean, (self.batch_size, x.shape[1]))"}
    line = line_of("np.broadcast_to(self.moving_mean", replace)
    with pytest.raises(ValueError) as numpy:  # 3 rows to predict on, 4 in training
        np.zeros((3, 3)) - np.broadcast_to(np.zeros(3), (4, 3))
    report = check(learner_class(replace, source_lines=True))
    assert (report.step, report.scenario) == ("x_mu", PRED2)
    assert str(report) == f"""\
The class raised an exception on the 2-D input:
  forward(x, train_flg=False) raised ValueError: {numpy.value} (line {line}: x_mu = x - np.broadcast_to(self.moving_mean, (self.batch_size, x.shape[1])))
The first quantity that could not be checked is x_mu.
  hint: In prediction, x_mu is x - moving_mean: the moving mean, not this
    batch's mean, and nothing of the training batch's size (the batch may have
    any number of rows)."""


def test_a_class_that_raises_in_backward_after_computing_some_steps() -> None:
    report = check(learner_class({"a2 = a1 / self.std": "raise NotImplementedError('a2..a9 still blank')"}))
    assert (report.step, report.scenario) == ("a2", BWD2)  # dbeta, dgamma and a1 were computed and right
    assert str(report).splitlines()[1].startswith(
        "  backward(dout) raised NotImplementedError: a2..a9 still blank (line ")


def test_a_class_that_cannot_be_built() -> None:
    class Broken:
        def __init__(self, gamma, beta):
            raise TypeError("missing rho")

    report = check(Broken)
    assert (report.ok, report.step) == (False, "mu")
    line = Broken.__init__.__code__.co_firstlineno + 1
    assert str(report) == f"""\
The class raised an exception on the 2-D input:
  Broken(gamma, beta) raised TypeError: missing rho (line {line}: raise TypeError("missing rho"))
The first quantity that could not be checked is mu.
  hint: mu is the mean of x over the batch, np.mean(x, axis=0): one value per
    column."""


HANG_AFTER_VAR = "var = np.mean(x_mu**2, axis=0)  # D values"


@pytest.mark.parametrize("hang, lines", [
    ("while True:\n                x = -x", ["while True:", "x = -x"]),  # stopped at either line
    ("import time; time.sleep(60)", ["import time; time.sleep(60)"]),
], ids=["busy loop", "sleep"])
def test_a_class_that_never_returns_is_stopped_at_its_line(hang, lines) -> None:
    replace = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            " + hang}
    report = check(learner_class(replace, source_lines=True), timeout=0.3)
    assert (report.step, report.scenario) == ("std", FWD2)  # mu, x_mu, var were computed and right
    assert str(report).splitlines()[1] in {
        f"  forward(x, train_flg=True) did not return within 0.3 s (line {line_of(code, replace)}: {code})"
        for code in lines}
    assert str(report).splitlines()[2:] == [
        "The first quantity that could not be checked is std.",
        "  hint: std is np.sqrt(var + epsilon): epsilon goes inside the square root,",
        "    where it keeps std above zero for a constant column.",
        "If your class is only slow, give it more time: check(cls, timeout=...).",
    ]


def test_a_class_that_ignores_the_time_limit_is_killed() -> None:
    """The alarm is blocked: the child cannot stop itself, the caller kills it."""
    replace = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            import signal, time; "
               "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM}); time.sleep(60)"}
    report = check(learner_class(replace), timeout=0.2)
    assert (report.step, report.scenario) == ("mu", FWD2)  # nothing of that call came back
    assert str(report).splitlines()[:3] == [
        "The class did not finish in time on the 2-D input:",
        "  forward(x, train_flg=True) did not return within 0.2 s",
        "The first quantity that could not be checked is mu.",
    ]


def test_the_time_limit_is_a_keyword() -> None:
    replace = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            import time; time.sleep(0.4)"}
    assert not check(learner_class(replace), timeout=0.2).ok
    assert check(learner_class(replace), timeout=3).ok


EXIT_IN_A1 = "a1 = self.gamma * dout  # gradient of x_std"


def test_sys_exit_is_reported_and_the_caller_lives_on() -> None:
    replace = {EXIT_IN_A1: EXIT_IN_A1 + "\n        import sys; sys.exit(3)"}
    report = check(learner_class(replace, source_lines=True))
    assert (report.step, report.scenario) == ("a2", BWD2)
    assert str(report) == f"""\
The class tried to end the Python process on the 2-D input:
  backward(dout) called sys.exit(3) (line {line_of("sys.exit(3)", replace)}: import sys; sys.exit(3))
The first quantity that could not be checked is a2.
  hint: a2, the gradient of x_mu along the first path, is a1 * std_inv (that is,
    a1 / std)."""


@pytest.mark.parametrize("end, what", [
    ("import os; os._exit(3)", "  backward(dout) ended the process (exit code 3)"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "  backward(dout) was killed by signal 9"),
], ids=["os._exit", "SIGKILL"])
def test_a_process_that_dies_is_reported(end, what) -> None:
    report = check(learner_class({EXIT_IN_A1: EXIT_IN_A1 + "\n        " + end}))
    assert (report.step, report.scenario) == ("dbeta", BWD2)  # nothing of that call came back
    assert str(report).splitlines()[:3] == [
        "The class ended its process on the 2-D input:", what,
        "The first quantity that could not be checked is dbeta."]


class Wrapped:
    """A class with the notebook's interface but none of its local names."""

    def __init__(self, gamma, beta, epsilon=1e-8):
        self._layer = bnlit.BatchNormalization(gamma, beta, epsilon=epsilon)

    def forward(self, x, train_flg=True):
        return self._layer.forward(x, train_flg)

    def backward(self, dout):
        return self._layer.backward(dout)

    def __getattr__(self, name):
        return getattr(self._layer, name)


def test_a_property_that_raises_is_reported_at_its_step() -> None:
    class UnreadableGradient(Wrapped):
        @property
        def dgamma(self):
            raise RuntimeError("dgamma is not ready")

    report = check(UnreadableGradient)
    assert (report.step, report.scenario) == ("dgamma", BWD2)
    line = UnreadableGradient.dgamma.fget.__code__.co_firstlineno + 2
    assert str(report) == f"""\
The class raised an exception on the 2-D input:
  layer.dgamma raised RuntimeError: dgamma is not ready (line {line}: raise RuntimeError("dgamma is not ready"))
The first quantity that could not be checked is dgamma.
  hint: dgamma is (x_std * dout) summed over axis 0."""


def test_a_property_that_never_returns_is_stopped_at_its_step() -> None:
    class SlowStatistics(Wrapped):
        @property
        def moving_var(self):
            import time
            time.sleep(60)

    report = check(SlowStatistics, timeout=0.3)
    assert (report.step, report.scenario) == ("moving_var", FWD2)  # out and moving_mean were right
    line = SlowStatistics.moving_var.fget.__code__.co_firstlineno + 3
    assert str(report).splitlines()[:3] == [
        "The class did not finish in time on the 2-D input:",
        f"  layer.moving_var did not return within 0.3 s (line {line}: time.sleep(60))",
        "The first quantity that could not be checked is moving_var."]


def test_a_result_whose_array_conversion_raises_is_reported() -> None:
    class Weird:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("no array today")

    class WeirdOutput(Wrapped):
        def forward(self, x, train_flg=True):
            super().forward(x, train_flg)
            return Weird()

    report = check(WeirdOutput)
    assert (report.step, report.scenario) == ("out", FWD2)
    got = [line for line in str(report).splitlines() if line.startswith("  got")]
    assert got == ["  got      a Weird object, which np.asarray could not read (RuntimeError: no array today)"]


def test_other_names_fall_back_to_the_public_results() -> None:
    report = check(Wrapped)
    assert report.ok
    assert report.unchecked == ["mu", "x_mu", "var", "std", "std_inv", "x_std"] + [f"a{k}" for k in range(1, 10)]
    assert str(report).splitlines()[-3:] == [
        "Not checked, because the class has no local variable of that name: mu, x_mu,",
        "var, std, std_inv, x_std, a1, a2, a3, a4, a5, a6, a7, a8, a9. The public results",
        "(out, moving statistics, dgamma, dbeta, dx) were checked instead.",
    ]

    class WrongEpsilon(Wrapped):
        def __init__(self, gamma, beta):
            super().__init__(gamma, beta, epsilon=0.5)

    report = check(WrongEpsilon)
    assert (report.ok, report.step, report.scenario) == (False, "out", FWD2)


def test_a_class_that_changes_the_process_changes_only_its_own() -> None:
    replace = {EXIT_IN_A1: EXIT_IN_A1 + "\n        import builtins; builtins.LEAKED = 1; np.seterr(all='raise')"}
    before = np.geterr()
    assert check(learner_class(replace)).ok
    assert not hasattr(builtins, "LEAKED")
    assert np.geterr() == before


# ------------------------------------------------------------------ what the class prints
PRINTS = {EXIT_IN_A1: EXIT_IN_A1 + "\n        import sys, os; print('to stderr', file=sys.stderr); "
          "os.write(2, b'fd 2\\n'); os.write(1, b'fd 1\\n')"}


def test_stdout_and_stderr_are_captured_and_shown_only_when_asked(capfd) -> None:
    quiet = check(learner_class(PRINTS))
    assert capfd.readouterr() == ("", "")
    assert str(quiet) == ALL_CLEAR
    assert quiet.stderr == "to stderr\nfd 2\n" * 2  # once per input
    assert quiet.stdout.count("fd 1\n") == 2 and quiet.stdout.count("a9.shape=") == 2
    loud = check(learner_class(PRINTS), show_output=True)
    assert capfd.readouterr() == ("", "")
    stdout_part = "\n".join("  " + line for line in loud.stdout.rstrip("\n").split("\n"))
    assert str(loud) == (ALL_CLEAR + "\nWhat the class printed to stdout:\n" + stdout_part
                         + "\nWhat the class printed to stderr:\n  to stderr\n  fd 2\n  to stderr\n  fd 2")


# ------------------------------------------------------------------------- wrong calls
@pytest.mark.parametrize("value, message", [
    (None, "check expects a class, for example check(BatchNormalization); got None"),
    ("instance", "check expects a class, for example check(BatchNormalization); got an instance of "
                 "BatchNormalization: pass the class, not an object made from it"),
    (3, "check expects a class, for example check(BatchNormalization); got a value of type int"),
], ids=["None", "instance", "int"])
def test_something_that_is_not_a_class_is_refused(value, message) -> None:
    if value == "instance":
        value = learner_class()(np.ones(3), np.zeros(3))
    with pytest.raises(TypeError) as info:
        check(value)
    assert str(info.value) == message


def test_bad_keywords_are_refused() -> None:
    cls = learner_class()
    with pytest.raises(ValueError) as info:
        check(cls, lang="fr")
    assert str(info.value) == "lang must be one of 'en', 'ja'; got 'fr'"
    for timeout in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError) as info:
            check(cls, timeout=timeout)
        assert str(info.value) == f"timeout must be a positive number of seconds; got {timeout!r}"
    with pytest.raises(TypeError) as info:
        check(cls, timeout="5")
    assert str(info.value) == "timeout must be a number of seconds; got str"


# --------------------------------------------------------- where fork is not available
def test_without_fork_a_thread_runs_the_class(monkeypatch) -> None:
    monkeypatch.setattr(exercise, "_forkable", lambda: False)
    assert str(check(learner_class())) == ALL_CLEAR
    name, step, where, replace, hint, shape = PLANTED[PLANTED_IDS.index("no NHWC transpose")]
    report = check(learner_class(replace))
    assert skeleton(str(report)) == expected_skeleton(step, where, hint, shape)
    report = check(learner_class({EXIT_IN_A1: EXIT_IN_A1 + "\n        import sys; sys.exit(3)"}))
    assert str(report).splitlines()[0] == "The class tried to end the Python process on the 2-D input:"
    slow = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            import time; time.sleep(3600)"}
    report = check(learner_class(slow), timeout=0.1)  # the thread sleeps on (a daemon: it ends with Python)
    assert str(report).splitlines()[:2] == ["The class did not finish in time on the 2-D input:",
                                            "  forward(x, train_flg=True) did not return within 0.1 s"]


# -------------------------------------------------------------------------- Japanese
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
ENGLISH_SENTENCE = re.compile(r"\b[A-Za-z]{2,}(?: [A-Za-z]{2,}){2,}\b")  # three English words in a row


def assert_no_english_sentence(text: str, *learner_parts: str) -> None:
    """No three English words in a row outside code and outside what the learner's code wrote."""
    for part in learner_parts:
        text = text.replace(part, "")
    assert JAPANESE.search(text)
    assert not ENGLISH_SENTENCE.findall(skeleton(text)), text


@pytest.mark.parametrize("name, step, where, replace, hint, shape", PLANTED, ids=PLANTED_IDS)
def test_the_japanese_report_names_the_same_step(name, step, where, replace, hint, shape) -> None:
    report = check(learner_class(replace), lang="ja")
    assert (report.ok, report.step) == (False, step)
    first = str(report).splitlines()[0]
    assert first.startswith(f"最初に誤っている値: {step}（{where[0]} 次元の入力、")
    assert_no_english_sentence(str(report))


def test_japanese_reports_in_full() -> None:
    assert str(check(learner_class(), lang="ja")) == (
        "すべて正しいです: 2 次元と 4 次元の入力で、21 個の値が bnlit と一致しました（mu, x_mu, var, std, std_inv, "
        "x_std, out, moving_mean, moving_var, dbeta, dgamma, a1, a2, a3, a4, a5, a6, a7, a8, a9, dx）。\n"
        "学習時と異なるサイズのミニバッチでの推論も正しく、移動平均の形状も保たれています。")
    line = line_of("+ blank", RAISE_IN_VAR)
    report = check(learner_class(RAISE_IN_VAR, source_lines=True), lang="ja")
    assert (report.step, report.scenario) == ("var", "2 次元の入力、学習時の順伝播")
    assert str(report) == f"""\
2 次元の入力で、クラスが例外を送出しました:
  forward(x, train_flg=True) が例外を送出しました: NameError: name 'blank' is not defined（{line} 行目: var = np.mean(x_mu**2, axis=0) + blank）
確認できなかった最初の値は var です。
  ヒント: var は x_mu**2 の axis 0 方向の平均です（N - 1 ではなく N で割ります）。"""


def test_japanese_reports_on_a_class_that_stops_have_no_english_sentence() -> None:
    hang = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            import time; time.sleep(60)"}
    exit_ = {EXIT_IN_A1: EXIT_IN_A1 + "\n        import sys; sys.exit(3)"}
    died = {EXIT_IN_A1: EXIT_IN_A1 + "\n        import os; os._exit(3)"}
    for replace, timeout in ((RAISE_IN_VAR, 5), (hang, 0.3), (exit_, 5), (died, 5)):
        report = check(learner_class(replace, source_lines=True), lang="ja", timeout=timeout)
        learner_code = [line.strip() for new in replace.values() for line in new.splitlines()]
        assert_no_english_sentence(str(report), "name 'blank' is not defined", *learner_code)
    report = check(Wrapped, lang="ja")
    assert report.ok and "確認していません: mu, x_mu," in str(report)
    assert_no_english_sentence(str(report))
    with pytest.raises(TypeError) as info:
        check(None, lang="ja")
    assert str(info.value) == "check にはクラスを渡してください（例: check(BatchNormalization)）。None が渡されました。"


# ------------------------------------------------------------------ the catalogs
def read_po(path: Path) -> list[tuple[str, str, set[str]]]:
    """(msgid, msgstr, flags) of every entry of a .po file, the header included."""
    entries, flags, current, key = [], set(), {"msgid": "", "msgstr": ""}, None
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("#,"):
            flags |= {f.strip() for f in line[2:].split(",")}
        elif line.startswith(("msgid ", "msgstr ")):
            key, _, literal = line.partition(" ")
            current[key] = ast.literal_eval(literal)
        elif line.startswith('"') and key:
            current[key] += ast.literal_eval(line)
        elif not line.strip() and key:
            entries.append((current["msgid"], current["msgstr"], flags))
            flags, current, key = set(), {"msgid": "", "msgstr": ""}, None
    return entries


def marked_messages() -> set[str]:
    """Every string literal marked for translation (N_ or _) in the package's code (under
    ``make mutation``, the code as written: not the mutants mutmut adds beside each function)."""
    found = set()
    for path in (ROOT / "bnlit").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and re.search(r"__mutmut_\d+$", node.name):
                node.body = []  # a mutant's strings are no messages of the package
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("N_", "_")
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
    return found


CATALOGS = sorted(LOCALEDIR.glob("*/LC_MESSAGES/bnlit.po"))


def test_there_is_a_japanese_catalog() -> None:
    assert [p.relative_to(LOCALEDIR).as_posix() for p in CATALOGS] == ["ja/LC_MESSAGES/bnlit.po"]
    assert languages() == ("en", "ja")


@pytest.mark.parametrize("po", CATALOGS, ids=[p.parts[-3] for p in CATALOGS])
def test_every_message_is_translated_and_keeps_its_placeholders(po) -> None:
    entries = {msgid: (msgstr, flags) for msgid, msgstr, flags in read_po(po) if msgid}
    assert set(entries) == marked_messages()  # nothing missing, nothing obsolete
    for msgid, (msgstr, flags) in entries.items():
        assert msgstr and "fuzzy" not in flags, msgid
        assert sorted(re.findall(r"\{(\w*)\}", msgstr)) == sorted(re.findall(r"\{(\w*)\}", msgid)), msgid
        if msgid not in HINTS_WITH_CODE:  # numbers are formatted in, never part of a message
            assert not re.search(r"\d", re.sub(r"\{\w*\}", "", msgid)), msgid


# Hints quote code, with its digits (axis=0, N - 1, a1 .. a9, transpose(0, 2, 3, 1)); none is a result.
HINTS_WITH_CODE = {*HINTS.values(), *exercise._HINTS_4D.values(), *exercise._HINTS_PREDICTION.values()}


@pytest.mark.parametrize("po", CATALOGS, ids=[p.parts[-3] for p in CATALOGS])
def test_the_compiled_catalog_holds_what_the_po_says(po) -> None:
    with open(po.with_suffix(".mo"), "rb") as f:
        mo = gettext.GNUTranslations(f)
    compiled = dict(mo._catalog)  # noqa: SLF001 - the whole catalog, to compare
    written = {msgid: msgstr for msgid, msgstr, _flags in read_po(po)}
    # msgfmt leaves POT-Creation-Date out of the compiled header; the rest must be there.
    header = [f for f in written.pop("").splitlines() if not f.startswith("POT-Creation-Date:")]
    assert compiled.pop("").splitlines() == header
    assert compiled == written
    assert mo.info()["language"] == po.parts[-3]


@pytest.mark.packaging
def test_an_installed_wheel_finds_the_catalog(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True)
    (wheel,) = wheels.glob("bnlit-*.whl")
    assert {"bnlit/locale/ja/LC_MESSAGES/bnlit.mo", "bnlit/_i18n.py"} <= set(zipfile.ZipFile(wheel).namelist())
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(target)!r})
        from bnlit._i18n import LOCALEDIR, languages, translation
        from bnlit.exercise import HINTS
        print(LOCALEDIR); print(languages()); print(translation("ja").gettext(HINTS["a1"]))
    """)
    result = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True,
                            cwd=tmp_path, encoding="utf-8")
    where, langs, a1 = result.stdout.splitlines()
    assert where.startswith(str(target)) and langs == "('en', 'ja')"
    assert a1 == "a1 は x_std の勾配で、gamma * dout です。"


def test_translation_catalogs_are_found_here_too() -> None:
    assert translation("ja").gettext(HINTS["a1"]) == "a1 は x_std の勾配で、gamma * dout です。"
    assert translation("en").gettext(HINTS["a1"]) == HINTS["a1"]
