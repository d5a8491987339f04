"""Easy consistency tuning (ECT; Geng et al. 2024, arXiv 2406.14548) as a method plugin on EDM
networks; the formulas are in `loss.py`, the settings in `settings.py`, docs/ect-scd.md#ect.

ECT tunes a copy of the teacher into a consistency function on the dataset's images: no teacher
call, no ODE solver. One iteration: real x (`ctx.real`), ln t ~ N(P_mean, P_std^2), r = r(t, s) of
the current stage s, one noise e for both points, the loss (pseudo-Huber of f(x + t e, t) - sg f(x +
r e, r)) / (t - r) with the image itself as the target where r = 0, both calls from one random state
(the same dropout mask), summed over the micro-batch (the step context divides by the batch: the
reference's mean), one RAdam step (no warm-up, no clipping, as published).

The stages. s grows by one every `stage_kimg`: each is a contract `Stage` (nothing is reset, only
r moves toward t), so the trainer enters them at exact kimg and a resumed run keeps them (the
method checkpoints the stage it is in). `loss.stage_count(q)` of them are listed, whatever the
budget: after that many, t - r is below float32's resolution of t.

The network. During training the generator is the EDM network as it is (EDM's c_skip, c_out: the
reference's train-mode ECMPrecond); the saved generator is that plain EDM network, and its recipe,
the registered "consistency" sampler at sigma_min 0.003, wraps it in `ConsistencyParam(net, 0.003)`,
the reference's eval-mode function: one step f(80 z, 80), or the published two steps [80, 0.821].
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor

from sidbench.methods.base import Recipe, Stage, register_method
from sidbench.methods.baselines.ect.loss import ect_loss, sample_t, stage_count, stage_starts, t_to_r
from sidbench.methods.baselines.ect.settings import ECTSettings
from sidbench.methods.baselines.student import TeacherCopy
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


@register_method("ect")
class ECT(TeacherCopy):
    description = "Easy consistency tuning (Geng et al. 2024): a consistency model tuned from the teacher on real images"
    settings = ECTSettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.generator = teacher.copy_network(**self.student_overrides(cfg))
        # RAdam, as published: constant lr, no warm-up, no weight decay, no clipping
        self.opt = torch.optim.RAdam(self.generator.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas),
                                     eps=float(cfg.eps))
        self.stage = 0

    @classmethod
    def uses_real_data(cls, cfg: DictConfig) -> bool:
        return True

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        return {}  # ECT never calls the teacher: its weights are only the start

    def stages(self) -> list[Stage]:
        period = float(self.cfg.stage_kimg)
        starts = stage_starts(stage_count(float(self.cfg.q)) * period, period)
        return [Stage(f"stage {s}", start=start, unit="kimg") for s, start in enumerate(starts)]

    def enter_stage(self, index: int, stage: Stage) -> None:
        self.stage = index

    def state_dict(self) -> dict[str, int]:
        return {"stage": self.stage}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stage = int(state["stage"])

    def sampling(self) -> Recipe:
        sigmas = [float(s) for s in self.cfg.sampling_sigmas]
        return {"sampler": "consistency", "sigmas": sigmas, "sigma_min": float(self.cfg.sigma_min), "nfe": len(sigmas)}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, Tensor]:
        clip = self.cfg.get("clip_grad_norm")
        logs = ctx.update("generator", lambda n: self._loss(ctx, n), clip_grad_norm=None if clip is None else float(clip))
        ctx.log("stage", float(self.stage))
        return logs

    def _loss(self, ctx: StepContext, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        x, labels = ctx.real(n)
        t = sample_t(n, float(cfg.p_mean), float(cfg.p_std), device=self.device)
        r = t_to_r(t, self.stage, q=float(cfg.q), k=float(cfg.k), b=float(cfg.b), mapping=str(cfg.mapping))
        noise = torch.randn_like(x)
        loss = ect_loss(ctx.net("generator").train(), x, t, r, noise, labels, c=float(cfg.c))
        ctx.log("data_target", (r == 0).float().mean())  # the share of samples whose target is the image
        total = loss.sum()
        return total, {"ect": total.detach() / n}
