"""An ``out=`` that shares memory with what the layer keeps is refused, naming that array.

Found by `make mutation` (BatchNormalization._kept): the names were never checked.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnlit

NAMES = ["gamma", "beta", "moving_mean", "moving_var", "dgamma", "dbeta"]
STARTS = {"the moving statistics' starting values": 0, "the starting moving_var": 1}


def trained() -> bnlit.BatchNormalization:
    bn = bnlit.BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(3), moving_var=np.ones(3))
    bn.forward(np.arange(6.0).reshape(2, 3))
    bn.backward(np.ones((2, 3)))
    return bn


@pytest.mark.parametrize("name", NAMES + list(STARTS))
def test_an_out_that_is_a_kept_array_is_named(name) -> None:
    bn = trained()
    kept = bn._moving_start[STARTS[name]] if name in STARTS else getattr(bn, name)
    before = np.array(kept, copy=True)
    with pytest.raises(ValueError) as info:
        bn.forward(np.ones((1, 3)), train_flg=False, out=np.asarray(kept).reshape(1, 3))
    assert str(info.value) == f"out must not share memory with {name}, which the layer keeps"
    np.testing.assert_array_equal(kept, before)  # refused before anything was written


@pytest.mark.parametrize("attribute, value, error, message", [
    ("moving_mean", np.ones((2, 3)), ValueError, "moving_mean must have a 1-D array of at least one value; got shape (2, 3)"),
    ("moving_var", np.ones(4), ValueError, "moving_var must have shape (3,); got shape (4,)"),
    ("rho", 1.5, ValueError, "rho must lie in [0, 1]; got 1.5"),
], ids=["moving_mean 2-D", "moving_var of 4 channels", "rho above 1"])
def test_corrected_moving_statistics_names_what_was_rebound_wrong(attribute, value, error, message) -> None:
    """Found by `make mutation` too: the names in these messages were never checked."""
    bn = bnlit.BatchNormalization(np.ones(3), np.zeros(3))
    bn.forward(np.arange(6.0).reshape(2, 3))
    setattr(bn, attribute, value)
    with pytest.raises(error) as info:
        bn.corrected_moving_statistics()
    assert str(info.value) == message
