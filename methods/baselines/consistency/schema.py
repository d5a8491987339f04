"""The settings of consistency distillation's config (`method/consistency.yaml`) and their allowed
values, checked by `sidbench.schema` before a run starts; `method.check_config` adds the relations
between them (sampling sigmas within [sigma_min, sigma_max]). Other keys are left alone."""
from __future__ import annotations

from dataclasses import dataclass

from sidbench.methods.baselines.distance import DISTANCES, LPIPS_BACKBONES, LPIPS_POOLINGS
from sidbench.methods.baselines.teacher_samples import TrainingImagesSchema
from sidbench.schema import setting


@dataclass
class ConsistencySchema(TrainingImagesSchema):
    name: str = setting()
    num_points: int = setting(ge=2)
    mu: float = setting(ge=0, lt=1)
    distance: str = setting(choices=DISTANCES)
    lpips_net: str = setting(choices=tuple(LPIPS_BACKBONES))
    lpips_pooling: str = setting(choices=LPIPS_POOLINGS)
    lpips_resize: int | None = setting(ge=1)
    lpips_adapt_gray: bool = setting()
    sampling_sigmas: list[float] = setting(gt=0)
    lr: float = setting(gt=0)
    betas: list[float] = setting(ge=0, lt=1)
    eps: float = setting(gt=0)
    clip_grad_norm: float | None = setting(gt=0)
    dropout: float | None = setting(ge=0, lt=1)   # null keeps the teacher's
    sigma_min: float = setting(gt=0)
    sigma_max: float = setting(gt=0)
    rho: float = setting(gt=0)
