"""A step-by-step checker for the course notebook's exercise.

The notebook asks learners to fill in a ``BatchNormalization`` class whose
private ``__forward`` and ``__backward`` compute the graph's nodes as local
variables (``mu``, ``x_mu``, ..., ``a1`` .. ``a9``). :func:`check` uses such a
class as a network would, on a small 2-D and a small 4-D input: a training
forward, a prediction on a batch of another size, a backward. It reads the
local variables as each method returns and reports, in the order of the
computational graph, the first quantity that differs from bnlit, with the
expected and the actual values and a hint.

>>> from bnlit.exercise import check
>>> report = check(MyBatchNormalization)        # doctest: +SKIP
>>> report.ok, report.step                      # doctest: +SKIP
(False, 'a7')

``str(report)`` is the message to read; ``check(cls, lang="ja")`` writes it in
Japanese. The learner's code runs in a child process (on systems with
``fork``) under a time limit, so a class that loops forever, prints, or ends
the process gets a report too, and the caller's process is left alone.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import io
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Optional, Union

import numpy as np

from ._i18n import N_, translation
from .graph import staged_backward, staged_forward
from .layer import BatchNormalization

__all__ = ["STEPS", "HINTS", "Report", "check"]

#: Every quantity the checker compares, in the order of the computational graph.
STEPS = (
    "mu", "x_mu", "var", "std", "std_inv", "x_std", "out", "moving_mean", "moving_var",
    "dbeta", "dgamma", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "dx",
)

#: One line per step: what it computes (English; ``check(cls, lang=...)`` translates).
HINTS = {
    "mu": N_("mu is the mean of x over the batch, np.mean(x, axis=0): one value per column."),
    "x_mu": N_("x_mu is x - mu: the centred input, shape (N, D)."),
    "var": N_("var is the mean of x_mu**2 over axis 0 (divide by N, not N - 1)."),
    "std": N_("std is np.sqrt(var + epsilon): epsilon goes inside the square root, where it keeps "
              "std above zero for a constant column."),
    "std_inv": N_("std_inv is 1 / std, with the std just computed (epsilon included)."),
    "x_std": N_("x_std is x_mu * std_inv: the centred input x_mu, not x, divided by std."),
    "out": N_("out is gamma * x_std + beta."),
    "moving_mean": N_("moving_mean = rho * moving_mean + (1 - rho) * mu, with the D values of mu "
                      "(mu[0] once mu is broadcast to (N, D)): rho weights the old value, and "
                      "moving_mean keeps its shape (D,)."),
    "moving_var": N_("moving_var = rho * moving_var + (1 - rho) * var, with the D values of var: "
                     "rho weights the old value, and moving_var keeps its shape (D,)."),
    "dbeta": N_("dbeta is dout summed over axis 0: np.sum(dout, axis=0), a sum, not a mean."),
    "dgamma": N_("dgamma is (x_std * dout) summed over axis 0."),
    "a1": N_("a1, the gradient of x_std, is gamma * dout."),
    "a2": N_("a2, the gradient of x_mu along the first path, is a1 * std_inv (that is, a1 / std)."),
    "a3": N_("a3, the gradient of std_inv, is (a1 * x_mu) summed over axis 0: one value per column."),
    "a4": N_("a4, the gradient of std, is -a3 / std**2 (the derivative of 1/std)."),
    "a5": N_("a5, the gradient of var, is 0.5 * a4 / std (the derivative of sqrt(var + epsilon))."),
    "a6": N_("a6, the gradient of x_mu**2, is a5 / N for every row."),
    "a7": N_("a7, the gradient of x_mu along the second path, is 2 * x_mu * a6."),
    "a8": N_("a8, the gradient of mu, is -(a2 + a7) summed over axis 0."),
    "a9": N_("a9, the gradient of x through mu, is a8 / N for every row."),
    "dx": N_("dx adds the three paths: a2 + a7 + a9."),
}

# Hints for mistakes that only 4-D input shows: the reshaping around __forward / __backward.
_HINTS_4D = {
    "rows": N_("On 4-D input, forward hands __forward one row per pixel: first x.transpose(0, 2, 3, 1) "
               "moves the channels last, then x.reshape(N*H*W, C). Reshaping without the transpose "
               "mixes the channels."),
    "image": N_("On 4-D input, forward turns the rows back into an image: out.reshape(N, H, W, C), "
                "then out.transpose(0, 3, 1, 2) back to (N, C, H, W)."),
    "drows": N_("On 4-D input, backward hands __backward one row per pixel, as forward does with x: "
                "dout.transpose(0, 2, 3, 1), then dout.reshape(N*H*W, C)."),
    "dimage": N_("On 4-D input, backward turns the rows of dx back into an image: dx.reshape(N, H, W, C), "
                 "then dx.transpose(0, 3, 1, 2)."),
}
# Hints for the prediction branch (train_flg=False).
_HINTS_PREDICTION = {
    "x_mu": N_("In prediction, x_mu is x - moving_mean: the moving mean, not this batch's mean, "
               "and nothing of the training batch's size (the batch may have any number of rows)."),
    "x_std": N_("In prediction, x_std is x_mu / np.sqrt(moving_var + epsilon)."),
    "out": N_("In prediction, out is gamma * x_std + beta, with x_std from the moving mean and variance."),
}

_FORWARD_LOCALS = ("mu", "x_mu", "var", "std", "std_inv", "x_std")
_BACKWARD_LOCALS = tuple(f"a{k}" for k in range(1, 10))
_RECORDED = {  # the local variables read as each private method returns
    "__forward": ("x",) + _FORWARD_LOCALS + ("out",),
    "__backward": ("dout", "dbeta", "dgamma") + _BACKWARD_LOCALS + ("dx",),
}
_EPSILON = 1e-8  # the notebook's default
_RHO = 0.9
_RTOL = 1e-6  # tight: a learner's epsilon=1e-5 must show at std, not further down the graph
_GRACE = 1.0  # seconds a child gets, after its own alarm, to send what it recorded

# The calls of one scenario, in order; a quantity belongs to the call that computes it.
_BUILD, _TRAIN, _PREDICT, _BACKWARD = 0, 1, 2, 3
_CALLS = ("{name}(gamma, beta)", "forward(x, train_flg=True)", "forward(x, train_flg=False)", "backward(dout)")


@dataclass
class Report:
    """What :func:`check` found.

    Attributes
    ----------
    ok : bool
        True when every quantity that could be compared matched.
    step : str or None
        The notebook's name of the first wrong quantity, one of :data:`STEPS`,
        or None when all is right. A mistake in the prediction branch is
        located at ``x_mu``, ``x_std`` or ``out`` with a ``scenario`` that
        says "prediction".
    scenario : str or None
        Which input and which pass revealed it ("2-D input, forward", ...),
        in the report's language.
    expected, actual : ndarray or None
        The values compared at ``step`` (``actual`` as read from the class).
    unchecked : list of str
        Intermediates that could not be read (named differently in the class).
    message : str
        The report to read (also ``str(report)``).
    stdout, stderr : str
        Everything the class printed; shown in ``message`` only with
        ``check(..., show_output=True)``.
    """

    ok: bool
    step: Optional[str] = None
    scenario: Optional[str] = None
    expected: Optional[np.ndarray] = None
    actual: Optional[Any] = None
    unchecked: list[str] = field(default_factory=list)
    message: str = ""
    stdout: str = ""
    stderr: str = ""

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------ running the learner's class
class _TimeLimit(BaseException):
    """Raised into the learner's code when its scenario runs out of time
    (a BaseException, so that the learner's ``except Exception`` does not swallow it)."""


@dataclass(frozen=True)
class _Failure:
    """A call of the learner's class that did not return normally."""

    kind: str  # "raised", "exit", "timeout", "died"
    call: str  # what was called: "forward(x, train_flg=True)", "layer.moving_mean", ...
    exception: str = ""  # "NameError: name 'N' is not defined"; for sys.exit, repr of its code
    line: Optional[int] = None  # where in the learner's code, when known
    code: str = ""  # that line's source, when available
    status: Optional[int] = None  # a process that died: its exit code, or -signal


@dataclass(frozen=True)
class _Opaque:
    """A value that np.asarray could not turn into numbers."""

    type: str
    error: str


_Value = Union[np.ndarray, _Opaque, _Failure, None]


@dataclass
class _Record:
    """What one scenario's calls returned and left behind, as plain data only:
    nothing of the learner's (no object, no exception) crosses into the caller."""

    calls: list[str] = field(default_factory=list)  # every call started, the last one last
    locals: dict[tuple[int, str], dict[str, _Value]] = field(default_factory=dict)  # (call, method)
    values: dict[str, _Value] = field(default_factory=dict)  # public results and attributes
    failure: Optional[_Failure] = None
    stdout: str = ""
    stderr: str = ""


def _text(obj: object, limit: int = 300) -> str:
    """str(obj), shortened, and never raising (a learner's __str__ may)."""
    try:
        text = str(obj)
    except Exception:  # noqa: BLE001 - any failure of a learner's __str__
        text = f"<{type(obj).__name__} that cannot be printed>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sanitized(value: Any) -> _Value:
    """The learner's value as a float64 array (a copy), or a description of why not."""
    if value is None:
        return None
    try:
        return np.array(value, dtype=np.float64)
    except _TimeLimit:
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a learner's __array__ may raise anything
        return _Opaque(type(value).__name__, f"{type(err).__name__}: {_text(err)}")


def _failure(kind: str, call: str, err: BaseException, learner_files: frozenset[str]) -> _Failure:
    """Describe ``err``, placed at the last line of the learner's own code it passed through."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if f.filename in learner_files]
    last = own[-1] if own else (frames[-1] if frames and frames[-1].filename != __file__ else None)
    if isinstance(err, SystemExit):  # shown as the call the learner wrote: sys.exit(3)
        exception = _text(repr(err.code))
    elif isinstance(err, _TimeLimit):
        exception = ""
    else:
        message = _text(err)
        exception = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return _Failure(kind, call, exception, None if last is None else last.lineno,
                    "" if last is None else (last.line or "").strip())


def _learner_files(cls: type) -> frozenset[str]:
    """The source files of the class's own methods (a notebook cell has one too)."""
    files = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        for attr in vars(klass).values():
            func = getattr(attr, "fget", attr)  # properties too
            code = getattr(func, "__code__", None)
            if code is not None:
                files.add(code.co_filename)
    files.discard(__file__)
    return frozenset(files)


@contextlib.contextmanager
def _recording_locals(record: _Record, call: int) -> Iterator[None]:
    """Copy the local variables of ``__forward`` / ``__backward`` as they return
    (also when they return by raising), for the call numbered ``call``."""

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        names = _RECORDED.get(frame.f_code.co_name) if event == "return" else None
        key = (call, frame.f_code.co_name)
        if names is not None and key not in record.locals:
            found = frame.f_locals
            record.locals[key] = {name: _sanitized(found[name]) for name in names if name in found}

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


class _Player:
    """Plays one scenario on a fresh instance of the learner's class, recording everything."""

    def __init__(self, cls: type, scenario: _Scenario, record: _Record, started: Callable[[_Record], None]):
        self.cls, self.s, self.record, self.started = cls, scenario, record, started
        self.files = _learner_files(cls)

    def call(self, number: int, label: str, fn: Callable[[], Any]) -> Any:
        self.record.calls.append(label)
        try:
            self.started(self.record)
            with _recording_locals(self.record, number):
                return fn()
        except _TimeLimit as err:
            self.record.failure = _failure("timeout", label, err, self.files)
        except SystemExit as err:
            self.record.failure = _failure("exit", label, err, self.files)
        except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
            self.record.failure = _failure("raised", label, err, self.files)
        return None

    def read(self, layer: Any, name: str) -> None:
        """Read ``layer.<name>`` (a learner's property may raise: that is a result too)."""
        label = f"layer.{name}"
        self.record.calls.append(label)
        try:
            self.started(self.record)
            self.record.values[name] = _sanitized(getattr(layer, name))
        except _TimeLimit as err:
            self.record.failure = _failure("timeout", label, err, self.files)
        except SystemExit as err:
            self.record.failure = _failure("exit", label, err, self.files)
        except Exception as err:  # noqa: BLE001
            self.record.values[name] = _failure("raised", label, err, self.files)

    def play(self) -> None:
        s, rec = self.s, self.record
        name = getattr(self.cls, "__name__", "cls")
        layer = self.call(_BUILD, _CALLS[_BUILD].format(name=name), lambda: self.cls(s.gamma.copy(), s.beta.copy()))
        steps: list[tuple[int, str, Callable[[], Any], tuple[str, ...]]] = [
            (_TRAIN, "out", lambda: layer.forward(s.x.copy(), train_flg=True), ("moving_mean", "moving_var")),
            (_PREDICT, "predict", lambda: layer.forward(s.x_new.copy(), train_flg=False), ()),
            (_BACKWARD, "dx", lambda: layer.backward(s.dout.copy()), ("dbeta", "dgamma")),
        ]
        for number, result, fn, attributes in steps:
            if rec.failure is not None:
                return
            value = self.call(number, _CALLS[number], fn)
            if rec.failure is not None:
                return
            rec.values[result] = _sanitized(value)
            for attribute in attributes:
                self.read(layer, attribute)
                if rec.failure is not None:
                    return


def _raise_time_limit(signum: int, frame: Optional[FrameType]) -> None:
    raise _TimeLimit()


def _child(cls: type, scenarios: tuple[_Scenario, ...], seconds: float, conn: Any) -> None:
    """The child process: play each scenario under its own alarm and send its record;
    never write to the caller's streams."""
    gc.disable()  # a full collection would touch, and so copy, every page the child shares with its parent
    # A learner's class may wrap bnlit: in a forked child, the compiled engine's threads
    # (OpenMP) would hang once the parent has started them, so layers here use NumPy.
    os.environ["BNLIT_ENGINE"] = "numpy"
    faulthandler.disable()  # a crash is reported by its exit status, not on the caller's stderr
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    for fd, file in zip((1, 2), files):  # output below Python's sys.stdout (C code, os.write)
        os.dup2(file.fileno(), fd)
    warnings.resetwarnings()  # the learner's warnings are output, not errors
    np.seterr(all="warn")
    quiet = {signal.SIGALRM}

    def send(message: tuple[str, Any]) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, quiet)  # never cut a message in half
        try:
            conn.send(message)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, quiet)

    signal.signal(signal.SIGALRM, _raise_time_limit)
    for scenario in scenarios:
        record = _Record()
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            _Player(cls, scenario, record, lambda so_far: send(("call", so_far))).play()
        except _TimeLimit as err:  # the alarm rang in the checker's own code, between two calls
            record.failure = _failure("timeout", record.calls[-1] if record.calls else "", err, frozenset())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        record.stdout = str(sys.stdout.getvalue()) + _drained(1)
        record.stderr = str(sys.stderr.getvalue()) + _drained(2)
        send(("record", record))
        if record.failure is not None:
            break
    conn.close()


