"""The settings of DMD2 and DMD: each one's default, type, bounds and doc, and the relations between
them, checked by `sidbench.schema` before a run starts. The defaults are DMD2's published ImageNet
64 (EDM) settings (docs/baselines.md#dmd2); DMD shares them (its code is not public) and adds its
regression; preset/dmd2_<dataset>.yaml and preset/dmd_<dataset>.yaml adapt the other datasets.
No torch here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.methods.baselines.settings import TeacherSampleSettings
from sidbench.schema import override, setting
from sidbench.search_space import SearchSpace, integer, log_uniform, uniform


def _distances() -> Sequence[str]:
    from sidbench.methods.baselines.distance import DISTANCES  # imports torch: only when checking

    return DISTANCES


@dataclass
class DistributionMatchingSettings:
    """What DMD2 and DMD share (DMD2's authors' EDM code, main/edm/train_edm.py)."""

    sigma_init: float = setting(80.0, gt=0,
        doc="the generator's input sigma: G is the teacher evaluated once at sigma_init on sigma_init z")
    dropout: float | None = setting(0.0, ge=0, lt=1,
        doc="dropout of the generator and fake score, whatever the teacher's (edm_network.py:11); null keeps the teacher's")
    lr: float = setting(2.0e-6, gt=0, doc="AdamW's learning rate of every network")
    lr_generator: float = setting("${.lr}", gt=0, doc="the generator's learning rate (default: lr)")
    lr_fake_score: float = setting("${.lr}", gt=0,
        doc="the fake score's (and the GAN head's) learning rate (default: lr)")
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1, length=2, doc="AdamW's betas of every network")
    betas_generator: list[float] = setting("${.betas}", ge=0, lt=1, length=2,
        doc="the generator's AdamW betas (default: betas)")
    betas_fake_score: list[float] = setting("${.betas}", ge=0, lt=1, length=2,
        doc="the fake score's (and GAN head's) AdamW betas (default: betas)")
    weight_decay: float = setting(0.01, ge=0, doc="AdamW's weight decay")
    # 500 / 7: diffusers' 500-step linear warm-up, then constant (main/edm/train_edm.py:111-123), and
    # accelerate steps a prepared schedule once per process per call, 7 GPUs (the authors' note,
    # train_edm.py:110): full LR from iteration 72. Both schedules advance every iteration.
    warmup_iterations: float = setting(500 / 7, ge=0,
        doc="iterations of linear LR warm-up (may be fractional: the factor is min(t / warmup, 1))")
    clip_grad_norm: float | None = setting(10.0, gt=0, doc="gradient-norm clip of every update; null: none")
    ttur: int = setting(5, ge=1,
        doc="two time-scale update rule: the generator steps every ttur-th iteration, the fake score every one")
    grid_points: int = setting(1000, ge=2, doc="the Karras grid (0.002..80, rho 7) every noise level is drawn from")
    dm_index_min: int = setting(20, ge=0, doc="the distribution-matching loss draws its grid index in [min, max]")
    dm_index_max: int = setting(980, ge=0, doc="the distribution-matching loss draws its grid index in [min, max]")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        m = cfg.method
        if not int(m.dm_index_min) <= int(m.dm_index_max) < int(m.grid_points):
            raise ConfigError(f"method.dm_index_min={m.dm_index_min}, dm_index_max={m.dm_index_max}: need "
                              f"0 <= min <= max < method.grid_points={m.grid_points}")


@dataclass
class GANSettings:
    enabled: bool = setting(False,
        doc="the GAN head on the fake score's bottleneck (reads real images); false: the data-free TTUR-only run")
    generator_weight: float = setting(3.0e-3, ge=0, doc="L_G = L_DM + generator_weight * L_GAN_G")
    discriminator_weight: float = setting(1.0e-2, ge=0, doc="L_fake = L_fs + discriminator_weight * L_GAN_D")


@dataclass
class DMD2Settings(DistributionMatchingSettings):
    """DMD2 (Yin et al. 2024, arXiv 2405.14867) in the authors' EDM (ImageNet 64) form."""

    gan: GANSettings = setting(GANSettings, doc="DMD2's optional GAN head")

    #: `sidbench tune`'s ranges (sidbench.search_space): the LR over the published 2e-6 and the digits
    #: 1e-4, the TTUR ratio around the published 5, the GAN head's loss weights (published 3e-3 and
    #: 1e-2) only when the head is on, and the EMA ramp-up as SiD's.
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-6, 1e-3),
        "method.ttur": integer(1, 10),
        "method.gan.generator_weight": log_uniform(1e-4, 1e-1, when="method.gan.enabled"),
        "method.gan.discriminator_weight": log_uniform(1e-3, 1.0, when="method.gan.enabled"),
        "trainer.ema_rampup": uniform(0.02, 0.5),
    }


