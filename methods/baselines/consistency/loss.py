"""Consistency distillation (Song et al. 2023, arXiv 2303.01469) on EDM networks, as pure functions.

Symbols as in the paper and docs/baselines.md#consistency-distillation:
  f_theta(x, s)  the consistency function c_skip(s) x + c_out(s) F_theta(c_in(s) x, c_noise(s))
  s_min          the boundary, epsilon in the paper (0.002): f(x, s_min) = x
  t > t2         adjacent points t_{n+1} > t_n of the N-point Karras grid (N = 18 CIFAR-10, 40 ImageNet-64)
  x_t            x + t n; x_t2 one Heun step of the teacher's probability-flow ODE from x_t
  theta-         the target network, an EMA of theta with rate mu
Loss d(f_theta(x_t, t), stopgrad f_theta-(x_t2, t2)) per sample, the paper's weight lambda = 1:
`sidbench.methods.baselines.distance.image_distance` ("l2" or "lpips"), with the target computed
under no_grad.

The network F is EDM's raw UNet (`net.model` of an EDMPrecond), so the teacher's weights
initialise the consistency function unchanged, with the precond's own c_in and c_noise; only
c_skip, c_out change, and they differ from EDM's (Karras et al. 2022, arXiv 2206.00364) by the
s_min offset alone: `sidbench.teachers.networks.ConsistencyParam`, beside EDM's preconditioning.
The grid and its adjacent pairs, the teacher's Heun step and the multistep sampler are
`sidbench.diffusion`'s (`karras_points`, `adjacent_points`, `heun_step`, the "consistency" sampler).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sidbench.teachers.networks import ConsistencyParam, build_edm_network

__all__ = ["CONSISTENCY_PARAM", "consistency_constructor", "build_consistency_network", "ema_update_"]

#: Value of the constructor key "param" that marks a saved consistency function.
CONSISTENCY_PARAM = "consistency"


def consistency_constructor(edm_constructor: Mapping[str, Any], sigma_min: float = 0.002) -> dict[str, Any]:
    """The constructor to save with a consistency function: the EDM one plus
    ``"param": "consistency"`` and ``"consistency_sigma_min"``. `build_edm_network` rejects the
    extra keys, so a loader that does not know them fails loudly instead of building a plain
    denoiser from the same weights."""
    return {**edm_constructor, "param": CONSISTENCY_PARAM, "consistency_sigma_min": float(sigma_min)}


def build_consistency_network(constructor: Mapping[str, Any]) -> ConsistencyParam:
    """Inverse of `consistency_constructor`: build the EDM network from the remaining keys and wrap
    it (random weights; load the saved state_dict into the result with strict=True)."""
    kwargs = dict(constructor)
    param = kwargs.pop("param", None)
    if param != CONSISTENCY_PARAM:
        raise ValueError(f"constructor has param={param!r}, expected {CONSISTENCY_PARAM!r}")
    sigma_min = float(kwargs.pop("consistency_sigma_min", 0.002))
    return ConsistencyParam(build_edm_network(kwargs), sigma_min=sigma_min)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta, in place and without a graph; buffers are copied.
    mu in [0, 1) (0 on CIFAR-10: the target is the online network itself, copied exactly)."""
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"mu must lie in [0, 1), got {mu}")
    online_params = dict(online.named_parameters())
    target_params = dict(target.named_parameters())
    if online_params.keys() != target_params.keys():
        raise ValueError("target and online networks have different parameters")
    for name, p_target in target_params.items():
        if mu == 0.0:
            p_target.copy_(online_params[name])
        else:
            p_target.lerp_(online_params[name], 1.0 - mu)  # p + (1 - mu)(q - p) = mu p + (1 - mu) q
    # The networks' buffers are constant resampling filters: copy, never average.
    online_buffers = dict(online.named_buffers())
    for name, b_target in target.named_buffers():
        b_target.copy_(online_buffers[name])