def _drained(fd: int) -> str:
    """What was written to ``fd`` (a temporary file) since it was last drained."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return b"".join(chunks).decode("utf-8", "replace")


def _forkable() -> bool:
    """A child process can inherit the learner's class (even one from a notebook cell)."""
    return "fork" in multiprocessing.get_all_start_methods() and hasattr(signal, "setitimer")


def _records_from_child(cls: type, scenarios: tuple[_Scenario, ...], seconds: float) -> Generator[_Record, None, None]:
    """One child process plays every scenario; each record is yielded as it arrives, and the
    child is killed when the caller stops asking (at the first mistake) or it runs out of time."""
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(cls, scenarios, seconds, writer), daemon=True)
    with warnings.catch_warnings():  # Python 3.12+ warns about fork in a threaded process
        warnings.filterwarnings("ignore", r".*fork\(\) may lead to deadlocks", DeprecationWarning)
        child.start()
    writer.close()
    try:
        for _scenario in scenarios:
            so_far = _Record()  # what the child had recorded when it started its latest call
            record: Optional[_Record] = None
            deadline = time.monotonic() + seconds + _GRACE
            while record is None:
                left = deadline - time.monotonic()
                if left <= 0 or not reader.poll(left):
                    # It ignored its own alarm (a bare except:, or C code that never returned).
                    so_far.failure = _Failure("timeout", so_far.calls[-1] if so_far.calls else "")
                    yield so_far
                    return
                try:
                    kind, payload = reader.recv()
                except (EOFError, OSError):  # the child ended without a record
                    child.join()
                    so_far.failure = _Failure("died", so_far.calls[-1] if so_far.calls else "",
                                              status=child.exitcode)
                    yield so_far
                    return
                if kind == "call":
                    so_far = payload
                else:
                    record = payload
            yield record
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        reader.close()


