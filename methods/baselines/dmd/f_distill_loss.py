"""f-distill's pieces (Xu et al. 2025, arXiv 2502.15681) as pure functions: DMD2 with each sample's
distribution-matching gradient weighted by h(r) = r^2 f''(r), r the density ratio p_data / q_G
read off the GAN head's logits. docs/frontier.md#f-distill has the formulas and sources.

Reference implementation: NVIDIA FastGen (`fastgen/methods/distribution_matching/f_distill.py`),
by the paper's first author's group; its numbers are in docs/frontier.md. From one generator
iteration's logits l (one per image, or several averaged) and noise levels sigma:
  1. r = exp(clamp(l, -10, 10)), no gradient, clamped to [0.1, 20];
  2. r / (m_b + 1e-6), m_b an exponential moving average of the mean r in sigma's bin b (the range
     [sigma_min, sigma_max] cut into equal-width bins), updated with this batch BEFORE it divides
     (`RatioNormaliser`: state a plugin checkpoints);
  3. w = h(r) / (mean h(r) + 1e-6) over the batch (all processes);
  4. the DM gradient of every sample times w_i (`weighted_distribution_matching_loss`).
Reverse KL has h = 1: its weights are exactly 1 and the loss is DMD2's, bit for bit (FastGen's
reverse-KL branch fails: its h is a 0-d tensor whose len() the normalisation takes).

Departures from FastGen, none of which changes a finite batch's weights: a non-finite logit gives
no weight (its sample leaves L_DM as a non-finite DM gradient does) and does not enter the bin
averages or the batch mean, where FastGen's NaN would make every later weight NaN; the DM
gradient's per-sample normaliser is floored (sidbench's `dm_gradient`) where FastGen adds 1e-6.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sidbench.methods.baselines.dmd.loss import dm_gradient
from sidbench.methods.f_divergence import divergence
from sidbench.methods.nonfinite import finite_samples, zero_dropped

#: the ratio's clamp (FastGen `configs/methods/config_f_distill.py`: ratio_lower, ratio_upper)
RATIO_LOWER, RATIO_UPPER = 0.1, 20.0
#: logits are clamped to this before exp (FastGen's guard against overflow)
LOGIT_CLAMP = 10.0
#: added to every divisor of the normalisations, as in FastGen
EPS = 1e-6

#: sums a tensor over the processes (e.g. an all-reduce); None on one process
Reduce = Callable[[torch.Tensor], torch.Tensor] | None


def _summed(t: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    return t if reduce is None else reduce(t)


def density_ratio(logits: torch.Tensor, lower: float = RATIO_LOWER, upper: float = RATIO_UPPER) -> torch.Tensor:
    """r [B] in float32, without gradient: exp of the logit (the mean over each sample's logits when
    it has several) clamped to [-LOGIT_CLAMP, LOGIT_CLAMP], then clamped to [lower, upper].

    A discriminator trained with the logistic loss on real vs generated images has the optimal
    logit log(p_data / q_G), so exp(logit) estimates the density ratio."""
    with torch.no_grad():
        logit = logits.detach().float().reshape(logits.shape[0], -1).mean(dim=1)
        return logit.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).exp().clamp(lower, upper)


class RatioNormaliser:
    """An exponential moving average of the mean density ratio per noise bin; divides each ratio
    by its bin's average (the update of this batch included).

    The bins cut [sigma_min, sigma_max] into `bins` equal widths (FastGen's EDM form bins its time
    t, which is sigma). Each call: per bin with samples in this batch (over all processes),
    m_b <- ema_rate * m_b + (1 - ema_rate) * mean(r in b); bins without samples keep m_b;
    then r_i / (m_{b_i} + 1e-6). ema_rate 0 (FastGen's default) uses this batch's means alone.
    Its state (`state_dict`) is the bins' averages: a plugin checkpoints it with the run.
    """

    def __init__(self, bins: int = 10, sigma_min: float = 0.002, sigma_max: float = 80.0, ema_rate: float = 0.0) -> None:
        if bins < 1:
            raise ValueError(f"ratio normaliser: bins={bins}; use at least 1")
        if not 0 <= ema_rate < 1:
            raise ValueError(f"ratio normaliser: ema_rate={ema_rate}; use a rate in [0, 1)")
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"ratio normaliser: need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.bins, self.sigma_min, self.sigma_max, self.ema_rate = bins, sigma_min, sigma_max, ema_rate
        self.means = torch.ones(bins, dtype=torch.float32)

    def bin_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """[B] long: the bin of each sample's sigma (any shape with B elements), computed in float64;
        sigmas outside the range go to the first or last bin."""
        width = (self.sigma_max - self.sigma_min) / self.bins
        s = sigma.detach().reshape(-1).double()
        return ((s - self.sigma_min) / width).floor().long().clamp(0, self.bins - 1)

    def __call__(self, ratio: torch.Tensor, sigma: torch.Tensor, reduce: Reduce = None) -> torch.Tensor:
        """ratio [B] divided by its bin's updated average; updates the state. Non-finite ratios
        stay as they are and do not enter the averages."""
        with torch.no_grad():
            self.means = self.means.to(ratio.device)
            index = self.bin_index(sigma).to(ratio.device)
            finite = torch.isfinite(ratio)
            values = torch.where(finite, ratio.float(), 0.0)
            count = _summed(torch.bincount(index[finite], minlength=self.bins).float(), reduce)
            total = _summed(torch.zeros(self.bins, device=ratio.device).index_add_(0, index, values), reduce)
            seen = count > 0
            batch_means = total / (count + EPS)
            self.means = torch.where(seen, self.means * self.ema_rate + (1 - self.ema_rate) * batch_means, self.means)
            return ratio / (self.means[index] + EPS)

    def state_dict(self) -> dict[str, Any]:
        return {"means": self.means.detach().cpu().clone(), "bins": self.bins, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "ema_rate": self.ema_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.bins, self.sigma_min, self.sigma_max)
        theirs = (int(state["bins"]), float(state["sigma_min"]), float(state["sigma_max"]))
        if mine != theirs:
            raise ValueError(f"ratio normaliser state for bins/sigma range {theirs}, this one has {mine}")
        self.means = state["means"].detach().float().clone()


def normalised_weights(h: torch.Tensor, reduce: Reduce = None) -> torch.Tensor:
    """h / (mean h + 1e-6), the mean over the finite values of every process's batch."""
    with torch.no_grad():
        finite = torch.isfinite(h)
        total = _summed(torch.where(finite, h, 0.0).sum(), reduce)
        count = _summed(finite.sum().to(h.dtype), reduce)
        return h / (total / count.clamp(min=1) + EPS)


def f_distill_weights(
    logits: torch.Tensor | None,
    sigma: torch.Tensor,
    name: str,
    normaliser: RatioNormaliser | None = None,
    reduce: Reduce = None,
    lower: float = RATIO_LOWER,
    upper: float = RATIO_UPPER,
) -> torch.Tensor:
    """w [B] (float32, no gradient): h(r) of the divergence `name` normalised to batch mean 1, with
    r = `density_ratio(logits)` divided by `normaliser`'s bin averages (None: not binned).

    Reverse KL: exactly 1 for every sample, whatever the logits (None allowed), and the normaliser
    is not updated. `sigma` holds each sample's noise level (the DM term's)."""
    div = divergence(name)
    n = sigma.numel()
    if div.constant_weight:
        return torch.ones(n, device=sigma.device)
    if logits is None:
        raise ValueError(f"f-distill with {name}: the density ratio needs the GAN head's logits")
    r = density_ratio(logits, lower, upper)
    if r.shape[0] != n:
        raise ValueError(f"f-distill: {r.shape[0]} logits for {n} noise levels")
    if normaliser is not None:
        r = normaliser(r, sigma, reduce)
    return normalised_weights(div.h(r), reduce)


def weighted_distribution_matching_loss(
    x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_DM, keep) as `loss.distribution_matching_loss`, with sample i's DM gradient times
    weights[i]: L = 0.5 * mean((x - stopgrad(x - w * grad))^2), gradient w.r.t. x = w * grad / numel.

    `weights` [B] (no gradient) are f-distill's h weights; all ones give DMD2's L_DM exactly. A
    sample whose x, gradient or weight is not finite counts as 0 and passes no gradient."""
    grad = dm_gradient(x, mu_real, mu_fake) * weights.detach().reshape(-1, *[1] * (x.ndim - 1))
    keep = finite_samples(x.detach(), grad)
    target = (x - zero_dropped(grad, keep)).detach()
    return 0.5 * zero_dropped((x - target) ** 2, keep).mean(), keep
