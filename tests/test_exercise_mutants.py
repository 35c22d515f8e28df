"""The exercise checker in the corners a mutation run found untested.

Each test is what a learner would see go wrong: a long or unprintable exception,
a result that is not numbers, a line placed in NumPy instead of the learner's
code, printed arrays that change their look, values a whisker off, a class that
prints or warns without fork. Helpers come from test_exercise.py.
"""

from __future__ import annotations

import faulthandler
import threading

import numpy as np
import pytest

import bnlit.exercise as exercise
from _mutmut_fork import child_calls_count_for_mutmut  # noqa: F401 - autouse, for `make mutation`
from bnlit.exercise import HINTS, check
from test_exercise import BWD2, FWD2, FWD4, HANG_AFTER_VAR, Wrapped, learner_class, line_of

FORWARD_LINE = "def forward(self, x, train_flg=True):\n"


def raising_in_forward(statement: str) -> dict[str, str]:
    """The solution with ``statement`` as the first line of forward."""
    return {FORWARD_LINE: FORWARD_LINE + "        " + statement + "\n"}


# ---------------------------------------------------------------- the exception's text
@pytest.mark.parametrize("length, shown", [
    (300, "x" * 300),  # at the limit: whole
    (301, "x" * 297 + "..."),  # one more: cut to 300 characters, "..." included
    (400, "x" * 297 + "..."),
], ids=["300", "301", "400"])
def test_a_long_exception_message_is_cut_at_300_characters(length, shown) -> None:
    replace = raising_in_forward(f"raise ValueError('x' * {length})")
    report = check(learner_class(replace))
    line = line_of(f"raise ValueError('x' * {length})", replace)
    assert str(report).splitlines()[1] == f"  forward(x, train_flg=True) raised ValueError: {shown} (line {line})"


def test_an_exception_that_cannot_be_printed_is_named() -> None:
    replace = raising_in_forward("raise Unprintable()")
    replace["import numpy as np\n"] = ("import numpy as np\n\n\nclass Unprintable(Exception):\n"
                                       "    def __str__(self):\n        raise RuntimeError('no')\n")
    report = check(learner_class(replace))
    line = line_of("raise Unprintable()", replace)
    assert str(report).splitlines()[1] == (
        f"  forward(x, train_flg=True) raised Unprintable: <Unprintable that cannot be printed> (line {line})")


def test_a_result_that_is_text_is_reported_as_unreadable() -> None:
    class TextOutput(Wrapped):
        def forward(self, x, train_flg=True):
            super().forward(x, train_flg)
            return "oops"

    report = check(TextOutput)
    assert (report.step, report.scenario) == ("out", FWD2)
    got = [line for line in str(report).splitlines() if line.startswith("  got")]
    assert got == ["  got      a str object, which np.asarray could not read "
                   "(ValueError: could not convert string to float: 'oops')"]


def test_a_wrong_result_of_integers_is_read_as_float64() -> None:
    class IntegerOutput(Wrapped):
        def forward(self, x, train_flg=True):
            return np.zeros(np.shape(x), dtype=np.int64).tolist()

    report = check(IntegerOutput)
    assert report.step == "out" and report.actual.dtype == np.float64


# ------------------------------------------------------------ the learner's line, found
# In prediction, x (3 rows) broadcast to the training batch's 4 rows: NumPy's own Python code raises.
NUMPY_RAISES = {"x_mu = x - self.moving_mean  # N x D":
                "x_mu = np.broadcast_to(x, (self.batch_size, x.shape[1])) - self.moving_mean"}


def test_a_subclass_keeps_the_line_in_the_learners_base_class() -> None:
    """The subclass (this file) has no method: the learner's file is found through __mro__."""
    base = learner_class(NUMPY_RAISES)

    class Sub(base):
        pass

    report = check(Sub)
    line = line_of("np.broadcast_to(x, (self.batch_size", NUMPY_RAISES)
    assert str(report).splitlines()[1].endswith(f" (line {line})")


def test_a_property_alone_in_its_file_is_the_learners_code() -> None:
    """The getter is the only function of its file and raises inside NumPy: the line is the getter's."""
    namespace = {"np": np, "Wrapped": Wrapped}
    source = ("class Prop(Wrapped):\n"
              "    @property\n"
              "    def dgamma(self):\n"
              "        return np.broadcast_to(np.zeros(3), (2, 2))\n")
    exec(compile(source, "<property-file>", "exec"), namespace)
    report = check(namespace["Prop"])
    assert (report.step, report.scenario) == ("dgamma", BWD2)
    assert str(report).splitlines()[1].startswith("  layer.dgamma raised ValueError: ")
    assert str(report).splitlines()[1].endswith(" (line 4)")