def _run_in_thread(cls: type, scenario: _Scenario, seconds: float) -> _Record:
    """Where there is no fork: a thread, which cannot be stopped, only left behind."""
    record = _Record()
    out, err = io.StringIO(), io.StringIO()

    def play() -> None:
        with np.errstate(all="warn"):
            _Player(cls, scenario, record, lambda so_far: None).play()

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        worker = threading.Thread(target=play, daemon=True)
        worker.start()
        worker.join(seconds)
    if worker.is_alive():
        record = _Record(list(record.calls), dict(record.locals), dict(record.values),
                         _Failure("timeout", record.calls[-1] if record.calls else ""))
    record.stdout, record.stderr = out.getvalue(), err.getvalue()
    return record


def _records(cls: type, scenarios: tuple[_Scenario, ...], seconds: float) -> Generator[_Record, None, None]:
    """The record of each scenario, in order, from a child process or else from threads."""
    if _forkable():
        yield from _records_from_child(cls, scenarios, seconds)
    else:
        for scenario in scenarios:
            yield _run_in_thread(cls, scenario, seconds)


# ------------------------------------------------------------------- the reference
@dataclass(frozen=True)
class _Scenario:
    """One use of the class: train on ``x``, predict on ``x_new`` (another batch size), backward."""

    ndim: int
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dout: np.ndarray
    x_new: np.ndarray


