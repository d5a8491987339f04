"""What progressive and consistency distillation share: a student copied from the teacher's
denoiser (with the config's dropout), trained on x from `TrainingImages` (`method.data`: the
teacher's own samples or real images) with an optional gradient-norm clip."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.methods.base import Method
from sidbench.methods.baselines.teacher_samples import TrainingImages
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


class TeacherCopy(Method):
    """A student copied from the teacher's denoiser with the config's dropout (ECT's is tuned on
    real images alone; `DenoiserStudent` adds the choice of x)."""

    @staticmethod
    def student_overrides(cfg: DictConfig) -> dict[str, Any]:
        """Constructor changes of the student: its dropout, when the config sets one."""
        return {"dropout": cfg.dropout} if cfg.get("dropout") is not None else {}

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {"teacher": dict(teacher_constructor),
                cls.generator_name: {**teacher_constructor, **cls.student_overrides(cfg)}}


class DenoiserStudent(TeacherCopy):
    """A student copied from the teacher's denoiser, trained on x from `TrainingImages`."""

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.images = TrainingImages(cfg, teacher, full_cfg, device)

    @classmethod
    def uses_real_data(cls, cfg: DictConfig) -> bool:
        return str(cfg.data) == "real"

    def prepare(self, ctx: StepContext) -> None:
        self.images.prepare(ctx)

    def update(self, ctx: StepContext, loss, names: str | list[str] | None = None) -> dict[str, torch.Tensor]:  # noqa: ANN001 - ctx.update's loss function
        """The student's update (with `names`, the networks trained with it) on this iteration's x,
        with the configured clip over them all; logs whether x was real data."""
        clip = self.cfg.get("clip_grad_norm")
        logs = ctx.update(names or self.generator_name, loss, clip_grad_norm=None if clip is None else float(clip))
        ctx.log("real_data", float(self.images.mode == "real"))
        return logs
