"""bnlit against PyTorch's batch_norm (optional: skipped when torch is missing).

Conventions bridged here: PyTorch's momentum weights the new statistic
(momentum = 1 - rho) and its running variance is the unbiased n/(n-1) estimate.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnlit import BatchNormalization

torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0 (CPU)")
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
