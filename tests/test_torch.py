"""bnlit against PyTorch's batch_norm (optional: skipped when torch is missing, a failure in CI).

Without torch, test_contracts.py still checks like_pytorch's settings by hand.

Conventions bridged here: PyTorch's momentum weights the new statistic
(momentum = 1 - rho) and its running variance is the unbiased n/(n-1) estimate.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnlit import BatchNormalization

from _optional import require

torch = require("torch", install="pip install torch==2.13.0 (the CPU build is enough)")
F = torch.nn.functional

EPS = 1e-5
RHO = 0.9


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 5)], ids=["2d", "4d"])
def test_forward_gradients_and_statistics_match_pytorch(shape, rng) -> None:
    channels = shape[1]
    x = rng.normal(2.0, 3.0, size=shape)
    dout = rng.normal(size=shape)
    gamma = rng.normal(1.0, 0.3, size=channels)
    beta = rng.normal(size=channels)

    bn = BatchNormalization(gamma, beta, rho=RHO, epsilon=EPS)
    out = bn.forward(x)
    dx = bn.backward(dout)

    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(gamma, requires_grad=True)
    tb = torch.tensor(beta, requires_grad=True)
    running_mean = torch.zeros(channels, dtype=torch.float64)
    running_var = torch.zeros(channels, dtype=torch.float64)
    tout = F.batch_norm(tx, running_mean, running_var, tg, tb, training=True, momentum=1 - RHO, eps=EPS)
    tout.backward(torch.tensor(dout))

    def close(a, b) -> None:
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-10)

    close(out, tout)
    close(dx, tx.grad)
    close(bn.dgamma, tg.grad)
    close(bn.dbeta, tb.grad)
    n = bn.batch_size
    close(bn.moving_mean, running_mean)
    close(bn.moving_var * n / (n - 1), running_var)  # PyTorch keeps the unbiased estimate

    # Prediction with the same moving statistics.
    x_new = rng.normal(size=shape)
    pred = bn.forward(x_new, train_flg=False)
    tpred = F.batch_norm(
        torch.tensor(x_new), torch.tensor(bn.moving_mean), torch.tensor(bn.moving_var),
        torch.tensor(gamma), torch.tensor(beta), training=False, eps=EPS,
    )
    close(pred, tpred)


@pytest.mark.parametrize("shape", [(12, 5), (4, 3, 5, 6)], ids=["BatchNorm1d", "BatchNorm2d"])
def test_like_pytorch_reproduces_torch_layers_over_training_steps(shape, rng) -> None:
    channels = shape[1]
    module = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(channels).double()
    bn = BatchNormalization.like_pytorch(channels)  # eps 1e-5, momentum 0.1, unbiased running variance
    learning_rate = 0.1
    for step in range(5):
        x = rng.normal(step, 1 + step, size=shape)
        dout = rng.normal(size=shape)
        module.train()
        tx = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        tout = module(tx)
        tout.backward(torch.tensor(dout))
        out = bn.forward(x)
        dx = bn.backward(dout)
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(bn.dgamma, module.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.dbeta, module.bias.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.moving_mean, module.running_mean.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.moving_var, module.running_var.numpy(), rtol=1e-12, atol=1e-12)
        # The same plain gradient step on both.
        with torch.no_grad():
            module.weight -= learning_rate * module.weight.grad
            module.bias -= learning_rate * module.bias.grad
        bn.gamma = bn.gamma - learning_rate * bn.dgamma
        bn.beta = bn.beta - learning_rate * bn.dbeta
    module.eval()
    x = rng.normal(size=shape)
    with torch.no_grad():
        expected = module(torch.tensor(x)).numpy()
    np.testing.assert_allclose(bn.forward(x, train_flg=False), expected, rtol=1e-10, atol=1e-10)


def test_one_value_per_channel_is_refused_by_both(rng) -> None:
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.BatchNorm1d(3).double()(torch.tensor(rng.normal(size=(1, 3))))
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        BatchNormalization.like_pytorch(3).forward(rng.normal(size=(1, 3)))