# ------------------------------------------------------------------ shapes and values
def test_per_channel_values_need_not_be_broadcast_to_rows() -> None:
    replace = {f"{name} = np.broadcast_to({name}, (N, D))\n": "\n" for name in ("std_inv", "a6", "a9")}
    assert check(learner_class(replace)).ok


@pytest.mark.parametrize("mu, got", [
    ("np.mean(x, axis=0)[:, None]", "(3, 1)"),  # broadcasts with (1, 3), to 9 values: wrong
    ("np.mean(x, axis=1)", "(4,)"),  # does not broadcast with (1, 3): wrong
], ids=["column", "rows"])
def test_a_mu_of_the_wrong_shape_is_wrong_even_when_forward_then_raises(mu, got) -> None:
    report = check(learner_class({"mu = np.mean(x, axis=0)  # D values": f"mu = {mu}"}))
    assert (report.step, report.scenario) == ("mu", FWD2)
    assert str(report).splitlines()[0] == "First wrong quantity: mu (2-D input, forward)."
    assert f"  got      shape {got}" in str(report).splitlines()


@pytest.mark.parametrize("expected, actual, same", [
    ([0.0, 0.5], [1.0e-9, 0.5], True),  # atol 1e-9 times max(1, max |expected|) = 1e-9
    ([0.0, 0.5], [1.5e-9, 0.5], False),
    ([0.0, 4.0], [3.9e-9, 4.0], True),  # atol 4e-9: a zero among values of 4 may carry their rounding
    ([0.0, 4.0], [4.5e-9, 4.0], False),
    ([1.0, 2.0], [1.0 + 0.9e-6, 2.0], True),  # rtol 1e-6
    ([1.0, 2.0], [1.0 + 2.1e-6, 2.0], False),
], ids=["zero +1e-9", "zero +1.5e-9", "zero +3.9e-9 among 4", "zero +4.5e-9 among 4", "rtol in", "rtol out"])
def test_the_tolerance_of_a_comparison(expected, actual, same) -> None:
    assert exercise._matches(np.array(actual), np.array(expected)) is same


def test_a_4d_dx_that_is_wrong_in_its_rows_gets_the_dx_hint_not_the_image_hint() -> None:
    """The rows of dx from __backward are wrong, its dout rows right: the step's own hint."""
    s = exercise._scenarios()[1]
    want = exercise._expected(s)
    rec = exercise._Record(locals={(exercise._BACKWARD, "__backward"): {
        "dout": want[exercise._BACKWARD, "dout"], "dx": np.zeros((16, 3))}})
    texts = exercise._Texts(lambda m: m, wrap=False)
    assert exercise._hint(s, rec, want, "dx", exercise._BACKWARD, texts) == HINTS["dx"]
    rec.locals[exercise._BACKWARD, "__backward"]["dx"] = want[exercise._BACKWARD, "rows dx"]
    assert exercise._hint(s, rec, want, "dx", exercise._BACKWARD, texts) == exercise._HINTS_4D["dimage"]


# --------------------------------------------------------------- the arrays as printed
def test_a_4d_report_prints_its_arrays_shortened_and_in_scientific_notation() -> None:
    """48 values are more than 24: the middle rows are left out. The got block spans 1e-3 to 2:
    NumPy's scientific notation (no suppress), 6 digits, whatever print options the caller set."""
    replace = {"x_std = x_mu * std_inv  # N x D": "x_std = x_mu * std_inv + 1e-3 * (x.shape[0] > 4)"}
    with np.printoptions(suppress=True, precision=3, threshold=1000, linewidth=30):  # the caller's own
        report = check(learner_class(replace))
    assert str(report) == """\
First wrong quantity: x_std (4-D input, forward).
  expected shape (16, 3)
      [[ 1.116489  0.       -0.922122]
       [ 1.902463  0.       -0.013294]
       [ 1.270267  0.       -0.844775]
       ...
       [ 0.151108  0.        1.159803]
       [-0.122275  0.        2.191097]
       [ 0.347601  0.        0.296094]]
  got      shape (16, 3)
      [[ 1.117489e+00  1.000000e-03 -9.211220e-01]
       [ 1.903463e+00  1.000000e-03 -1.229403e-02]
       [ 1.271267e+00  1.000000e-03 -8.437749e-01]
       ...
       [ 1.521078e-01  1.000000e-03  1.160803e+00]
       [-1.212745e-01  1.000000e-03  2.192097e+00]
       [ 3.486014e-01  1.000000e-03  2.970942e-01]]
  hint: x_std is x_mu * std_inv: the centred input x_mu, not x, divided by std.
Everything before it is right: mu, x_mu, var, std, std_inv.
The 2-D input passed every check."""
    assert report.unchecked == []


