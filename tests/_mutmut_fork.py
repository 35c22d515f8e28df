"""``make mutation`` support: the exercise checker's child process counts for mutmut.

mutmut tries each mutant only against the tests that ran the mutated function, and
learns which those are from the calls of its trampolines in the test's process
(``MUTANT_UNDER_TEST=stats``). :func:`bnlit.exercise.check` plays the learner's class
in a forked child, whose calls land in the child's copy of mutmut's record and are
lost with it: the functions that run only there (``_child``, ``_drained``, and the
player's methods) would count as untested. Under the stats run, the fixture below
has the child write each function it runs to a file as it runs it (the child may be
killed at any moment), and adds them to the test's record once the child is gone.
Outside ``make mutation`` it does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import bnlit.exercise as exercise


class _Streamed(set):
    """mutmut's set of functions run, that also appends each new one to a file."""

    def __init__(self, names: set[str], fd: int):
        super().__init__(names)
        self.fd = fd

    def add(self, name: str) -> None:
        # Only the checker's own functions: the layer's, run in the child by a learner class
        # built on bnlit, have fast tests of their own, and tying them to the ~140 forking
        # checker tests would make every layer mutant run those too.
        if name not in self and name.startswith("bnlit.exercise."):
            os.write(self.fd, (name + "\n").encode())  # one write per line, O_APPEND: whole lines
        super().add(name)


@pytest.fixture(autouse=True)
def child_calls_count_for_mutmut(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        yield
        return
    from mutmut.state import state

    hits = tmp_path / "child-calls"
    real_child, real_records = exercise._child, exercise._records_from_child

    def child(*args: object) -> None:
        fd = os.open(hits, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        state()._stats = _Streamed(state()._stats, fd)
        real_child(*args)

    def records_from_child(*args: object) -> Iterator[exercise._Record]:
        try:
            yield from real_records(*args)
        finally:  # the child has ended (or was killed): what it ran is in the file
            if hits.exists():
                state()._stats.update(hits.read_text().split())
                hits.unlink()

    monkeypatch.setattr(exercise, "_child", child)
    monkeypatch.setattr(exercise, "_records_from_child", records_from_child)
    yield
