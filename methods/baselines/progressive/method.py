"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) as a method plugin, in EDM's
sigma form (Karras et al. 2022, arXiv 2206.00364); the formulas are in `loss.py`.

A run is a sequence of stages. In stage k the student has N_k = start_steps / 2^k steps and learns,
at a step index i uniform in {0, ..., N_k - 1}, that ONE Euler step t -> t3 of its own should land
where the stage's teacher lands after TWO Euler steps t -> t2 -> t3 (`loss.teacher_target`), with
the loss max(1/t^2, 1) |D_student(x_t, t) - x_tilde|^2 averaged over each image's pixels; the
loss function returns the sum of those per-image means and the step context divides it by the
batch, so the clipped gradient is that of the batch mean of pixel means, as in every reference.

Stage lengths (`stage_lengths`): `stage_iterations` (K) updates, except the stages whose student
has 2 steps or 1, which run `few_step_stage_factor` x K (2 in the authors' EDM-form code). Each
stage is a `Stage(unit="iterations")`: on entering it the trainer resets the student's Adam state
and restarts its LR schedule, which this method then sets to the stage's own length (warm-up,
then annealed over the rest of the stage), and, by default, restarts the generator's EMA (an
N-step and a 2N-step student are different functions; averaging across them means nothing);
then `enter_stage` copies the student into the frozen teacher of the new stage and N halves,
down to `final_steps`. The last stage runs until the run's budget ends (its LR stays at
`lr_final` once annealed).

The student is a copy of the teacher's denoiser (`Teacher.copy_network`: a denoiser at every
noise level, not the one-step form of `init_generator`). The stage's teacher is the loaded teacher
in stage 0 and a frozen copy of the previous student afterwards; the trainer checkpoints that
copy (it is a frozen network other than the loaded teacher) and `state_dict` records the stage,
from which the step count and the LR schedule's length follow on resume.

Sampling: the registered "euler" sampler on `sidbench.diffusion.nested_sigmas(N)` (N NFE), the
exact grid the student was trained on; the saved recipe names both, so `sidbench fid <run dir>`
samples a saved student with its own steps.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.diffusion import nested_sigmas
from sidbench.methods.base import Recipe, Stage, register_method
from sidbench.methods.baselines.progressive.loss import progressive_loss, sample_stage_sigmas, teacher_target
from sidbench.methods.baselines.progressive.settings import ProgressiveSettings
from sidbench.methods.baselines.student import DenoiserStudent
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext
from sidbench.trainer.schedule import WarmupAnneal, restart