def test_the_epsilon_outside_the_root_in_full() -> None:
    """The constant channel: std is sqrt(1e-8) = 1e-4, against 1e-8 outside the root."""
    report = check(learner_class({"std = np.sqrt(var + epsilon)  # D values": "std = np.sqrt(var) + epsilon"}))
    assert str(report) == """\
First wrong quantity: std (4-D input, forward).
  expected shape (1, 3)
      [[1.170522e+00 1.000000e-04 1.551449e+00]]
  got      shape (3,)
      [1.170522e+00 1.000000e-08 1.551449e+00]
  hint: std is np.sqrt(var + epsilon): epsilon goes inside the square root,
    where it keeps std above zero for a constant column.
Everything before it is right: mu, x_mu, var.
The 2-D input passed every check."""


def test_a_value_that_is_not_an_array_is_shown_as_python_writes_it() -> None:
    texts = exercise._Texts(lambda m: m, wrap=False)
    assert texts.show(None) == "None"
    assert texts.show(3) == "3"


# ---------------------------------------------------------- the child process's setup
ENVIRONMENT = raising_in_forward(
    "import gc, os, faulthandler, warnings; print('gc', gc.isenabled(), 'engine', os.environ.get('BNLIT_ENGINE'), "
    "'faulthandler', faulthandler.is_enabled()); np.float64(1e-300) * np.float64(1e-300); "
    "np.float64(1.0) / np.float64(0.0); warnings.warn('learner warning')")


def test_the_child_runs_the_class_with_numpy_warnings_as_output() -> None:
    """In the child: no garbage collection (pages stay shared), the NumPy engine, no fault
    handler on the caller's stderr; NumPy's floating-point errors (underflow included) and the
    class's own warnings are warnings, never errors, whatever the caller set (here NumPy's
    errstate "raise" and pytest's warnings-as-errors)."""
    with np.errstate(all="raise"):
        report = check(learner_class(ENVIRONMENT))
    assert report.ok, str(report)
    assert report.stdout.count("gc False engine numpy faulthandler False\n") == 4  # training and prediction
    assert faulthandler.is_enabled()  # the caller's own is left alone (pytest turns it on)


def test_without_fork_prints_are_captured_too(monkeypatch) -> None:
    monkeypatch.setattr(exercise, "_forkable", lambda: False)
    prints = raising_in_forward("import sys; print('to stdout'); print('to stderr', file=sys.stderr)")
    report = check(learner_class(prints))
    assert report.ok, str(report)
    lines = report.stdout.splitlines()
    assert lines.count("to stdout") == 4 and lines.count("mu.shape= (4, 3)") == lines.count("mu.shape= (16, 3)") == 1
    assert report.stderr.count("to stderr\n") == 4


def test_without_fork_a_class_that_hangs_in_backward_is_left_behind_as_a_daemon(monkeypatch) -> None:
    monkeypatch.setattr(exercise, "_forkable", lambda: False)
    before = set(threading.enumerate())
    replace = {"a1 = self.gamma * dout  # gradient of x_std": "import time; time.sleep(5)"}
    report = check(learner_class(replace), timeout=0.2)
    assert (report.step, report.scenario) == ("dbeta", BWD2)  # forward's results were right
    assert str(report).splitlines()[:3] == [
        "The class did not finish in time on the 2-D input:",
        "  backward(dout) did not return within 0.2 s",
        "The first quantity that could not be checked is dbeta."]
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left and all(t.daemon for t in left)  # it cannot keep Python from ending


@pytest.mark.parametrize("code", [0, 1])
def test_a_process_that_exits_with_any_code_is_not_said_to_be_killed(code) -> None:
    report = check(learner_class(raising_in_forward(f"import os; os._exit({code})")))
    assert str(report).splitlines()[:2] == [
        "The class ended its process on the 2-D input:",
        f"  forward(x, train_flg=True) ended the process (exit code {code})"]


def test_a_class_that_hangs_in_forward_of_the_4d_input() -> None:
    """The 2-D input passed; the report says so and names the 4-D forward."""
    replace = {HANG_AFTER_VAR: HANG_AFTER_VAR + "\n            if x.shape[0] > 4:\n"
               "                import time; time.sleep(60)"}
    report = check(learner_class(replace), timeout=0.3)
    assert (report.step, report.scenario) == ("std", FWD4)
    assert str(report).splitlines()[-1] == "The 2-D input passed every check."


