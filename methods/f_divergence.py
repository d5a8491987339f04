"""The f-divergences of f-distill (arXiv 2502.15681) and Uni-Instruct (arXiv 2505.20755), as one table.

Convention (both papers): p is the data (teacher) distribution, q the generator's, r = p/q the
density ratio, and D_f(p || q) = E_q[f(r)] for a convex f with f(1) = 0. Both methods weigh a
score difference by

    h(r) = r^2 f''(r)

(f-distill: the gradient of D_f(p_t || q_t) is -E_q[h(r) (s_p - s_q) dx/dtheta]; Uni-Instruct: the
expanded divergence integrates E_q[h(r) ||s_p - s_q||^2] over diffusion time). Uni-Instruct's
gradient also needs h'(r) and h''(r) (`methods/sid/uni_instruct_loss.py` says where), so each entry
carries h and its first two derivatives in closed form. Reverse KL has h = 1 (DMD, SiD); forward
KL h = r.

A positive constant factor in f scales h and cancels in f-distill (its weights are normalised to
batch mean 1); Uni-Instruct uses h unnormalised, so the table fixes one f per name (below).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FDivergence:
    """One f-divergence: its generator f and h = r^2 f'' with h', h'' (all elementwise in r > 0)."""

    name: str
    formula: str  #: f(r), for the documentation
    f: Fn
    h: Fn
    dh: Fn
    d2h: Fn

    @property
    def constant_weight(self) -> bool:
        """h does not depend on r (reverse KL): no density ratio is needed."""
        return self.name == "reverse_kl"


def _ones(r: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(r)


def _zeros(r: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(r)


DIVERGENCES: dict[str, FDivergence] = {
    d.name: d
    for d in (
        # KL(q || p): mode-seeking; DMD's and SiD's divergence
        FDivergence("reverse_kl", "-log r", lambda r: -torch.log(r), _ones, _zeros, _zeros),
        # KL(p || q): mode-covering; Uni-Instruct's headline divergence
        FDivergence("forward_kl", "r log r", lambda r: r * torch.log(r), lambda r: r, _ones, _zeros),
        FDivergence("jensen_shannon", "r log r - (1 + r) log((1 + r) / 2)",
                    lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
                    lambda r: r / (1 + r), lambda r: (1 + r) ** -2, lambda r: -2 * (1 + r) ** -3),
        # f-distill's generator of the squared Hellinger distance; FastGen writes h = sqrt(r), the
        # same weights after f-distill's normalisation
        FDivergence("squared_hellinger", "1 - sqrt(r)", lambda r: 1 - torch.sqrt(r),
                    lambda r: 0.25 * torch.sqrt(r), lambda r: 0.125 * r**-0.5, lambda r: -0.0625 * r**-1.5),
        # KL(p || q) + KL(q || p)
        FDivergence("jeffreys", "(r - 1) log r", lambda r: (r - 1) * torch.log(r), lambda r: 1 + r, _ones, _zeros),
        # Pearson chi-square; in Uni-Instruct's code (its ImageNet 64 script's `Chi-Square`)
        FDivergence("chi_square", "(r - 1)^2", lambda r: (r - 1) ** 2, lambda r: 2 * r**2, lambda r: 4 * r,
                    lambda r: torch.full_like(r, 4.0)),
    )
}


def divergence(name: str) -> FDivergence:
    """The table's entry for `name`; a clear error naming the choices otherwise."""
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise ValueError(f"unknown f-divergence {name!r}; use one of {', '.join(DIVERGENCES)}") from None
