"""Uni-Instruct's generator loss (Wang et al. 2025, arXiv 2505.20755) as pure functions, on SiDA's
networks: the fake score's encoder is the discriminator, so the density ratio r = p_data / q_G at
the noisy input comes from the same fake-score call as the fake score's denoised output.
docs/frontier.md#uni-instruct has the formulas, the derivation and the authors' code.

The objective at one noise level sigma, in SiD's units (SiD's per-sample normaliser wf in place of
the time weighting, summed over pixels):

    J = E_{x_t ~ q_t}[ 0.5 h(r(x_t)) |D_real(x_t) - D_fake(x_t)|^2 ] / wf,   h = r^2 f''(r)

(s_p - s_q = (D_real - D_fake) / sigma^2; reverse KL, h = 1, is SiD's Fisher divergence). Its
gradient w.r.t. the generator, with the networks frozen but differentiated w.r.t. their input and
D_fake the generator's own denoiser, is that of three terms (symbols: Delta = y_real - y_fake):
  SiD-type     h(r) Delta . (y_fake - x_g)                         SiD's loss in its alpha = 1 form
  Fisher-type  0.5 (h - r h')(r) |Delta|^2                         zero for forward KL
  DMD-type     c * Delta . x_g, with Delta and c held constant,    the gradient of J through r(x_t):
               c = [r h' sum(Delta . (y_fake - x_g)) - 0.5 r^2 h'' |Delta|^2] / sigma^2
               (grad_x r = r (s_p - s_q) = r Delta / sigma^2, DMD's direction; zero for reverse KL)
all divided by wf, r held constant (no gradient) in the weights. Reverse KL gives SiD with
alpha = 0.5 exactly; forward KL gives r times SiD's alpha = 1 loss plus a DMD-type term.
tests/methods/test_uni_instruct_loss.py checks on Gaussians, where every score and the ratio are
exact, that the three terms' gradient is the gradient of J and that dropping any one of them is not.

`ratio_gradient=False` drops the DMD-type term (r treated as a constant of x): what the authors'
code does in its forward-KL branch, whose SiD-type term is then the same
(tests/conformance/test_uni_instruct_conformance.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from sidbench.methods.f_divergence import divergence
from sidbench.methods.sid.loss import normaliser
from sidbench.methods.sid.sida_loss import LOGIT_CLAMP


def density_ratio(logits: torch.Tensor, logit_clamp: float = LOGIT_CLAMP) -> torch.Tensor:
    """r [B, 1, 1, 1] in float32, without gradient, from SiDA's discriminator logits l [B, 1, h, w]:
    exp of the mean logit over the positions, the mean clamped to [-logit_clamp, logit_clamp].

    The logistic discriminator's optimal logit is log(p_data / q_G), so exp(logit) is the ratio;
    each position of SiDA's map is a logit for a patch, and their mean is the image's log-ratio."""
    with torch.no_grad():
        mean = logits.detach().float().reshape(logits.shape[0], -1).mean(dim=1)
        return mean.clamp(-logit_clamp, logit_clamp).exp().reshape(-1, 1, 1, 1)


class Weights(NamedTuple):
    """The per-sample weights [B, 1, 1, 1] of the three terms before the division by wf."""

    sid: torch.Tensor  #: h(r)
    fisher: torch.Tensor  #: 0.5 (h - r h')(r)
    ratio_first: torch.Tensor  #: r h'(r): the DMD-type term's factor on sum(Delta . (y_fake - x_g))
    ratio_second: torch.Tensor  #: -0.5 r^2 h''(r): its factor on |Delta|^2


def divergence_weights(ratio: torch.Tensor, name: str) -> Weights:
    """The weights of divergence `name` at the ratios `ratio` (any shape; no gradient)."""
    div = divergence(name)
    r = ratio.detach()
    h, dh = div.h(r), div.dh(r)
    return Weights(sid=h, fisher=0.5 * (h - r * dh), ratio_first=r * dh, ratio_second=-0.5 * r**2 * div.d2h(r))


class Terms(NamedTuple):
    """The loss per element [B, C, H, W], term by term, each already divided by wf."""

    sid: torch.Tensor
    fisher: torch.Tensor
    dmd: torch.Tensor  #: value 0; its gradient w.r.t. x_g is c * Delta / wf

    def total(self) -> torch.Tensor:
        return self.sid + self.fisher + self.dmd


def generator_terms(
    x_g: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    ratio: torch.Tensor,
    sigma: torch.Tensor,
    name: str,
    ratio_gradient: bool = True,
    wf: torch.Tensor | None = None,
) -> Terms:
    """Uni-Instruct's generator loss per element, term by term (module docstring).

    x_g [B, C, H, W] is the generated image (with its graph), y_real and y_fake the teacher's and
    the fake score's denoised x_t = x_g + sigma n (frozen networks, graph through their input),
    `ratio` [B, 1, 1, 1] the density ratio at x_t (`density_ratio`), `sigma` [B, 1, 1, 1].
    `wf` defaults to SiD's normaliser mean|x_g - y_real| (clipped at 1e-5), no gradient.
    The method sums the terms over the kept samples and scales them as SiD's loss."""
    w = divergence_weights(ratio, name)
    scale = normaliser(x_g, y_real) if wf is None else wf.detach()
    delta = y_real - y_fake
    sid = w.sid * delta * (y_fake - x_g) / scale
    fisher = w.fisher * delta**2 / scale
    if ratio_gradient:
        with torch.no_grad():
            dims = tuple(range(1, x_g.ndim))
            d = delta.detach()
            c = (w.ratio_first * (d * (y_fake.detach() - x_g.detach())).sum(dim=dims, keepdim=True)
                 + w.ratio_second * (d**2).sum(dim=dims, keepdim=True)) / sigma**2
        dmd = (c / scale) * d * (x_g - x_g.detach())  # zero value, gradient c * Delta / wf
    else:
        dmd = torch.zeros_like(sid)
    return Terms(sid=sid, fisher=fisher, dmd=dmd)


def generator_loss(
    x_g: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    ratio: torch.Tensor,
    sigma: torch.Tensor,
    name: str,
    ratio_gradient: bool = True,
    wf: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-element sum of `generator_terms` (same shape as x_g)."""
    return generator_terms(x_g, y_real, y_fake, ratio, sigma, name, ratio_gradient, wf).total()