# ------------------------------------------------- where a failure is placed, and how named
def test_an_exception_without_a_message_is_named_alone() -> None:
    replace = raising_in_forward("raise NotImplementedError")
    report = check(learner_class(replace))
    line = line_of("raise NotImplementedError", replace)
    assert str(report).splitlines()[1] == f"  forward(x, train_flg=True) raised NotImplementedError (line {line})"


def test_a_method_from_another_file_is_placed_at_its_deepest_line() -> None:
    """forward is a static method from a file that holds none of the class's methods (so it is
    not the learner's as far as the class tells): the line is still its own, the deepest one."""
    helpers: dict = {}
    exec(compile("def forward(x, train_flg=True):\n"
                 "    return deeper(x)\n"
                 "\n"
                 "def deeper(x, train_flg=True):\n"
                 "    raise ArithmeticError('from the helper')\n", "<helper-file>", "exec"), helpers)
    cls = type("Static", (Wrapped,), {"forward": staticmethod(helpers["forward"])})
    report = check(cls)
    assert str(report).splitlines()[1] == "  forward(x, train_flg=True) raised ArithmeticError: from the helper (line 5)"
    cls = type("Static", (Wrapped,), {"forward": staticmethod(helpers["deeper"])})  # one frame of its own
    report = check(cls)
    assert str(report).splitlines()[1] == "  forward(x, train_flg=True) raised ArithmeticError: from the helper (line 5)"


def test_a_class_whose_constructor_is_not_python_code_gets_no_line() -> None:
    report = check(dict)
    assert (report.ok, report.step, report.scenario) == (False, "mu", FWD2)
    assert str(report).splitlines()[:2] == [
        "The class raised an exception on the 2-D input:",
        "  dict(gamma, beta) raised TypeError: dict expected at most 1 argument, got 2"]


def test_an_all_clear_with_unchecked_steps_in_full() -> None:
    report = check(Wrapped)
    assert str(report) == """\
All clear: 6 quantities match bnlit on the 2-D and 4-D inputs (out, moving_mean,
moving_var, dbeta, dgamma, dx).
Prediction on a batch of another size is right too, and the moving statistics
keep their shape.
Not checked, because the class has no local variable of that name: mu, x_mu,
var, std, std_inv, x_std, a1, a2, a3, a4, a5, a6, a7, a8, a9. The public results
(out, moving statistics, dgamma, dbeta, dx) were checked instead."""


def test_printed_output_keeps_its_spaces_and_loses_only_the_last_newline() -> None:
    prints = raising_in_forward("import sys; print('\\tindented  ', file=sys.stderr); print('TAX', file=sys.stderr)")
    report = check(learner_class(prints), show_output=True)
    assert str(report).split("What the class printed to stderr:\n")[1] == "\n".join(["  \tindented  ", "  TAX"] * 4)


# ------------------------------------------------------ output below Python, and the alarm
def test_the_child_captures_its_own_file_descriptors_only(capfd) -> None:
    """What the caller wrote to its fd 1 and 2 before the check stays the caller's."""
    import os

    os.write(1, b"caller out\n")
    os.write(2, b"caller err\n")
    writes = raising_in_forward("import os; os.write(1, b'fd 1\\xff\\n'); os.write(2, b'fd 2\\n')")
    report = check(learner_class(writes))
    assert report.ok
    assert report.stdout.count("fd 1\ufffd\n") == 4 and "caller" not in report.stdout  # invalid UTF-8 replaced
    assert report.stderr == "fd 2\n" * 4
    assert capfd.readouterr() == ("caller out\n", "caller err\n")


def test_output_longer_than_one_read_is_kept_whole() -> None:
    report = check(learner_class(raising_in_forward("import os; os.write(1, b'y' * 70000)")))
    assert report.stdout.count("y") == 4 * 70000 and report.stdout.count("y" * 140000) == 2  # 2 calls per input


def test_a_result_whose_conversion_never_ends_is_stopped_in_the_checkers_own_code() -> None:
    """The alarm rings while the checker reads the prediction (its __array__ sleeps): the
    prediction's call is named, with no line of the checker's."""
    class Slow:
        def __array__(self, dtype=None, copy=None):
            import time
            time.sleep(60)

    class SlowPrediction(Wrapped):
        def forward(self, x, train_flg=True):
            out = super().forward(x, train_flg)
            return out if train_flg else Slow()

    report = check(SlowPrediction, timeout=0.3)
    assert (report.step, report.scenario, report.unchecked) == (
        "x_mu", "2-D input, prediction on a batch of another size", [])  # no local names: the first step
    assert str(report).splitlines()[:3] == [
        "The class did not finish in time on the 2-D input:",
        "  forward(x, train_flg=False) did not return within 0.3 s",
        "The first quantity that could not be checked is x_mu."]


