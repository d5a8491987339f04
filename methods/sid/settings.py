"""SiD's and SiDA's settings: each one's default (the paper's CIFAR-10 value), type, bounds and doc,
and the relations between them, checked by `sidbench.schema` before a run starts. The defaults are
`method=sid` / `method=sida` (`sidbench.config` stores them); preset/sid_<dataset>.yaml and
preset/sida_<dataset>.yaml set each dataset's published values (docs/sid.md). No torch here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.schema import override, setting
from sidbench.search_space import SearchSpace, log_uniform, uniform

#: Adam's betas of a SiD network unless a preset says otherwise (beta1 0; the FFHQ generator's is 0.9)
BETAS = [0.0, 0.999]


def _resamplers() -> Sequence[str]:
    from sidbench.augment import RESAMPLERS  # imports torch: only when checking

    return RESAMPLERS


@dataclass
class SiDSettings:
    """Score identity Distillation (Zhou et al. 2024, arXiv 2404.04057), docs/sid.md."""

    alpha: float = setting(1.2,
        doc="weight of the score difference in the generator loss (1.2 in the paper's best runs; 0.5 is the Fisher form)")
    sigma_init: float = setting(2.5, gt=0,
        doc="the generator's input sigma: G is the teacher evaluated at this one noise level")
    t_max: float = setting(800, gt=0, le=1000, doc="generator-loss noise: u ~ U(0, t_max/1000) on the Karras grid")
    lr: float = setting(1.0e-5, gt=0, doc="Adam's learning rate of both networks")
    lr_generator: float = setting("${.lr}", gt=0, doc="the generator's learning rate (default: lr)")
    lr_fake_score: float = setting("${.lr}", gt=0, doc="the fake score's learning rate (default: lr)")
    betas: list[float] = setting(BETAS, ge=0, lt=1, length=2, doc="Adam's betas of both networks")
    betas_generator: list[float] = setting("${.betas}", ge=0, lt=1, length=2,
        doc="the generator's Adam betas (default: betas; FFHQ's beta1 is 0.9)")
    betas_fake_score: list[float] = setting("${.betas}", ge=0, lt=1, length=2,
        doc="the fake score's Adam betas (default: betas)")
    eps: float = setting(1.0e-8, gt=0, doc="Adam's eps (1e-6 in the published fp16 runs)")
    loss_scale_generator: float = setting(100, gt=0,
        doc="the generator's loss is scaled by this (its update sees loss * scale / batch)")
    loss_scale_fake_score: float = setting(1, gt=0, doc="the fake score's loss is scaled by this")
    dropout: float | None = setting(0.13, ge=0, lt=1,
        doc="dropout of the generator and the fake score; null keeps the teacher's")
    augment_p: float = setting(0.12, ge=0, le=1,
        doc="EDM augmentation probability of the fake score's inputs; 0 turns it off")
    augment_resample: str = setting("sym6", choices=_resamplers,
        doc="EDM's wavelet resampler (sym6), or bilinear: cheaper (4-7x on CPU), a little blurrier")
    p_mean: float = setting(-1.2, doc="fake-score noise: ln sigma ~ N(p_mean, p_std^2)")
    p_std: float = setting(1.2, gt=0, doc="fake-score noise: ln sigma ~ N(p_mean, p_std^2)")

    #: `sidbench tune`'s ranges (sidbench.search_space): alpha around the paper's 0.5 (Fisher) to 1.5
    #: (arXiv 2404.04057 reports 1.0 and 1.2 best), the LR over the published 4e-6..1e-5 and the
    #: digits preset's 1e-4, the EMA ramp-up over the published 0.05 and the digits 0.15-0.25.
    search_space: ClassVar[SearchSpace] = {
        "method.alpha": uniform(0.5, 1.5),
        "method.lr": log_uniform(1e-6, 1e-3),
        "trainer.ema_rampup": uniform(0.02, 0.5),
    }


@dataclass
class SiDASettings(SiDSettings):
    """SiDA / SiD²A (Zhou et al. 2024, arXiv 2410.14919), docs/sid.md#sida: SiD's settings (its
    alpha is 1 on every dataset) plus the adversarial term's. Needs the dataset's real images."""

    alpha: float = override(SiDSettings, "alpha", 1.0,
        doc="weight of the score difference in SiD's loss (SiDA's 1.0 on every dataset)")
    discriminator_weight: float = setting(1.0, ge=0,
        doc="the fake score minimises loss_scale_fake_score * L_fs + this * L_D")
    adversarial_scale: float = setting(0.01, ge=0, doc="L_adv = adversarial_scale * sum_i a_i / B")
    adversarial_mix: float = setting(0.5, ge=0, le=1,
        doc="from adversarial_start_kimg the generator's loss is (1 - mix) L_sid + mix L_adv")
    generator_start_kimg: float = setting(100, ge=0,
        doc="before it only the fake score (and so the discriminator) trains")
    adversarial_start_kimg: float = setting(200, ge=0,
        doc="before it the generator's loss is L_sid alone; not before generator_start_kimg")
    clip_grad_value_fake_score: float | None = setting(1.0, gt=0,
        doc="the fake score's gradients clipped to [-v, v] per value (the generator's are not); null: no clip")
    generator_init: str | None = setting(
        None, exists=True, allowed="an existing generator file (a sidbench .safetensors or an EDM .pkl)",
        doc="start G from a trained SiD generator file (method=sid2a method.init= also takes a run or a released name)")
    published_batch_gpu: int | None = setting(None, ge=1,
        doc="the published runs' micro-batch, over which the adversarial BCE is averaged (another one is warned); null: none")

    #: SiD's ranges plus the adversarial term's weight (published 0.01) and mix (published 0.5)
    search_space: ClassVar[SearchSpace] = {
        **SiDSettings.search_space,
        "method.adversarial_scale": log_uniform(1e-3, 1e-1),
        "method.adversarial_mix": uniform(0.1, 0.9),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        m = cfg.method
        if float(m.adversarial_start_kimg) < float(m.generator_start_kimg):
            raise ConfigError(f"method.adversarial_start_kimg={m.adversarial_start_kimg} is before "
                              f"method.generator_start_kimg={m.generator_start_kimg}: the adversarial term is a "
                              "term of the generator's loss")


#: What `method.init` of method=sid2a may name (the message of a value that is none of them).
INIT_FORMS = ("a generator file (generator.safetensors or an EDM .pkl), a run folder, an MLflow run id, "
              "or a released generator's name (`sidbench list`)")


@dataclass
class SiD2ASettings(SiDASettings):
    """SiD²A (Zhou et al. 2024, arXiv 2410.14919), docs/sid.md#sida: SiDA with G and its EMA started
    from a trained SiD generator (the fake score and both optimisers fresh from the teacher, the
    schedule from 0)."""

    init: str | None = setting(None, doc=f"the generator G and its EMA start from: {INIT_FORMS}")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        m = cfg.method
        if m.get("generator_init"):
            raise ConfigError(f"method=sid2a takes its generator as method.init={m.generator_init}, "
                              "not method.generator_init")
        if not m.get("init"):
            raise ConfigError(f"method=sid2a starts from a trained generator: method.init=<{INIT_FORMS}>")
        from sidbench.methods.sid.init import check_init_form  # no torch

        check_init_form(str(m.init))


#: Uni-Instruct's divergences (`sidbench.methods.f_divergence` has each one's f, h, h', h''; a test checks the names)
UNI_INSTRUCT_DIVERGENCES = ("forward_kl", "reverse_kl", "jensen_shannon", "squared_hellinger", "jeffreys", "chi_square")


@dataclass
class UniInstructSettings(SiDASettings):
    """Uni-Instruct (Wang et al. 2025, arXiv 2505.20755), docs/frontier.md#uni-instruct: SiDA's
    networks and phases, the last phase's SiD loss replaced by the gradient of the expanded
    f-divergence, the density ratio from SiDA's discriminator. Needs the dataset's real images."""

    divergence: str = setting("forward_kl", choices=UNI_INSTRUCT_DIVERGENCES,
        doc="the f-divergence: forward_kl (the headline runs) | reverse_kl | jensen_shannon | squared_hellinger | jeffreys | chi_square")
    ratio_gradient: bool = setting(False,
        doc="true: add the DMD-type term (the gradient through the density ratio, derived here); false: r a constant of x, as the authors' code")
    adversarial_start_kimg: float = override(SiDASettings, "adversarial_start_kimg", 200,
        doc="from it the generator's loss is the f-divergence's (mixed with the adversarial term); before it SiD's, the warm start")
    generator_init: str | None = override(SiDASettings, "generator_init", None,
        doc="start G from a trained SiD generator, as the headline forward-KL runs did (SiD alpha 1.2); null: the teacher")
