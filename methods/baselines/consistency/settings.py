"""Consistency distillation's settings: each one's default, type, bounds and doc, and the relations
between them (the sampling sigmas within the grid, the LPIPS pooling of its backbone, LPIPS on gray
images), checked by `sidbench.schema` before a run starts. Defaults are the published CIFAR-10
settings (openai/consistency_models_cifar10, configs/cifar10_ve_cd.py and launch.sh);
preset/consistency_<dataset>.yaml sizes each dataset; docs/baselines.md#consistency-distillation
gives each published setting's source. No torch here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.methods.baselines.settings import TrainingImagesSettings
from sidbench.schema import setting
from sidbench.search_space import SearchSpace, integer, log_uniform, uniform

def _distances() -> Sequence[str]:
    from sidbench.methods.baselines.distance import DISTANCES  # imports torch: only when checking

    return DISTANCES


def _backbones() -> Sequence[str]:
    from sidbench.methods.baselines.distance import LPIPS_BACKBONES

    return tuple(LPIPS_BACKBONES)


def _poolings() -> Sequence[str]:
    from sidbench.methods.baselines.distance import LPIPS_POOLINGS

    return LPIPS_POOLINGS


@dataclass
class ConsistencySettings(TrainingImagesSettings):
    """Consistency distillation (Song et al. 2023, arXiv 2303.01469) on EDM networks."""

    num_points: int = setting(18, ge=2,
        doc="N, points of the Karras grid; t > t2 adjacent (CIFAR-10 18, ImageNet 64 40)")
    mu: float = setting(0.0, ge=0, lt=1,
        doc="the target network's EMA rate, fixed from the first update (CIFAR-10 0: the online weights; ImageNet 64 0.95)")
    distance: str = setting("l2", choices=_distances,
        doc="l2 | lpips (the published FIDs' choice: needs the lpips package and its weights offline)")
    lpips_net: str = setting("vgg", choices=_backbones, doc="LPIPS backbone: vgg | alex | squeeze (published: vgg)")
    lpips_pooling: str = setting("max", choices=_poolings,
        doc="VGG pooling: max (standard LPIPS: CIFAR-10's code) | avg (piq's: ImageNet 64's code)")
    lpips_resize: int | None = setting(224, ge=1,
        doc="images are resized (bilinear) to this for LPIPS, as both published codes do; null: as they are")
    lpips_adapt_gray: bool = setting(False,
        doc="LPIPS on 1-channel images: repeat them to RGB (a change of metric you must opt into)")
    sampling_sigmas: list[float] = setting([80.0], gt=0,
        doc="the sampler's sigmas: [80.0] one step at sigma_max; [80.0, 1.3824]: ImageNet 64's published two steps")
    lr: float = setting(4.0e-4, gt=0, doc="RAdam's learning rate: CIFAR-10's for l2 and LPIPS (batch 512)")
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1, length=2,
        doc="RAdam's betas, as published (torch's and optax's defaults)")
    eps: float = setting(1.0e-8, gt=0, doc="RAdam's eps, as published")
    clip_grad_norm: float | None = setting(None, gt=0, doc="gradient-norm clip; null: none, as published")
    dropout: float | None = setting(0.0, ge=0, lt=1,
        doc="f's dropout, as published on both datasets (the teacher keeps its own); null: the teacher's")
    sigma_min: float = setting(0.002, gt=0, doc="the boundary: f(x, sigma_min) = x")
    sigma_max: float = setting(80.0, gt=0, doc="the largest sigma of the Karras grid")
    rho: float = setting(7.0, gt=0, doc="the Karras grid's rho")

    #: `sidbench tune`'s ranges (sidbench.search_space): the target EMA rate mu over the published 0
    #: (CIFAR-10) and 0.95 (ImageNet 64), N over the published 18 and 40, the LR over the published
    #: 8e-6..4e-4, the EMA ramp-up as SiD's
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-6, 2e-3),
        "method.mu": uniform(0.0, 0.99),
        "method.num_points": integer(8, 80),
        "trainer.ema_rampup": uniform(0.02, 0.5),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        from sidbench.methods.baselines.distance import check_pooling

        m = cfg.method
        try:
            check_pooling(str(m.lpips_net), str(m.lpips_pooling))
        except ValueError as e:
            raise ConfigError(f"method.lpips_pooling={m.lpips_pooling!r} with method.lpips_net={m.lpips_net!r}: {e}; "
                              "use method.lpips_pooling=max with that backbone") from e
        s = [float(v) for v in m.sampling_sigmas]
        lo, hi = float(m.sigma_min), float(m.sigma_max)
        if not s or any(not lo <= v <= hi for v in s) or any(a <= b for a, b in zip(s, s[1:])):
            # (no "[sigma_min=...]": the command line prints through rich, which would read it as markup)
            raise ConfigError(f"method.sampling_sigmas={s} must be a decreasing list of sigmas between "
                              f"sigma_min={lo} and sigma_max={hi}, e.g. [80.0] or [80.0, 0.8]")
        if m.distance == "lpips" and int(cfg.dataset.channels) == 1 and not m.lpips_adapt_gray:
            raise ConfigError("method.distance=lpips needs RGB images; set method.lpips_adapt_gray=true to repeat a gray "
                              "image to 3 channels, or use method.distance=l2")
