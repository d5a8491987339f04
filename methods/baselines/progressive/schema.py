"""The settings of progressive distillation's config (`method/progressive.yaml`) and their allowed
values, checked by `sidbench.schema` before a run starts; `method.check_config` adds the relations
between them (powers of two, a warm-up shorter than a stage). Other keys are left alone."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidbench.methods.baselines.teacher_samples import TrainingImagesSchema
from sidbench.schema import setting


def _annealing() -> Sequence[str]:
    from sidbench.trainer.schedule import ANNEALING

    return ANNEALING


@dataclass
class ProgressiveSchema(TrainingImagesSchema):
    name: str = setting()
    start_steps: int = setting(ge=1)
    final_steps: int = setting(ge=1)
    stage_iterations: int = setting(ge=1)
    few_step_stage_factor: int = setting(ge=1)
    lr: float = setting(gt=0)
    adam_betas: list[float] = setting(ge=0, lt=1)
    lr_warmup: int = setting(ge=0)
    lr_anneal: str = setting(choices=_annealing)
    lr_final: float = setting(ge=0, le=1)
    clip_grad_norm: float | None = setting(gt=0)
    reset_ema: bool = setting()
    dropout: float | None = setting(ge=0, lt=1)   # null keeps the teacher's
    final_zero: bool = setting()
    sigma_min: float = setting(gt=0)
    sigma_max: float = setting(gt=0)
    rho: float = setting(gt=0)