def _scenarios() -> tuple[_Scenario, ...]:
    """Fixed inputs. dout is random, not x/10 (that hides bugs); every column has its own
    statistics; N differs from D and W from C, so that a wrong axis cannot go unseen; the
    4-D input has a constant channel (a unit a ReLU switched off), where epsilon matters."""
    rng = np.random.default_rng(2024)
    x2 = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 2.0], [3.0, 5.0, 4.0], [4.0, 1.0, 3.0]])
    x2_new = np.array([[2.0, 1.0, 4.0], [0.0, 4.0, 3.0], [5.0, 2.0, 2.0]])
    x4 = rng.normal(2.0, 1.5, size=(2, 3, 2, 4)).round(2)
    x4_new = rng.normal(2.0, 1.5, size=(1, 3, 3, 2)).round(2)
    x4[:, 1] = x4_new[:, 1] = 0.0
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, -0.2, 0.3])
    return (
        _Scenario(2, x2, gamma, beta, rng.normal(size=x2.shape).round(2), x2_new),
        _Scenario(4, x4, gamma, beta, rng.normal(size=x4.shape).round(2), x4_new),
    )


#: Reference values already computed, by the scenario's inputs (they never change).
_EXPECTED: dict[bytes, dict[tuple[int, str], np.ndarray]] = {}