@dataclass
class RegressionSettings:
    weight: float = setting(0.25, ge=0, doc="lambda_reg of the paper: L_G = L_DM + weight * d(G(z_ref), y_ref)")
    distance: str = setting("l2", choices=_distances,
        doc="d: l2 | lpips (the paper's; needs the lpips package and its weights)")
    lpips_adapt_gray: bool = setting(False,
        doc="LPIPS on 1-channel images: repeat them to RGB (a change of metric you must opt into)")


@dataclass
class DMDSettings(TeacherSampleSettings, DistributionMatchingSettings):
    """DMD (Yin et al. 2023, arXiv 2311.18828): distribution matching plus a regression onto
    (noise, teacher ODE sample) pairs, the teacher samples made before training."""

    ttur: int = override(DistributionMatchingSettings, "ttur", 1,
        doc="the generator steps every ttur-th iteration (DMD has no TTUR: 1)")
    num_teacher_samples: int = override(TeacherSampleSettings, "num_teacher_samples", 10000,
        doc="(noise, teacher sample) pairs made before training; not published")
    teacher_sample_batch: int = override(TeacherSampleSettings, "teacher_sample_batch", 500)
    teacher_sample_seed: int = override(TeacherSampleSettings, "teacher_sample_seed", 0)
    teacher_samples_file: str | None = setting(None, exists=True,
        doc="pairs made earlier (a sidbench teacher-samples file); they must be this teacher's")
    regression: RegressionSettings = setting(RegressionSettings, doc="DMD's regression onto the teacher's ODE pairs")

    #: `sidbench tune`'s ranges: the fake score's and the generator's LRs apart (DMD has no TTUR; the
    #: digits preset runs the generator 5x slower), the regression weight around the paper's 0.25
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-6, 1e-3),
        "method.lr_generator": log_uniform(1e-6, 1e-3),
        "method.regression.weight": log_uniform(0.01, 10.0),
        "trainer.ema_rampup": uniform(0.02, 0.5),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        reg = cfg.method.regression
        if reg.distance == "lpips" and int(cfg.dataset.channels) == 1 and not reg.lpips_adapt_gray:
            raise ConfigError("method.regression.distance=lpips on a 1-channel teacher needs an adaptation: set "
                              "method.regression.lpips_adapt_gray=true (the channel is repeated to RGB) or use distance=l2")


#: f-distill's divergences (`sidbench.methods.f_divergence` has each one's f and h; a test checks the names)
F_DISTILL_DIVERGENCES = ("reverse_kl", "forward_kl", "jensen_shannon", "squared_hellinger", "jeffreys")


@dataclass
class FDistillGANSettings(GANSettings):
    enabled: bool = override(GANSettings, "enabled", True,
        doc="the GAN head on the fake score's bottleneck: f-distill's density ratio comes from its logits (reads real images)")


@dataclass
class FDistillSettings(DMD2Settings):
    """f-distill (Xu et al. 2025, arXiv 2502.15681): DMD2 with each sample's distribution-matching
    gradient weighted by h(r) = r^2 f''(r), r = exp(logit) of the GAN head at the DM term's x_t.
    Defaults: the ImageNet 64 run of NVIDIA FastGen's f-distill configs (docs/frontier.md#f-distill)."""

    gan: FDistillGANSettings = setting(FDistillGANSettings, doc="DMD2's GAN head, whose logits give the density ratio")
    divergence: str = setting("jensen_shannon", choices=F_DISTILL_DIVERGENCES,
        doc="the f-divergence: reverse_kl (h = 1, DMD2) | forward_kl | jensen_shannon | squared_hellinger | jeffreys")
    ratio_min: float = setting(0.1, gt=0, doc="the density ratio exp(logit) is clamped to [ratio_min, ratio_max]")
    ratio_max: float = setting(20.0, gt=0, doc="the density ratio exp(logit) is clamped to [ratio_min, ratio_max]")
    ratio_bins: int = setting(10, ge=0,
        doc="r is divided by a running mean of r in its sigma bin (equal widths over [0.002, 80]); 0: not binned")
    ratio_ema: float = setting(0.5, ge=0, lt=1,
        doc="EMA rate of those per-bin means (0: this micro-batch's means alone)")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        m = cfg.method
        if float(m.ratio_min) >= float(m.ratio_max):
            raise ConfigError(f"method.ratio_min={m.ratio_min} must be below method.ratio_max={m.ratio_max}")
        if m.divergence != "reverse_kl" and not m.gan.enabled:
            raise ConfigError(f"method.divergence={m.divergence} weighs by the density ratio, which comes from the GAN head: "
                              "set method.gan.enabled=true (or method.divergence=reverse_kl, which is DMD2)")
