"""Easy consistency tuning (ECT; Geng et al. 2024, arXiv 2406.14548) as pure functions.

ECT is consistency TRAINING on real images that starts from a diffusion model's weights: no
teacher network, no ODE solver. Symbols as in the paper and its code (locuslab/ect, training/loss.py):
  f(x, t)      the denoiser being tuned, EDM's D(x, sigma) with sigma = t (EDM preconditioning:
               during training the reference's ECMPrecond uses EDM's c_skip and c_out unchanged;
               only its sampling uses the boundary-offset ones with sigma_min = 0.003)
  t            ln t ~ N(P_mean, P_std^2), (-1.1, 2.0) on CIFAR-10
  r(t, s)      t (1 - q^-(s+1) n(t)), clipped at 0, with n(t) = 1 + k sigmoid(-b t) ("sigmoid"
               mapping, k = 8, b = 1) or n(t) = 1 ("const"); q = 2: r moves toward t as the stage
               s grows, the discrete consistency condition tending to the continuous one
  s            the stage: it grows by one every `period` of training (3.2 Mimg on CIFAR-10)
  e            one noise draw shared by both points: x_t = x + t e, x_r = x + r e
  loss         (sqrt(||f(x_t, t) - sg f(x_r, r)||_2^2 + c^2) - c) / (t - r) per sample, with the
               data x itself as the target where r = 0, and the same dropout mask in both calls.
c = 0 (the published CIFAR-10 run: ct_train.py's default, run_ecm.sh does not set it) makes the
per-sample loss the plain L2 distance over (t - r).

The functions take the network as a callable `f(x, sigma [n], labels)` (an EDM denoiser, or the
analytic test bed's); they hold no state. `stage_starts` turns the doubling period into the starts of
the contract's stages (`sidbench.methods.base.Stage`), so a resumed run keeps the boundaries.
Sampling is the registered "consistency" sampler (`sidbench.diffusion.sample_consistency`) with
sigma_min = ECT_SIGMA_MIN; the plugin is `method.py`, its settings `settings.py`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.ect.settings import MAPPINGS

__all__ = [
    "MAPPINGS", "ECT_SIGMA_MIN", "sample_t", "decay", "t_to_r", "stage_of", "stage_starts", "stage_count",
    "ect_loss",
]

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]

#: the boundary of the reference's sampling-time parameterisation (ECMPrecond's sigma_min): the
#: sampler's `ConsistencyParam(net, ECT_SIGMA_MIN)` computes the reference's eval-mode function
ECT_SIGMA_MIN = 0.003


def sample_t(n: int, p_mean: float = -1.1, p_std: float = 2.0, *, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """t = exp(P_mean + P_std u), u ~ N(0, 1): [n, 1, 1, 1], one standard-normal draw of that shape."""
    u = torch.randn([n, 1, 1, 1], device=device, dtype=dtype)
    return (u * p_std + p_mean).exp()


def decay(stage: int, q: float = 2.0) -> float:
    """q^-(s+1): the step t - r of stage s is this fraction of t (times n(t)); 1/2 at stage 0."""
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    return float(q) ** -(stage + 1)


def t_to_r(t: Tensor, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0, mapping: str = "sigmoid") -> Tensor:
    """r = t (1 - q^-(s+1) n(t)) clipped at 0, n(t) = 1 + k sigmoid(-b t) ("sigmoid") or 1 ("const").

    The sigmoid mapping takes larger relative steps at small t (n -> 1 + k/2 as t -> 0), where
    r clips to 0 in the early stages and the data becomes the target."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; use one of {', '.join(MAPPINGS)}")
    n = 1 + k * torch.sigmoid(-b * t) if mapping == "sigmoid" else torch.ones_like(t)
    return (t * (1 - decay(stage, q) * n)).clamp(min=0)


def stage_of(kimg: float, period_kimg: float) -> int:
    """The stage at `kimg` thousand images seen: floor(kimg / period)."""
    if period_kimg <= 0:
        raise ValueError(f"the stage period must be > 0 kimg, got {period_kimg}")
    return int(math.floor(kimg / period_kimg + 1e-9))


def stage_count(q: float = 2.0) -> int:
    """How many stages change anything in float32: from stage s on, t - r = q^-(s+1) n(t) t falls
    below float32's resolution of t (2^-24 relative) once s + 1 > 24 / log2(q); 24 stages at q = 2.
    A run lists these as its stages whatever its budget, so a resumed or extended run keeps them."""
    if q <= 1:
        raise ValueError(f"q must be > 1, got {q}")
    return max(1, math.ceil(24 / math.log2(q)))


def stage_starts(total_kimg: float, period_kimg: float) -> list[float]:
    """The start (kimg) of every stage a run of `total_kimg` enters: 0, P, 2P, ... below total.

    The reference counts in ticks (`--double` ticks of `--tick` kimg: 250 x 12.8 kimg = 3.2 Mimg on
    CIFAR-10) and enters stage s one iteration later than s P, because its tick 0 is a single
    iteration; these starts drop that iteration."""
    if total_kimg <= 0 or period_kimg <= 0:
        raise ValueError(f"total_kimg and period_kimg must be > 0, got {total_kimg} and {period_kimg}")
    count = max(1, math.ceil(total_kimg / period_kimg - 1e-9))
    return [s * float(period_kimg) for s in range(count)]


def ect_loss(
    f: Denoiser,
    x: Tensor,
    t: Tensor,
    r: Tensor,
    noise: Tensor,
    labels: Tensor | None = None,
    *,
    c: float = 0.0,
    shared_dropout: bool = True,
) -> Tensor:
    """Per-sample ECT loss [n] (float32): (sqrt(||f(x + t e, t) - sg T||^2 + c^2) - c) / (t - r),
    T = f(x + r e, r) where r > 0 and T = x where r = 0.

    `t`, `r`: [n, 1, 1, 1] with t > r >= 0; `noise`: e, shaped like x. The target call runs without
    a graph, from the random state the online call started from (the same dropout mask) unless
    `shared_dropout=False`; it is skipped when every r is 0 (as in the reference). Where r = 0 it
    runs at sigma = t and is discarded: the reference runs it at sigma 0 (ln 0 in c_noise) and
    replaces the NaNs; a non-finite target elsewhere is zeroed as there. With c = 0 the gradient of
    the square root is infinite where both outputs are equal; the step context sanitises it.
    """
    if c < 0:
        raise ValueError(f"the pseudo-Huber constant c must be >= 0, got {c}")
    device = x.device
    state = rng.capture(device) if shared_dropout else None
    online = f(x + t * noise, t.flatten(), labels).float()
    positive = r > 0
    if bool(positive.any()):
        r_eval = torch.where(positive, r, t)
        with torch.no_grad():
            if state is not None:
                rng.restore(state)
            target = f(x + r_eval * noise, r_eval.flatten(), labels).float()
        target = torch.where(positive, torch.nan_to_num(target), x.float())
    else:
        target = x.float()
    d2 = (online - target).square().reshape(len(x), -1).sum(dim=1)
    distance = (d2 + c**2).sqrt() - c if c > 0 else d2.sqrt()
    return distance / (t - r).flatten().float()
