"""Progressive distillation's settings: each one's default, type, bounds and doc, and the relations
between them (powers of two, a warm-up shorter than a stage), checked by `sidbench.schema` before a
run starts. Defaults are the authors' EDM-form CIFAR-10 settings (openai/consistency_models_cifar10,
configs/cifar10_ve_progressive_distillation.py: "config"; jcm/losses.py and jcm/train.py: "code");
preset/progressive_<dataset>.yaml sizes each dataset (batch 512 and no EMA for CIFAR-10 are trainer
settings: see its preset). docs/baselines.md#progressive-distillation. No torch here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.methods.baselines.settings import TrainingImagesSettings
from sidbench.schema import setting
from sidbench.search_space import SearchSpace, integer, log_uniform


def _annealing() -> Sequence[str]:
    from sidbench.trainer.schedule import ANNEALING

    return ANNEALING


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass
class ProgressiveSettings(TrainingImagesSettings):
    """Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) in EDM's sigma form."""

    start_steps: int = setting(4096, ge=1,
        doc="the first student's steps, a power of two (config training.start_scales; 8192 in the paper's original form)")
    final_steps: int = setting(1, ge=1,
        doc="halve until this many steps (a power of two, at most start_steps; code: 1)")
    stage_iterations: int = setting(50000, ge=1, doc="K, updates per stage (config training.distill_steps_per_iter)")
    few_step_stage_factor: int = setting(2, ge=1,
        doc="the 2-step and 1-step stages run factor x K, their LR annealed over it (code: 2; 1: every stage K)")
    lr: float = setting(5.0e-5, gt=0,
        doc="Adam's learning rate (config optim.lr; weight decay 0, eps 1e-8 = torch's default)")
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1, length=2,
        doc="Adam's betas (config optim.beta1 = 0.9; beta2 is optax's default 0.999)")
    warmup_iterations: int = setting(0, ge=0,
        doc="iterations of linear LR warm-up at the start of every stage (config optim.warmup = 0)")
    lr_anneal: str = setting("linear", choices=_annealing,
        doc="the LR over the rest of each stage, to lr_final: constant | linear | cosine (config optim.schedule)")
    lr_final: float = setting(0.0, ge=0, le=1, doc="the annealed LR factor at the end of a stage (config: 0)")
    clip_grad_norm: float | None = setting(1.0, gt=0,
        doc="gradient-norm clip of the batch mean of per-image pixel means (config optim.grad_clip); null: none")
    reset_ema: bool = setting(True,
        doc="restart the generator's EMA at every stage: N- and 2N-step students are different functions")
    dropout: float | None = setting(0.0, ge=0, lt=1,
        doc="the student's dropout (config model.dropout = 0.0); null keeps the teacher's")
    # The grid (loss.py): sigma(i/N) on Karras' schedule. Its last point: sigma_min in the EDM-form
    # code (training and sampling, config sampling.denoise = False); the paper's original form ends
    # with the x prediction at t = 0, which final_zero=true gives.
    final_zero: bool = setting(False,
        doc="the last step returns the x prediction at t = 0 (the original form) instead of ending at sigma_min")
    sigma_min: float = setting(0.002, gt=0, doc="the smallest sigma of the Karras grid")
    sigma_max: float = setting(80.0, gt=0, doc="the largest sigma of the Karras grid")
    rho: float = setting(7.0, gt=0, doc="the Karras grid's rho")

    #: `sidbench tune`'s ranges (sidbench.search_space): the LR over the published 5e-5..1e-4 and the
    #: digits 2e-4; the stage length K log-uniform from a few dozen updates to the published 50k (a K
    #: tuned at one budget fits that budget: stages of K updates must all fit in it, docs/tuning.md)
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-5, 1e-3),
        "method.stage_iterations": integer(16, 65536, log=True),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        m = cfg.method
        start, final, k = int(m.start_steps), int(m.final_steps), int(m.stage_iterations)
        if not is_power_of_two(start):
            raise ConfigError(f"method.start_steps={start} is not a power of two; halving must reach final_steps exactly")
        if not is_power_of_two(final):
            raise ConfigError(f"method.final_steps={final} is not a power of two")
        if final > start:
            raise ConfigError(f"method.final_steps={final} is above method.start_steps={start}; the step count only halves")
        if int(m.warmup_iterations) >= k:
            raise ConfigError(f"method.warmup_iterations={m.warmup_iterations} must be shorter than a stage "
                              f"(stage_iterations={k})")
