"""An analytic test bed for every method: a Gaussian data distribution whose denoiser is exact.

Teacher: D(x, s) = mu + S (S + s^2 I)^-1 (x - mu), the exact denoiser of N(mu, S).
Generator: affine, G(x, s) = m + A x / s, so G(sigma_init z) ~ N(m, A A^T).
Copies of the teacher (fake scores) are Gaussian-family denoisers with learnable mean and
covariance factor, so they can represent the generator's own score exactly. A method that is
right drives N(m, A A^T) to N(mu, S); the Frechet distance between them has a closed form.
Students of multi-step methods (progressive and consistency distillation) are `LevelTable`s, one
affine map per level of their grid, which hold those methods' targets exactly.
"""
from __future__ import annotations

from typing import Any

import torch

from sidbench.eval.frechet import frechet_distance
from sidbench.teachers.teacher import Teacher


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of N(mean, L L^T) on images of shape `shape`; mean and L learnable."""

    def __init__(self, mean: torch.Tensor, factor: torch.Tensor, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape
        self.mean = torch.nn.Parameter(mean.clone().float())
        self.factor = torch.nn.Parameter(factor.clone().float())

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[0], self.mean.numel()
        dtype = self.mean.dtype  # samplers hand float64 states, as EDM's networks accept them
        cov = self.factor @ self.factor.T
        s2 = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1).expand(n) ** 2
        eye = torch.eye(d, device=x.device, dtype=dtype)
        gain = cov @ torch.linalg.inv(cov + s2[:, None, None] * eye)  # [n, d, d]
        delta = (x.reshape(n, d).to(dtype) - self.mean)[:, :, None]
        return (self.mean + (gain @ delta)[..., 0]).reshape(x.shape)


class AffineGenerator(torch.nn.Module):
    """G(x, s) = m + A (x / s): a one-step generator whose output law is N(m, A A^T)."""

    def __init__(self, dim: int, shape: tuple[int, int, int], scale: float = 1.0, seed: int = 1) -> None:
        super().__init__()
        self.shape = shape
        gen = torch.Generator().manual_seed(seed)
        self.m = torch.nn.Parameter(torch.zeros(dim))
        self.A = torch.nn.Parameter(scale * torch.eye(dim) + 0.1 * torch.randn(dim, dim, generator=gen))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        return (self.m + (x.reshape(n, -1) / s) @ self.A.T).reshape(x.shape)

    def law(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m.detach(), (self.A @ self.A.T).detach()


class GaussianTeacher(Teacher):
    """A `Teacher` whose copies are Gaussian-family denoisers and whose generator is affine."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, shape: tuple[int, int, int] = (1, 2, 2)) -> None:
        self.target_mean, self.target_cov = mean.float(), cov.float()
        factor = torch.linalg.cholesky(self.target_cov)
        net = GaussianDenoiser(self.target_mean, factor, shape).eval().requires_grad_(False)
        constructor = {"img_resolution": shape[1], "img_channels": shape[0], "label_dim": 0}
        super().__init__(net=net, constructor=constructor, source="analytic-gaussian")
        self._factor = factor

    def copy_network(self, **overrides: Any) -> torch.nn.Module:
        return GaussianDenoiser(self.target_mean, self._factor, self.shape).train()

    def init_generator(self, **overrides: Any) -> AffineGenerator:
        return AffineGenerator(self.target_mean.numel(), self.shape, scale=float(overrides.get("scale", 1.0)))

    def distance(self, generator: AffineGenerator) -> float:
        """Closed-form Frechet distance between the generator's law and the target."""
        m, c = generator.law()
        return frechet_distance(m.double().numpy(), c.double().numpy(), self.target_mean.double().numpy(), self.target_cov.double().numpy())


class Float32Input(torch.nn.Module):
    """A Gaussian-family network called the way EDM networks are: any input dtype, computed in
    float32 (samplers and losses pass float64 states, which `GaussianDenoiser` does not accept)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, sigma: Any, class_labels: Any = None, augment_labels: Any = None) -> torch.Tensor:
        return self.inner(x.float(), torch.as_tensor(sigma).float(), class_labels)


class LevelTable(torch.nn.Module):
    """One affine map per level of a fixed grid, F(x, s_k) = b_k + W_k x / s_k, sigma matched to the
    nearest level in log. It starts as the exact denoiser of N(mu, S) on the grid, so it represents
    EXACTLY any target that is affine in x_t at each level: every stage of progressive distillation
    and consistency distillation's fixed point (the teacher's ODE steps down to sigma_min). With
    `boundary` the last level is the consistency boundary, F(x, sigma_min) = x, fixed."""

    def __init__(self, levels: list[float], mu: torch.Tensor, cov: torch.Tensor, *, boundary: bool = False) -> None:
        super().__init__()
        self.boundary = boundary
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float64))
        eye = torch.eye(len(mu))
        gains = [cov @ torch.linalg.inv(cov + s**2 * eye) for s in levels]
        self.W = torch.nn.Parameter(torch.stack([s * g for s, g in zip(levels, gains)]).float())
        self.b = torch.nn.Parameter(torch.stack([mu - g @ mu for g in gains]).float())

    def forward(self, x: torch.Tensor, sigma: Any, class_labels: Any = None, augment_labels: Any = None) -> torch.Tensor:
        n = x.shape[0]
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(n)
        k = (s.log()[:, None] - self.levels.log()[None]).abs().argmin(1)
        flat = x.reshape(n, -1).float()
        out = self.b[k] + (self.W[k] @ (flat / s.float()[:, None])[:, :, None])[..., 0]
        if self.boundary:
            out = torch.where((k == len(self.levels) - 1)[:, None], flat, out)
        return out.reshape(x.shape)

    def one_step_law(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) of F(s_0 z, s_0) = b_0 + W_0 z, level 0 being the one sampled from."""
        w, b = self.W[0].detach().double(), self.b[0].detach().double()
        return b, w @ w.T


def random_gaussian(dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A well-conditioned random target N(mu, S) in `dim` dimensions, data-scale (~0.5)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    eig = torch.linspace(0.05, 0.4, dim)
    return 0.5 * torch.randn(dim, generator=gen), q @ torch.diag(eig) @ q.T