def _expected(s: _Scenario) -> dict[tuple[int, str], np.ndarray]:
    """Reference values, keyed by (call, name): the intermediates from bnlit's staged
    graph in the notebook's (N, D) layout, the public results from bnlit's layer.
    Computed once per scenario and process. (The lookup and the computation are one
    function on purpose: `make mutation` ties a test to the functions it calls, so every
    checker test is tied to this one, not only the first to compute a scenario.)"""
    key = b"|".join(np.ascontiguousarray(a, dtype=np.float64).tobytes() + str(a.shape).encode()
                    for a in (s.x, s.gamma, s.beta, s.dout, s.x_new))
    if key in _EXPECTED:
        return _EXPECTED[key]

    def _to_rows(a: np.ndarray) -> np.ndarray:  # the notebook's view: (N, C, H, W) -> (N*H*W, C)
        return a if a.ndim == 2 else a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])

    f = staged_forward(_to_rows(s.x), s.gamma, s.beta, _EPSILON)
    b = staged_backward(f, _to_rows(s.dout))
    want: dict[tuple[int, str], np.ndarray] = {(_TRAIN, name): getattr(f, name) for name in _FORWARD_LOCALS}
    want |= {(_BACKWARD, name): getattr(b, name) for name in _BACKWARD_LOCALS}
    want[_TRAIN, "x"], want[_TRAIN, "rows out"] = _to_rows(s.x), f.out
    want[_BACKWARD, "dout"], want[_BACKWARD, "rows dx"] = _to_rows(s.dout), b.dx
    layer = BatchNormalization(s.gamma, s.beta, _RHO, epsilon=_EPSILON, engine="numpy")  # fork-safe, and tiny inputs
    want[_TRAIN, "out"] = layer.forward(s.x, train_flg=True)
    want[_TRAIN, "moving_mean"] = np.asarray(layer.moving_mean)
    want[_TRAIN, "moving_var"] = np.asarray(layer.moving_var)
    predicted = layer.forward(s.x_new, train_flg=False)
    want[_PREDICT, "out"], want[_PREDICT, "rows out"] = predicted, _to_rows(predicted)
    want[_PREDICT, "x_mu"] = _to_rows(s.x_new) - want[_TRAIN, "moving_mean"]
    want[_PREDICT, "x_std"] = (_to_rows(predicted) - s.beta) / s.gamma  # out = gamma * x_std + beta
    want[_BACKWARD, "dx"] = layer.backward(s.dout)
    want[_BACKWARD, "dgamma"], want[_BACKWARD, "dbeta"] = np.asarray(layer.dgamma), np.asarray(layer.dbeta)
    _EXPECTED[key] = want
    return want


def _matches(actual: _Value, expected: np.ndarray) -> bool:
    """Same values, allowing per-channel results as (D,), (1, D) or broadcast to (N, D)."""
    if not isinstance(actual, np.ndarray):
        return False
    try:
        shape = np.broadcast_shapes(actual.shape, expected.shape)
    except ValueError:
        return False
    if math.prod(shape) != max(actual.size, expected.size):  # e.g. (D, 1) against (1, D)
        return False
    scale = max(1.0, float(np.max(np.abs(expected))))
    a, e = np.broadcast_arrays(actual, expected)
    return bool(np.allclose(a, e, rtol=_RTOL, atol=1e-9 * scale))