def stage_steps(start_steps: int, final_steps: int) -> list[int]:
    """The student's step count in each stage: start, start/2, ..., final."""
    steps = [start_steps]
    while steps[-1] > final_steps:
        steps.append(steps[-1] // 2)
    return steps


#: stages whose student has at most this many steps run `few_step_stage_factor` x K
FEW_STEPS = 2


def stage_lengths(steps: list[int], stage_iterations: int, few_step_factor: int = 2) -> list[int]:
    """Updates in each stage (the last one's is where its LR annealing ends; the stage itself
    runs until the budget ends): K, except `few_step_factor` x K where the student has 2 steps or
    1. The authors' EDM-form code (openai/consistency_models_cifar10, `jcm/losses.py`
    `get_ema_scales_fn`, "progdist") keeps N = 2 for 2K updates and then N = 1, and `jcm/train.py`
    anneals the LR of those two stages over 2K."""
    return [stage_iterations * (few_step_factor if n <= FEW_STEPS else 1) for n in steps]


@register_method("progressive")
class ProgressiveDistillation(DenoiserStudent):
    description = "Progressive distillation (Salimans & Ho 2022): halve the student's Euler steps stage by stage"
    settings = ProgressiveSettings
    generator_name = "student"

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.steps_per_stage = stage_steps(int(cfg.start_steps), int(cfg.final_steps))
        self.stage_lengths = stage_lengths(self.steps_per_stage, int(cfg.stage_iterations), int(cfg.few_step_stage_factor))
        self.student = teacher.copy_network(**self.student_overrides(cfg))
        self.stage_teacher: torch.nn.Module | None = None  # the promoted student, from stage 1 on
        self.stage = 0
        self.opt = torch.optim.Adam(self.student.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, self._factors(0))
        self.grid = {"final_zero": bool(cfg.final_zero), "sigma_min": float(cfg.sigma_min),
                     "sigma_max": float(cfg.sigma_max), "rho": float(cfg.rho)}

    # -- contract ------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """The student's step count now: a function of the stage alone (so of a resumed checkpoint)."""
        return self.steps_per_stage[self.stage]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"student": self.student}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.opt}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"student": self.schedule}

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.stage_teacher if self.stage_teacher is not None else self.teacher.net}

    def stages(self) -> list[Stage]:
        reset_ema = bool(self.cfg.reset_ema)
        starts = [sum(self.stage_lengths[:i]) for i in range(len(self.stage_lengths))]
        return [Stage(f"{n}-step", start=float(start), unit="iterations",
                      reset_optimizers=("student",) if i else (), reset_ema=reset_ema and i > 0)
                for i, (n, start) in enumerate(zip(self.steps_per_stage, starts))]

    def enter_stage(self, index: int, stage: Stage) -> None:
        self._promoted().load_state_dict(self.student.state_dict())  # the student becomes the teacher
        self.stage = index
        self._set_schedule(index)
        restart(self.schedule)  # the trainer restarted it already; again, now with this stage's length

    def _factors(self, index: int) -> WarmupAnneal:
        """The LR factors of stage `index`: warm-up, then annealed over the rest of the stage."""
        warmup = int(self.cfg.warmup_iterations)
        return WarmupAnneal(warmup, str(self.cfg.lr_anneal), self.stage_lengths[index] - warmup, float(self.cfg.lr_final))

    def _set_schedule(self, index: int) -> None:
        # (A checkpoint's scheduler state carries the factors too; this makes them a function of the stage.)
        self.schedule.lr_lambdas = [self._factors(index) for _ in self.opt.param_groups]

    def _promoted(self) -> torch.nn.Module:
        # A fresh build, not a deepcopy of the student: a copy would carry the compute counter's
        # hooks on the student and be counted under its name.
        if self.stage_teacher is None:
            self.stage_teacher = self.teacher.copy_network(**self.student_overrides(self.cfg)).eval().requires_grad_(False)
        return self.stage_teacher

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self._set_schedule(self.stage)
        if self.stage > 0:
            self._promoted()  # the trainer then loads its weights from the checkpoint's frozen networks
        if int(state["steps"]) != self.num_steps:
            raise ConfigError(f"the checkpoint's student has {state['steps']} steps in stage {self.stage}, but this "
                              f"config gives {self.num_steps}; resume with the run's own method.start_steps")

    # -- sampling ------------------------------------------------------------------------------
    def sampling(self) -> Recipe:
        sigmas = nested_sigmas(self.num_steps, **self.grid)
        return {"sampler": "euler", "sigmas": [float(s) for s in sigmas], "nfe": self.num_steps}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logs = self.update(ctx, lambda n: self._loss(ctx, n))
        ctx.log("steps", float(self.num_steps))
        return logs

    def _loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels = self.images.draw(ctx, n)
        t, t2, t3 = sample_stage_sigmas(n, self.num_steps, device=self.device, **self.grid)
        x_t = x + t * torch.randn_like(x)
        teacher = self.frozen_networks()["teacher"]
        x_tilde = teacher_target(teacher, x_t, t, t2, t3, labels)  # two Euler steps, no graph
        denoised = ctx.net("student").train()(x_t, t.flatten(), labels).float()
        # Each image's weighted squared error averaged over its pixels (every reference's reduction:
        # the clip at 1.0 then acts on the gradient of a batch mean of pixel means); summed over
        # the micro-batch here, divided by the batch in the context. Logged in the same unit.
        per_image = progressive_loss(denoised, x_tilde.float(), t).flatten(1).mean(1)
        loss = per_image.sum()
        return loss, {"progressive": loss.detach() / n}
