"""Bad input raises a clear error, and the layer's state is unchanged afterwards."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bnlit import BatchNormalization, LayerStateError


def trained_layer(staged: bool = False) -> BatchNormalization:
    bn = BatchNormalization(np.ones(3), np.zeros(3), staged=staged)
    bn.forward(np.arange(12.0).reshape(4, 3) ** 1.5)
    return bn


def state(bn: BatchNormalization) -> dict:
    """Everything a failed call must leave as it was."""
    return {
        "moving_mean": copy.deepcopy(bn.moving_mean),
        "moving_var": copy.deepcopy(bn.moving_var),
        "batch_size": bn.batch_size,
        "x_std": None if bn.x_std is None else bn.x_std.copy(),
        "dgamma": copy.deepcopy(bn.dgamma),
    }


def assert_refused(bn: BatchNormalization, call, exc: type, words: list[str]) -> None:
    """``call()`` raises ``exc`` with all ``words`` in its message, and ``bn`` keeps its state."""
    before = state(bn)
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value)
    assert_same_state(before, state(bn))


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if a is None or b is None:
            assert a is b, key
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)


FORWARD_CASES = [
    # (input, exception, words the message must contain)
    (np.ones((4, 3, 2)), ValueError, ["2-D (N, D) or 4-D (N, C, H, W)", "3-D", "(4, 3, 2)"]),
    (np.ones(3), ValueError, ["2-D (N, D) or 4-D", "1-D"]),
    (np.ones((4, 5)), ValueError, ["5 channels", "shape (3,)", "shape (5,)"]),
    (np.ones((2, 4, 3, 3)), ValueError, ["4 channels", "shape (4,)"]),
    (np.ones((1, 3)), ValueError, ["at least 2 values per channel", "got 1", "(1, 3)"]),
    (np.ones((1, 3, 1, 1)), ValueError, ["at least 2 values per channel", "got 1"]),
    (np.ones((4, 3), dtype=complex), TypeError, ["real numbers", "complex128"]),
    (np.array([["a", "b", "c"]] * 4), TypeError, ["real numbers", "<U1"]),
    (np.ones((4, 3), dtype=bool), TypeError, ["real numbers", "bool"]),
]


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize("x, exc, words", FORWARD_CASES)
def test_bad_forward_input(x, exc, words, staged) -> None:
    bn = trained_layer(staged)
    assert_refused(bn, lambda: bn.forward(x), exc, words)


def test_prediction_before_moving_statistics() -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    with pytest.raises(LayerStateError, match="needs moving statistics") as info:
        bn.forward(np.ones((4, 3)), train_flg=False)
    assert isinstance(info.value, ValueError)
    assert bn.moving_mean is None and bn.moving_var is None


def test_prediction_with_given_moving_statistics() -> None:
    bn = BatchNormalization(np.ones(2), np.zeros(2), moving_mean=[1.0, 2.0], moving_var=[4.0, 9.0])
    out = bn.forward(np.array([[3.0, 8.0]]), train_flg=False)
    np.testing.assert_allclose(out, [[2 / np.sqrt(4 + 1e-8), 6 / np.sqrt(9 + 1e-8)]])


def test_backward_before_training_forward() -> None:
    bn = BatchNormalization(np.ones(3), np.zeros(3), moving_mean=np.zeros(3), moving_var=np.ones(3))
    bn.forward(np.ones((4, 3)), train_flg=False)  # prediction leaves nothing to differentiate
    with pytest.raises(LayerStateError, match="needs a training forward first"):
        bn.backward(np.ones((4, 3)))
    assert bn.dgamma is None


@pytest.mark.parametrize("staged", [False, True], ids=["closed-form", "staged"])
@pytest.mark.parametrize(
    "dout, exc, words",
    [
        (np.ones((4, 2)), ValueError, ["shape of the last training input, (4, 3)", "(4, 2)"]),
        (np.ones((2, 3, 2, 1)), ValueError, ["(4, 3)", "(2, 3, 2, 1)"]),
        (np.ones((4, 3), dtype=complex), TypeError, ["real numbers", "complex128"]),
    ],
)
def test_bad_dout(dout, exc, words, staged) -> None:
    bn = trained_layer(staged)
    bn.backward(np.linspace(-1, 1, 12).reshape(4, 3))
    assert_refused(bn, lambda: bn.backward(dout), exc, words)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"gamma": np.ones(3), "beta": np.zeros(2)}, ValueError, ["beta", "shape (3,)", "(2,)"]),
        ({"gamma": np.ones((3, 1)), "beta": np.zeros(3)}, ValueError, ["gamma", "1-D"]),
        ({"gamma": np.ones(3), "beta": np.zeros(3), "rho": 1.5}, ValueError, ["rho", "[0, 1]", "1.5"]),
        ({"gamma": np.ones(3), "beta": np.zeros(3), "epsilon": 0.0}, ValueError, ["epsilon", "positive"]),
        ({"gamma": np.ones(3), "beta": np.zeros(3), "moving_mean": np.zeros(4)}, ValueError, ["moving_mean", "(3,)", "(4,)"]),
        ({"gamma": np.ones(3), "beta": np.zeros(3), "moving_var": -np.ones(3)}, ValueError, ["moving_var", "non-negative"]),
        ({"gamma": ["a", "b", "c"], "beta": np.zeros(3)}, TypeError, ["gamma", "real numbers"]),
    ],
)
def test_bad_construction(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        BatchNormalization(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_rebinding_gamma_to_a_wrong_shape_is_caught_before_any_change() -> None:
    bn = trained_layer()
    before = state(bn)
    bn.gamma = np.ones(4)
    with pytest.raises(ValueError, match="3 channels"):
        bn.forward(np.ones((4, 3)))
    assert_same_state(before, state(bn))


def test_rebinding_moving_mean_to_a_wrong_shape_is_caught_before_any_change() -> None:
    bn = trained_layer()
    bn.moving_mean = np.zeros(2)
    before = state(bn)
    with pytest.raises(ValueError, match="moving_mean must have shape \\(3,\\)"):
        bn.forward(np.ones((4, 3)) * np.arange(4)[:, None])
    assert_same_state(before, state(bn))


def test_rho_and_momentum_are_exclusive_and_momentum_is_one_minus_rho() -> None:
    with pytest.raises(ValueError, match="not both"):
        BatchNormalization(np.ones(2), np.zeros(2), rho=0.5, momentum=0.1)
    with pytest.raises(ValueError, match="momentum must lie in"):
        BatchNormalization(np.ones(2), np.zeros(2), momentum=1.5)
    assert BatchNormalization(np.ones(2), np.zeros(2), momentum=0.25).rho == 0.75
