"""The exact consistency function of a Gaussian, for the analytic test bed of consistency methods.

For data N(mu, S) noised as x = x_0 + sigma n, the probability-flow ODE dx/dsigma = (x - D(x, sigma))
/ sigma has D(x, sigma) = mu + S (S + sigma^2 I)^-1 (x - mu) (`gaussian.GaussianDenoiser`), and it
carries x at sigma to mu + S^1/2 (S + sigma^2 I)^-1/2 (x - mu) at sigma = 0: in S's eigenbasis
(S = Q diag(lambda) Q^T) each coordinate scales by sqrt(lambda / (lambda + sigma^2)). That map is
the exact consistency function f*(x, sigma) (boundary f*(x, 0) = x); the family below holds it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianConsistency(nn.Module):
    """f(x, sigma) = m + Q diag(sqrt(l / (l + sigma^2))) Q^T (x - m) on images of any shape with
    `mean.numel()` elements: learnable mean m and log-variances ln l along the fixed axes Q (a
    buffer). With (m, l, Q) = (mu, eig S, eigvecs S) it is the exact consistency function of N(mu, S);
    its one-step sampler f(sigma_max z, sigma_max) draws N(m', Q diag(l sigma_max^2 / (l +
    sigma_max^2)) Q^T), m' = m - Q diag(g) Q^T m, g = sqrt(l / (l + sigma_max^2)) (`one_step_law`).
    Called as a denoiser, f(x, sigma [n], labels); computes in the dtype of its parameters."""

    def __init__(self, mean: Tensor, variances: Tensor, axes: Tensor) -> None:
        super().__init__()
        self.mean = nn.Parameter(mean.clone())
        self.log_var = nn.Parameter(variances.log().clone())
        self.register_buffer("axes", axes.clone())

    @classmethod
    def exact(cls, mean: Tensor, cov: Tensor) -> GaussianConsistency:
        """The exact consistency function of N(mean, cov)."""
        variances, axes = torch.linalg.eigh(cov)
        return cls(mean, variances, axes)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        n, dtype = x.shape[0], self.mean.dtype
        s = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1, 1).expand(n, 1)
        var = self.log_var.exp()
        gain = (var / (var + s**2)).sqrt()  # [n, d]
        y = (x.reshape(n, -1).to(dtype) - self.mean) @ self.axes
        return (self.mean + (y * gain) @ self.axes.T).reshape(x.shape)

    @torch.no_grad()
    def one_step_law(self, sigma_max: float = 80.0) -> tuple[Tensor, Tensor]:
        """Mean and covariance of f(sigma_max z, sigma_max), z ~ N(0, I)."""
        var = self.log_var.exp()
        gain = (var / (var + sigma_max**2)).sqrt()
        mean = self.mean - self.axes @ (gain * (self.axes.T @ self.mean))
        cov = self.axes @ torch.diag((gain * sigma_max) ** 2) @ self.axes.T
        return mean, cov
