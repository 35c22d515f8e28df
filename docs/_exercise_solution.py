"""A finished version of the course notebook's exercise, written as a learner would.

It keeps the notebook's structure, names (a1 .. a9), shape prints and even the
template's latent bug (``N, D = x.shape`` runs only while the moving statistics
are None, so a second training call fails, and so does the first one when the
moving statistics are given to the constructor). The book's exercise page and the
tests of bnlit.exercise run the checker on it and on copies with one line
changed. It is not part of bnlit: the layer lives in bnlit/ only.
"""

import numpy as np


class BatchNormalization:
    def __init__(self, gamma, beta, rho=0.9, moving_mean=None, moving_var=None):
        self.gamma = gamma  # scale parameter, learned
        self.beta = beta  # shift parameter, learned
        self.rho = rho  # weight of the old value in the moving averages

        # mean and variance used for prediction
        self.moving_mean = moving_mean  # moving average of mu
        self.moving_var = moving_var  # moving average of var

        # values kept during the computation
        self.batch_size = None
        self.x_mu = None
        self.x_std = None
        self.std = None
        self.dgamma = None
        self.dbeta = None

    def forward(self, x, train_flg=True):
        if x.ndim == 4:
            N, C, H, W = x.shape
            x = x.transpose(0, 2, 3, 1)  # to NHWC
            x = x.reshape(N * H * W, C)  # to a 2-D (N*H*W, C) array
            out = self.__forward(x, train_flg)
            out = out.reshape(N, H, W, C)  # back to 4-D
            out = out.transpose(0, 3, 1, 2)  # back to NCHW
        elif x.ndim == 2:
            out = self.__forward(x, train_flg)
        return out

    def __forward(self, x, train_flg, epsilon=1e-8):
        if (self.moving_mean is None) or (self.moving_var is None):
            N, D = x.shape
            self.moving_mean = np.zeros(D)
            self.moving_var = np.zeros(D)

        if train_flg:
            mu = np.mean(x, axis=0)  # D values
            mu = np.broadcast_to(mu, (N, D))
            print("mu.shape=", mu.shape)

            x_mu = x - mu  # N x D
            print("x_mu.shape=", x_mu.shape)

            var = np.mean(x_mu**2, axis=0)  # D values
            print("var.shape=", var.shape)

            std = np.sqrt(var + epsilon)  # D values
            print("std.shape=", std.shape)

            std_inv = 1 / std
            std_inv = np.broadcast_to(std_inv, (N, D))
            print("std_inv.shape=", std_inv.shape)

            x_std = x_mu * std_inv  # N x D
            print("x_std.shape=", x_std.shape)

            self.batch_size = x.shape[0]
            self.x_mu = x_mu
            self.x_std = x_std
            self.std = std
            self.moving_mean = self.rho * self.moving_mean + (1 - self.rho) * mu[0]
            self.moving_var = self.rho * self.moving_var + (1 - self.rho) * var
        else:
            x_mu = x - self.moving_mean  # N x D
            x_std = x_mu / np.sqrt(self.moving_var + epsilon)  # N x D

        out = self.gamma * x_std + self.beta  # N x D
        return out

    def backward(self, dout):
        if dout.ndim == 4:
            N, C, H, W = dout.shape
            dout = dout.transpose(0, 2, 3, 1)
            dout = dout.reshape(N * H * W, C)
            dx = self.__backward(dout)
            dx = dx.reshape(N, H, W, C)
            dx = dx.transpose(0, 3, 1, 2)
        elif dout.ndim == 2:
            dx = self.__backward(dout)
        return dx

    def __backward(self, dout):
        N, D = self.x_mu.shape

        dbeta = np.sum(dout, axis=0)  # gradient of beta
        dgamma = np.sum(self.x_std * dout, axis=0)  # gradient of gamma (summed over N)

        a1 = self.gamma * dout  # gradient of x_std
        print("a1.shape=", a1.shape)

        a2 = a1 / self.std  # gradient of x_mu (first path)
        print("a2.shape=", a2.shape)

        a3 = a1 * self.x_mu  # gradient of std_inv
        print("a3.shape=", a3.shape)
        a3 = np.sum(a3, axis=0)  # summed over N

        a4 = -a3 / (self.std * self.std)  # gradient of std
        print("a4.shape=", a4.shape)

        a5 = 0.5 * a4 / self.std  # gradient of var
        print("a5.shape=", a5.shape)

        a6 = a5 / N  # gradient of x_mu**2
        a6 = np.broadcast_to(a6, (N, D))
        print("a6.shape=", a6.shape)

        a7 = 2.0 * self.x_mu * a6  # gradient of x_mu (second path)
        print("a7.shape=", a7.shape)

        a8 = -(a2 + a7)  # gradient of mu
        print("a8.shape=", a8.shape)
        a8 = np.sum(a8, axis=0)  # summed over N

        a9 = a8 / N  # gradient of x through mu
        a9 = np.broadcast_to(a9, (N, D))
        dx = a2 + a7 + a9
        print("a9.shape=", a9.shape)

        self.dgamma = dgamma
        self.dbeta = dbeta

        return dx