# ------------------------------------------------------------------------- the check
def check(cls: type, *, lang: str = "en", timeout: float = 5.0, show_output: bool = False) -> Report:
    """Use a learner's ``BatchNormalization`` class as a network would and locate its first mistake.

    The class must follow the notebook's interface:
    ``cls(gamma, beta)``, ``forward(x, train_flg=True)``, ``backward(dout)``,
    with attributes ``moving_mean``, ``moving_var``, ``dgamma`` and ``dbeta``.
    For a 2-D and then a 4-D input, a fresh instance is trained on one batch,
    predicts on a batch of another size, and runs backward. Its intermediates
    are read from the local variables of ``__forward`` and ``__backward``
    under the notebook's names; where a name is missing, only the public
    results are compared. The moving statistics must keep their shape (D,).

    Each input runs in a child process where ``fork`` exists (Linux, macOS),
    else in a thread: a class that hangs, raises, calls ``sys.exit`` or
    crashes gets a report that names the call it was in.

    Parameters
    ----------
    cls : type
        The learner's class itself (not an instance of it).
    lang : str, default "en"
        Language of the report and hints: ``"en"`` or ``"ja"``.
    timeout : float, default 5.0
        Seconds each input may take (construction, forward, prediction,
        backward together) before the call still running is reported.
    show_output : bool, default False
        Append what the class printed (stdout and stderr) to the message.
        It is always kept in ``report.stdout`` and ``report.stderr``.

    Returns
    -------
    Report
        ``report.ok``, ``report.step`` (first wrong quantity, or None) and
        ``str(report)``, the message to read.

    Raises
    ------
    TypeError
        ``cls`` is not a class (for example an instance of one, or None), or
        ``timeout`` is not a number.
    ValueError
        ``lang`` has no catalog, or ``timeout`` is not a positive number of seconds.
    """
    if not isinstance(lang, str):
        raise TypeError(f"lang must be a language code such as 'en' or 'ja'; got {type(lang).__name__}")
    _ = translation(lang).gettext
    if not isinstance(cls, type):
        if cls is None:
            what = _("got None")
        elif hasattr(type(cls), "forward"):
            what = _("got an instance of {name}: pass the class, not an object made from it").format(
                name=type(cls).__name__)
        else:
            what = _("got a value of type {type}").format(type=type(cls).__name__)
        raise TypeError(_("check expects a class, for example check(BatchNormalization); {what}").format(what=what))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds; got {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")

    texts = _Texts(_, wrap=lang == "en")
    unchecked: list[str] = []
    outputs: list[tuple[str, str]] = []
    report: Optional[Report] = None
    passed: list[int] = []
    scenarios = _scenarios()
    with contextlib.closing(_records(cls, scenarios, float(timeout))) as records:
        for scenario, record in zip(scenarios, records):
            outputs.append((record.stdout, record.stderr))
            report = _examine(scenario, record, _expected(scenario), unchecked, texts, float(timeout), passed)
            if report is not None:
                break
            passed.append(scenario.ndim)
    if report is None:
        report = Report(True, unchecked=unchecked,
                        message=texts.all_clear(unchecked, [s.ndim for s in scenarios]))
    report.stdout = "".join(out for out, _err in outputs)
    report.stderr = "".join(err for _out, err in outputs)
    if show_output:
        report.message += texts.output(report.stdout, report.stderr)
    return report


# The quantities of one scenario in the order they are checked: (step, call, where it is read).
_ORDER: tuple[tuple[str, int, str], ...] = (
    *((step, _TRAIN, "local") for step in _FORWARD_LOCALS),
    ("out", _TRAIN, "value"),
    ("moving_mean", _TRAIN, "moving"),
    ("moving_var", _TRAIN, "moving"),
    ("x_mu", _PREDICT, "local"),
    ("x_std", _PREDICT, "local"),
    ("out", _PREDICT, "value"),
    ("dbeta", _BACKWARD, "value"),
    ("dgamma", _BACKWARD, "value"),
    *((step, _BACKWARD, "local") for step in _BACKWARD_LOCALS),
    ("dx", _BACKWARD, "value"),
)
_METHOD = {_TRAIN: "__forward", _PREDICT: "__forward", _BACKWARD: "__backward"}


def _examine(s: _Scenario, rec: _Record, want: dict[tuple[int, str], np.ndarray],
             unchecked: list[str], texts: _Texts, seconds: float, passed: list[int]) -> Optional[Report]:
    """The report on the first wrong quantity of one scenario, or None when all is right."""
    failed = _failed_call(rec)
    for index, (step, call, source) in enumerate(_ORDER):
        where = texts.where(s.ndim, call)
        right = [st for st, c, _src in _ORDER[:index] if c != _PREDICT and st not in unchecked]
        found = _locals(rec, call) if source == "local" else rec.values
        key = "predict" if (call, step) == (_PREDICT, "out") else step
        # This call did not return: what its method computed before is checked, the rest is not.
        cut_short = failed is not None and (call > failed[0] or (call == failed[0] and not failed[1]))
        if cut_short and step in ("dbeta", "dgamma"):  # computed in __backward before it stopped, maybe
            found = _locals(rec, call)
        if key not in found:
            if cut_short or source != "local":  # a result never returned, or never read
                return texts.stopped(rec, step, call, s.ndim, seconds, passed)
            if call != _PREDICT and step not in unchecked:
                unchecked.append(step)
            continue
        actual = found[key]
        if isinstance(actual, _Failure):
            return texts.stopped(rec, step, call, s.ndim, seconds, passed, actual)
        expected = want[call, step]
        hint = _hint(s, rec, want, step, call, texts)
        if source == "moving" and isinstance(actual, np.ndarray) and actual.shape != expected.shape:
            return texts.wrong(step, where, expected, actual, hint, right, passed, shape=True)
        if not _matches(actual, expected):
            return texts.wrong(step, where, expected, actual, hint, right, passed)
    return None


def _failed_call(rec: _Record) -> Optional[tuple[int, bool]]:
    """The number of the call that did not return, if one did not, and whether it was
    the reading of an attribute after that call (which itself returned)."""
    if rec.failure is None:
        return None
    labels = [c for c in rec.calls if not c.startswith("layer.")]
    return max(len(labels) - 1, 0), rec.failure.call.startswith("layer.")


def _locals(rec: _Record, call: int) -> dict[str, _Value]:
    return rec.locals.get((call, _METHOD.get(call, "")), {})


def _hint(s: _Scenario, rec: _Record, want: dict[tuple[int, str], np.ndarray],
          step: str, call: int, texts: _Texts) -> str:
    """The hint that points at the cause: a 4-D reshaping, the prediction branch, or the step."""
    if s.ndim == 4:
        mine = _locals(rec, call)
        if call == _TRAIN and "x" in mine and not _matches(mine["x"], want[_TRAIN, "x"]):
            return texts.gettext(_HINTS_4D["rows"])
        if call == _BACKWARD and "dout" in mine and not _matches(mine["dout"], want[_BACKWARD, "dout"]):
            return texts.gettext(_HINTS_4D["drows"])
        if step == "out" and "out" in mine and _matches(mine["out"], want[call, "rows out"]):
            return texts.gettext(_HINTS_4D["image"])
        if step == "dx" and "dx" in mine and _matches(mine["dx"], want[_BACKWARD, "rows dx"]):
            return texts.gettext(_HINTS_4D["dimage"])
    if call == _PREDICT:
        return texts.gettext(_HINTS_PREDICTION[step])
    return texts.gettext(HINTS[step])


# ---------------------------------------------------------------------- the messages
class _Texts:
    """Every sentence of a report, in one language."""

    def __init__(self, gettext: Callable[[str], str], wrap: bool):
        self.gettext = self._ = gettext
        self.wrap = wrap  # English is wrapped at spaces; Japanese has none to wrap at

    def fill(self, text: str, indent: str = "") -> str:
        if not self.wrap:
            return text
        return textwrap.fill(text, width=80, subsequent_indent=indent,
                             break_long_words=False, break_on_hyphens=False)

    def where(self, ndim: int, call: int) -> str:
        _ = self._
        scenario = _("{ndim}-D input").format(ndim=ndim)
        template = {
            _BUILD: N_("{scenario}, forward"),
            _TRAIN: N_("{scenario}, forward"),
            _PREDICT: N_("{scenario}, prediction on a batch of another size"),
            _BACKWARD: N_("{scenario}, backward"),
        }[call]
        return _(template).format(scenario=scenario)

    def show(self, value: Any) -> str:
        _ = self._
        if isinstance(value, _Opaque):
            return _("a {type} object, which np.asarray could not read ({error})").format(
                type=value.type, error=value.error)
        if not isinstance(value, np.ndarray):
            return repr(value)
        with np.printoptions(precision=6, suppress=False, threshold=24, linewidth=88):
            lines = str(value + 0.0).splitlines()  # + 0.0: a zero prints as 0., not -0.
        return _("shape {shape}").format(shape=value.shape) + "".join("\n      " + line for line in lines)

    def wrong(self, step: str, where: str, expected: np.ndarray, actual: Any, hint: str,
              right: list[str], passed: list[int], shape: bool = False) -> Report:
        _ = self._
        lines = [
            _("First wrong quantity: {step} ({where}).").format(step=step, where=where),
            _("  expected {value}").format(value=self.show(expected)),
            _("  got      {value}").format(value=self.show(actual)),
        ]
        if shape:
            lines.append(self.fill(_("  {step} has shape {got} after training; it must keep the shape {want} it "
                                     "started with, or prediction on a batch of another size fails.").format(
                step=step, got=actual.shape, want=expected.shape), "    "))
        lines.append(self.fill(_("  hint: {hint}").format(hint=hint), "    "))
        if right:
            lines.append(self.fill(_("Everything before it is right: {steps}.").format(steps=", ".join(right))))
        lines += self.passed(passed)
        return Report(False, step, where, np.asarray(expected), actual, [], "\n".join(lines))

    def passed(self, ndims: list[int]) -> list[str]:
        """A line for each input that passed before this one: the mistake is particular to this input."""
        _ = self._
        return [self.fill(_("The {ndim}-D input passed every check.").format(ndim=ndim)) for ndim in ndims]

    def stopped(self, rec: _Record, step: str, call: int, ndim: int, seconds: float, passed: list[int],
                failure: Optional[_Failure] = None) -> Report:
        """The report on a call that did not return a value (raised, timed out, ended the process)."""
        _ = self._
        f = failure or rec.failure
        assert f is not None
        scenario = _("{ndim}-D input").format(ndim=ndim)
        if f.line is None:
            place = ""
        elif f.code:
            place = _(" (line {line}: {code})").format(line=f.line, code=f.code)
        else:
            place = _(" (line {line})").format(line=f.line)
        if f.kind == "timeout":
            head = _("The class did not finish in time on the {scenario}:")
            what = _("{call} did not return within {seconds} s").format(call=f.call, seconds=f"{seconds:g}")
        elif f.kind == "exit":
            head = _("The class tried to end the Python process on the {scenario}:")
            what = _("{call} called sys.exit({code})").format(call=f.call, code=f.exception)
        elif f.kind == "died":
            head = _("The class ended its process on the {scenario}:")
            if f.status is not None and f.status < 0:
                what = _("{call} was killed by signal {signal}").format(call=f.call, signal=-f.status)
            else:
                what = _("{call} ended the process (exit code {code})").format(call=f.call, code=f.status)
        else:
            head = _("The class raised an exception on the {scenario}:")
            what = _("{call} raised {exception}").format(call=f.call, exception=f.exception)
        hint = self.gettext(_HINTS_PREDICTION[step] if call == _PREDICT else HINTS[step])
        lines = [head.format(scenario=scenario), "  " + what + place,
                 self.fill(_("The first quantity that could not be checked is {step}.").format(step=step)),
                 self.fill(_("  hint: {hint}").format(hint=hint), "    ")]
        if f.kind == "timeout":
            lines.append(self.fill(_("If your class is only slow, give it more time: check(cls, timeout=...).")))
        lines += self.passed(passed)
        return Report(False, step, self.where(ndim, call), None, None, [], "\n".join(lines))

    def all_clear(self, unchecked: list[str], ndims: list[int]) -> str:
        _ = self._
        names = [s for s in STEPS if s not in unchecked]
        message = self.fill(_("All clear: {count} quantities match bnlit on the {first}-D and {second}-D "
                          "inputs ({steps}).").format(count=len(names), first=ndims[0], second=ndims[1], steps=", ".join(names)))
        message += "\n" + self.fill(_("Prediction on a batch of another size is right too, and the moving "
                                  "statistics keep their shape."))
        if unchecked:
            message += "\n" + self.fill(_(
                "Not checked, because the class has no local variable of that name: {steps}. The public "
                "results (out, moving statistics, dgamma, dbeta, dx) were checked instead."
            ).format(steps=", ".join(unchecked)))
        return message

    def output(self, stdout: str, stderr: str) -> str:
        _ = self._
        parts = []
        for title, text in ((_("What the class printed to stdout:"), stdout),
                            (_("What the class printed to stderr:"), stderr)):
            if text:
                parts.append(title + "\n" + textwrap.indent(text.rstrip("\n"), "  "))
        return "".join("\n" + part for part in parts)

