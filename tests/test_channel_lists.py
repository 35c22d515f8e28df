"""The channels an error message names: one, several, and at most eight then "...".

Found by `make mutation` (bnlit._validate._channels): messages were checked by substring.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnlit


@pytest.mark.parametrize("channels, named", [
    ([1], "channel 1"),
    ([0, 2], "channels 0, 2"),
    (list(range(8)), "channels 0, 1, 2, 3, 4, 5, 6, 7"),  # eight: all of them
    (list(range(9)), "channels 0, 1, 2, 3, 4, 5, 6, 7 ..."),  # nine: the first eight
], ids=["one", "two", "eight", "nine"])
def test_a_non_finite_moving_mean_names_its_channels(channels, named) -> None:
    mean = np.zeros(10)
    mean[channels] = np.nan
    with pytest.raises(ValueError) as info:
        bnlit.BatchNormalization(np.ones(10), np.zeros(10), moving_mean=mean, moving_var=np.ones(10))
    assert str(info.value) == f"moving_mean must be finite; it is not in {named}"
