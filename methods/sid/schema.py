"""The settings of SiD's and SiDA's configs (`method/sid.yaml`, `method/sida.yaml`) and their allowed values, checked by
`sidbench.schema` before a run starts. Other keys of `cfg.method` are left alone."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidbench.schema import setting


def _resamplers() -> Sequence[str]:
    from sidbench.augment import RESAMPLERS  # imports torch: only when checking

    return RESAMPLERS


@dataclass
class SiDSchema:
    name: str = setting()
    alpha: float = setting()                      # any finite weight (0.5 and 1.2 in the paper)
    sigma_init: float = setting(gt=0)
    t_max: float = setting(gt=0, le=1000)         # u ~ U(0, t_max/1000)
    lr: float = setting(gt=0)
    lr_generator: float = setting(gt=0)
    lr_fake_score: float = setting(gt=0)
    g_beta1: float = setting(ge=0, lt=1)
    fake_beta1: float = setting(ge=0, lt=1)
    adam_eps: float = setting(gt=0)
    loss_scale_generator: float = setting(gt=0)
    loss_scale_fake_score: float = setting(gt=0)
    dropout: float | None = setting(ge=0, lt=1)   # null keeps the teacher's
    augment_p: float = setting(ge=0, le=1)
    augment_resample: str = setting(choices=_resamplers)
    p_mean: float = setting()
    p_std: float = setting(gt=0)


@dataclass
class SiDASchema(SiDSchema):
    discriminator_weight: float = setting(ge=0)
    adversarial_scale: float = setting(ge=0)
    adversarial_mix: float = setting(ge=0, le=1)
    generator_start_kimg: float = setting(ge=0)
    adversarial_start_kimg: float = setting(ge=0)
    fake_score_clip_value: float | None = setting(gt=0)
    generator_init: str | None = setting(exists=True, allowed="an existing generator file (a sidbench .safetensors or an EDM .pkl)")
    published_batch_gpu: int | None = setting(ge=1)   # the published runs' micro-batch (a run that differs is warned)
