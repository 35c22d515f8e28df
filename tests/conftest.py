"""Fixtures shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest

from _book_build import built_book, editions  # noqa: F401  (the built book, one build per session)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)