def test_a_property_that_calls_sys_exit_is_reported_at_its_step() -> None:
    class Leaving(Wrapped):
        @property
        def moving_var(self):
            import sys
            sys.exit(4)

    report = check(Leaving)
    assert (report.step, report.scenario) == ("moving_var", FWD2)
    line = Leaving.moving_var.fget.__code__.co_firstlineno + 3
    assert str(report).splitlines()[:3] == [
        "The class tried to end the Python process on the 2-D input:",
        f"  layer.moving_var called sys.exit(4) (line {line}: sys.exit(4))",
        "The first quantity that could not be checked is moving_var."]


def test_a_property_that_ends_the_process_is_reported_at_its_step() -> None:
    class Ending(Wrapped):
        @property
        def moving_mean(self):
            import os
            os._exit(3)

    report = check(Ending)
    assert (report.step, report.scenario) == ("moving_mean", FWD2)  # out was right
    assert str(report).splitlines()[:3] == [
        "The class ended its process on the 2-D input:",
        "  layer.moving_mean ended the process (exit code 3)",
        "The first quantity that could not be checked is moving_mean."]


# ------------------------------------------------------------ how the class is called
def test_training_is_asked_for_by_name_whatever_the_default() -> None:
    class PredictsByDefault(Wrapped):
        def forward(self, x, train_flg=False):
            return super().forward(x, train_flg)

    assert check(PredictsByDefault).ok


def test_the_child_is_forked_whatever_start_method_the_caller_chose() -> None:
    """A class from a notebook cell cannot be pickled to a spawned process: the checker forks."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        assert check(learner_class()).ok
    finally:
        multiprocessing.set_start_method(before, force=True)


def test_a_class_that_ignores_the_time_limit_in_backward_is_named_at_backward() -> None:
    replace = {"a1 = self.gamma * dout  # gradient of x_std": "import signal, time; "
               "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM}); time.sleep(60)"}
    report = check(learner_class(replace), timeout=0.2)
    assert (report.step, report.scenario) == ("dbeta", BWD2)
    assert str(report).splitlines()[:2] == [
        "The class did not finish in time on the 2-D input:",
        "  backward(dout) did not return within 0.2 s"]


# ------------------------------------------------------------------ the fixed inputs
def test_the_scenarios_are_the_documented_inputs() -> None:
    """The inputs every report is computed on (the golden reports and the book's exercise page
    show them), written out: the seed's 4 x 3 input, 3 rows to predict on, a 2 x 3 x 2 x 4 image
    batch with a constant channel 1, random dout rounded to 2 decimals from seed 2024."""
    rng = np.random.default_rng(2024)
    x4 = rng.normal(2.0, 1.5, size=(2, 3, 2, 4)).round(2)
    x4_new = rng.normal(2.0, 1.5, size=(1, 3, 3, 2)).round(2)
    x4[:, 1] = x4_new[:, 1] = 0.0
    dout2 = rng.normal(size=(4, 3)).round(2)
    dout4 = rng.normal(size=(2, 3, 2, 4)).round(2)
    two, four = exercise._scenarios()
    assert (two.ndim, four.ndim) == (2, 4)
    np.testing.assert_array_equal(two.x, [[1, 2, 3], [2, 3, 2], [3, 5, 4], [4, 1, 3]])
    np.testing.assert_array_equal(two.x_new, [[2, 1, 4], [0, 4, 3], [5, 2, 2]])
    for s in (two, four):
        np.testing.assert_array_equal(s.gamma, [1.5, 0.5, 2.0])
        np.testing.assert_array_equal(s.beta, [0.1, -0.2, 0.3])
    np.testing.assert_array_equal(two.dout, dout2)
    np.testing.assert_array_equal(four.x, x4)
    np.testing.assert_array_equal(four.x_new, x4_new)
    np.testing.assert_array_equal(four.dout, dout4)
    assert np.ptp(four.x[:, 1]) == 0 and np.ptp(four.x[:, 0]) > 0 and np.ptp(four.x[:, 2]) > 0


def test_the_default_time_limit_and_a_language_that_is_not_text() -> None:
    import inspect

    assert inspect.signature(check).parameters["timeout"].default == 5.0  # as documented
    with pytest.raises(TypeError) as info:
        check(learner_class(), lang=1)
    assert str(info.value) == "lang must be a language code such as 'en' or 'ja'; got int"
