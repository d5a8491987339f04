"""Preconditioning wrappers: turn a raw UNet F into a denoiser
``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), labels)``.

The wrapped UNet is the submodule ``model`` (hence the ``model.`` prefix of checkpoint keys).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .dhariwal import DhariwalUNet
from .songunet import SongUNet

__all__ = ["EDMPrecond", "VPPrecond", "ConsistencyParam", "consistency_coefficients", "MODEL_TYPES"]

MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

Coefficients = tuple[Tensor, Tensor, Tensor, Tensor]


class Precond(nn.Module):
    """Shared forward: input handling, the float32 wrapper arithmetic and the call of ``model``;
    a subclass gives the `coefficients` (a wrapper with the same attributes may borrow `forward`)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool,
                 model_type: str, model_kwargs: dict[str, Any]) -> None:
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model_type = model_type
        self.model = MODEL_TYPES[model_type](
            img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
            label_dim=label_dim, **model_kwargs)
        self.augment_dim = getattr(self.model.map_augment, "in_features", 0)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) for a float32 sigma of shape [B]."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        sigma: float | Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        return_bottleneck: bool = False,
        decode_first: int | None = None,
        force_fp32: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Denoise ``x`` [B, C, H, W] at noise level ``sigma`` (a number, a 0-d tensor or [B]).

        ``class_labels``: one-hot [B, label_dim] (None -> zeros); ``augment_labels``: [B, augment_dim]
        (None -> zeros). Returns D(x) in float32, and with ``return_bottleneck=True`` also the
        encoder's lowest-resolution features ([B, C', H/2^(L-1), W/2^(L-1)], in the net's dtype).
        ``decode_first=k`` (with ``return_bottleneck``): D(x) of the first k samples only, the
        others stopping after the encoder (SiDA's real batch needs only its encoder's logits).
        """
        x = x.to(torch.float32)
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(batch)
        elif sigma.numel() != batch:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {batch}")

        labels = None
        if self.label_dim:
            if class_labels is None:
                labels = torch.zeros([batch, self.label_dim], device=x.device)
            else:
                labels = class_labels.to(device=x.device, dtype=torch.float32).reshape(-1, self.label_dim)
        augment = None
        if self.augment_dim:
            if augment_labels is None:
                augment = torch.zeros([batch, self.augment_dim], device=x.device)
            else:
                augment = augment_labels.to(device=x.device, dtype=torch.float32).reshape(-1, self.augment_dim)

        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in (c_skip, c_out, c_in))
        # EDM's use_fp16: feed the UNet half-precision inputs on CUDA (its layers cast their
        # weights); otherwise float32, or whatever an enclosing autocast region chooses.
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32

        if decode_first is None:
            out = self.model((c_in * x).to(dtype), c_noise, labels, augment, return_bottleneck=return_bottleneck)
        else:
            if not return_bottleneck or not 0 <= decode_first <= batch:
                raise ValueError(f"decode_first={decode_first} needs return_bottleneck and 0 <= it <= the batch ({batch})")
            out = self.model((c_in * x).to(dtype), c_noise, labels, augment, return_bottleneck=True,
                             decode_first=decode_first)
            x, c_skip, c_out = x[:decode_first], c_skip[:decode_first], c_out[:decode_first]
        f_x, features = out if return_bottleneck else (out, None)
        d_x = c_skip * x + c_out * f_x.to(torch.float32)
        return (d_x, features) if return_bottleneck else d_x


class EDMPrecond(Precond):
    """EDM's preconditioning (Karras et al. 2022, Table 1), with ``sd = sigma_data``:
    c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
    c_noise = ln(sigma)/4."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor) -> Coefficients:
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(Precond):
    """Variance-preserving preconditioning (Song et al. 2021 in EDM's form): c_skip = 1,
    c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma) with
    t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1+sigma^2)) - beta_min) / beta_d."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        # Plain floats (not tensors) so that building on the meta device works.
        self.sigma_min = self._sigma_float(self.epsilon_t)
        self.sigma_max = self._sigma_float(1.0)

    def _sigma_float(self, t: float) -> float:
        return math.sqrt(math.expm1(0.5 * self.beta_d * t ** 2 + self.beta_min * t))

    def sigma(self, t: float | Tensor) -> Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: float | Tensor) -> Tensor:
        """t(sigma), the inverse of ``sigma``."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


def consistency_coefficients(s: Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) = (sd^2 / ((s - s_min)^2 + sd^2), (s - s_min) sd / sqrt(s^2 + sd^2)): the
    consistency parametrisation (Song et al. 2023, arXiv 2303.01469) in EDM's form.

    At s = s_min: c_skip = 1, c_out = 0 exactly, so f(x, s_min) = x (the boundary condition) for
    any F; with s_min = 0 they are EDM's c_skip and c_out. (The 0.5 default is for callers without
    a network; `ConsistencyParam` passes its network's sigma_data.)"""
    sd2 = sigma_data**2
    c_skip = sd2 / ((s - sigma_min) ** 2 + sd2)
    c_out = (s - sigma_min) * sigma_data / (s**2 + sd2).sqrt()
    return c_skip, c_out


class ConsistencyParam(nn.Module):
    """f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s), labels) around an EDMPrecond's F:
    a consistency function (arXiv 2303.01469) with the EDM network's weights.

    ``net.model`` (F) becomes this module's ``model``, shared, not copied: the state_dict keys are
    the EDM network's ("model.*"), so a teacher state_dict loads with strict=True and a saved
    consistency function is an ordinary EDM weight file. c_in and c_noise come from the precond's
    own `coefficients` (c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4): the teacher's weights see
    the inputs they were trained on. The precond is kept as a plain attribute, not a submodule, so
    it adds no keys; it holds no weights of its own besides ``model``.

    Only EDMPrecond: a VPPrecond's F predicts noise (c_out = -sigma), which these c_skip, c_out
    would not turn into a consistency function. Consistency distillation trains it; the sampler
    "consistency" (`sidbench.diffusion.sample_consistency`) wraps a saved plain EDM network in it.
    """

    def __init__(self, net: nn.Module, sigma_min: float = 0.002) -> None:
        super().__init__()
        if not isinstance(net, EDMPrecond):
            raise ValueError(f"ConsistencyParam needs an EDMPrecond network, got {type(net).__name__}")
        self.model = net.model
        object.__setattr__(self, "_edm", net)  # not registered: no "_edm." prefix in the state_dict
        self.sigma_min = float(sigma_min)
        self.sigma_data = net.sigma_data
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim
        self.use_fp16, self.augment_dim = net.use_fp16, net.augment_dim

    def coefficients(self, sigma: Tensor) -> Coefficients:
        """(c_skip, c_out) of the consistency parametrisation, (c_in, c_noise) of the EDMPrecond."""
        _, _, c_in, c_noise = self._edm.coefficients(sigma)
        return (*consistency_coefficients(sigma, self.sigma_min, self.sigma_data), c_in, c_noise)

    #: f(x, sigma): EDMPrecond's input handling (labels, sigma shapes, fp16 on CUDA, float32 out)
    #: around these coefficients.
    forward = Precond.forward
