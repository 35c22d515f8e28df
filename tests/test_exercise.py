"""The exercise checker finds the first wrong step of a learner's class.

The learner's class is the finished exercise in docs/_exercise_solution.py
(the notebook's structure, prints and template bug included); each planted
mistake changes exactly one line of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bnlit
from bnlit.exercise import HINTS, STEPS, check

SOLUTION = (Path(__file__).resolve().parents[1] / "docs" / "_exercise_solution.py").read_text()


def learner_class(replace: dict[str, str] | None = None) -> type:
    source = SOLUTION
    for old, new in (replace or {}).items():
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    namespace: dict = {}
    exec(compile(source, "<learner>", "exec"), namespace)
    return namespace["BatchNormalization"]


def test_a_correct_class_gets_an_all_clear(capsys) -> None:
    report = check(learner_class())
    assert report.ok and report.step is None
    assert str(report).startswith("All clear: 21 quantities")
    assert capsys.readouterr().out == ""  # the class's shape prints are swallowed


def test_the_template_bug_does_not_mislead_the_checker() -> None:
    cls = learner_class()
    layer = cls(np.ones(3), np.zeros(3))
    layer.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    with pytest.raises(NameError):  # N, D are set only while the moving statistics are None
        layer.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    assert check(cls).ok  # a fresh instance per scenario


PLANTED = [
    ("mu", {"mu = np.mean(x, axis=0)  # D values": "mu = np.mean(x, axis=1)[:, None]"}),
    ("var", {"var = np.mean(x_mu**2, axis=0)  # D values": "var = np.sum(x_mu**2, axis=0) / (N - 1)"}),
    ("std", {"std = np.sqrt(var + epsilon)  # D values": "std = var + epsilon"}),
    ("moving_mean", {"self.moving_mean = self.rho * self.moving_mean + (1 - self.rho) * mu[0]":
                     "self.moving_mean = (1 - self.rho) * self.moving_mean + self.rho * mu[0]"}),
    ("out", {"x_mu = x - self.moving_mean  # N x D": "x_mu = x - np.mean(x, axis=0)"}),
    ("dgamma", {"dgamma = np.sum(self.x_std * dout, axis=0)": "dgamma = np.sum(dout, axis=0)"}),
    ("a3", {"        a3 = np.sum(a3, axis=0)  # summed over N\n": ""}),
    ("a4", {"a4 = -a3 / (self.std * self.std)": "a4 = a3 / (self.std * self.std)"}),
    ("a6", {"a6 = a5 / N  # gradient of x_mu**2": "a6 = a5  # gradient of x_mu**2"}),
    ("a7", {"a7 = 2.0 * self.x_mu * a6": "a7 = self.x_mu * a6"}),
    ("a8", {"a8 = -(a2 + a7)  # gradient of mu": "a8 = a2 + a7  # gradient of mu"}),
    ("dx", {"dx = a2 + a7 + a9": "dx = a2 + a9"}),
]


@pytest.mark.parametrize("step, replace", PLANTED, ids=[step for step, _ in PLANTED])
def test_a_planted_mistake_is_located(step, replace) -> None:
    report = check(learner_class(replace))
    assert not report.ok
    assert report.step == step
    assert report.step in STEPS
    text = str(report)
    assert f"First wrong quantity: {step}" in text and HINTS[step] in text
    assert "expected" in text and "got" in text


def test_leaving_a7_out_of_a8_is_not_a_mistake() -> None:
    """sum(a7) = 2 * a6 * sum(x_mu) = 0: the second path adds nothing to a8, and the checker agrees."""
    report = check(learner_class({"a8 = -(a2 + a7)  # gradient of mu": "a8 = -a2  # gradient of mu"}))
    assert report.ok


def test_a_class_that_raises_in_backward() -> None:
    report = check(learner_class({"N, D = self.x_mu.shape": "raise NotImplementedError('a1..a9 still blank')"}))
    assert not report.ok and report.step == "dbeta"
    assert "backward(dout) raised NotImplementedError: a1..a9 still blank" in str(report)


def test_a_class_that_raises_halfway_through_forward() -> None:
    report = check(learner_class({"var = np.mean(x_mu**2, axis=0)  # D values": "var = np.mean(x_mu**2, axis=0) + blank"}))
    assert not report.ok and report.step == "var"  # mu and x_mu were computed and right
    assert "NameError" in str(report) and "forward(x, train_flg=True)" in str(report)


def test_a_class_that_cannot_be_built() -> None:
    class Broken:
        def __init__(self, gamma, beta):
            raise TypeError("missing rho")

    report = check(Broken)
    assert not report.ok and report.step == "mu"
    assert "Broken(gamma, beta) raised TypeError: missing rho" in str(report)


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


def test_other_names_fall_back_to_the_public_results() -> None:
    report = check(Wrapped)
    assert report.ok
    assert set(report.unchecked) == {"mu", "x_mu", "var", "std", "std_inv", "x_std"} | {f"a{k}" for k in range(1, 10)}
    assert "Not checked" in str(report)

    class WrongEpsilon(Wrapped):
        def __init__(self, gamma, beta):
            super().__init__(gamma, beta, epsilon=0.5)

    report = check(WrongEpsilon)
    assert not report.ok and report.step == "out"
