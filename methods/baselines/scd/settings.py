"""sCD's settings: each one's default, type, bounds and doc, checked by `sidbench.schema` before a
run starts. The published sCD runs distil TrigFlow teachers, so on sidbench's EDM teachers every
value is derived (docs/ect-scd.md#scd says from what, per setting): the defaults are NVIDIA
FastGen's sCD configuration for EDM's CIFAR-10 network (the paper's Algorithm 1 and its
hyperparameters, arranged by FastGen), preset/scd_<dataset>.yaml sizes each dataset. No torch here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.methods.baselines.settings import TrainingImagesSettings
from sidbench.schema import override, setting
from sidbench.search_space import SearchSpace, integer, log_uniform, uniform

#: the tangent normalisations: rms (FastGen's default) | l2 (the paper's Algorithm 1)
TANGENT_NORMS = ("rms", "l2")


@dataclass
class SCDSettings(TrainingImagesSettings):
    """Continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081), TrigFlow over an EDM teacher."""

    data: str = override(TrainingImagesSettings, "data", "real",
        doc="x_0 of x_t = cos(t) x_0 + sin(t) z: real (dataset.images, as the paper and FastGen) | teacher (its Heun samples, data-free)")
    p_mean: float = setting(-1.0, doc="P_mean of ln sigma ~ N(P_mean, P_std^2), t = atan(sigma / sigma_data) (derived: the paper's -1.0)")
    p_std: float = setting(1.4, gt=0, doc="P_std of ln sigma (derived: the paper's 1.4; FastGen's ImageNet 64: 1.6)")
    sigma_min: float = setting(0.002, gt=0, doc="ln sigma's normal is truncated to [sigma_min, sigma_max] (derived: FastGen's EDM range)")
    sigma_max: float = setting(80.0, gt=0, doc="the upper truncation of sigma (derived: FastGen's EDM range)")
    tangent_warmup_iterations: int = setting(10000, ge=0,
        doc="the tangent's second term rises linearly over this many iterations; 0: none (derived: the paper's 10k)")
    tangent_c: float = setting(0.1, gt=0, doc="c of the tangent normalisation g / (||g|| + c) (derived: the paper's 0.1)")
    tangent_norm: str = setting("rms", choices=TANGENT_NORMS,
        doc="||g||: rms, the L2 norm over sqrt(D) (FastGen's default) | l2 (the paper's Algorithm 1)")
    prior_weighting: bool = setting(True, doc="the weight 1 / (sigma_data tan t) = 1 / sigma (derived: the paper's prior weighting)")
    divide_by_dim: bool = setting(True, doc="divide the squared error's mean by D once more, as FastGen does (a constant the log-variance absorbs)")
    lr: float = setting(1.0e-4, gt=0, doc="RAdam's learning rate, student and log-variance head (derived: FastGen's CIFAR-10 1e-4)")
    betas: list[float] = setting([0.9, 0.99], ge=0, lt=1, length=2, doc="RAdam's betas (derived: FastGen's (0.9, 0.99))")
    eps: float = setting(1.0e-8, gt=0, doc="RAdam's eps (derived: FastGen's 1e-8)")
    clip_grad_norm: float | None = setting(None, gt=0,
        doc="gradient-norm clip over student and head; null: none (derived: FastGen's CIFAR-10 1e6, i.e. none)")
    dropout: float | None = setting(0.0, ge=0, lt=1,
        doc="the student's dropout, the same mask in forward and JVP (derived: FastGen's 0); null: the teacher's")
    sampling_sigmas: list[float] = setting([80.0], gt=0,
        doc="the sampler's sigmas: [80.0] one step; [80.0, 0.821] two (derived: FastGen's CIFAR-10 recommendation)")

    #: `sidbench tune`'s ranges (sidbench.search_space): the LR over the derived 7e-5..4e-4, the
    #: tangent's warm-up from none to the paper's 10k iterations, ln sigma's mean and spread around
    #: the paper's -1.0 / 1.4 and FastGen's ImageNet 64 1.6, the tangent normalisation's c.
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-5, 1e-3),
        "method.tangent_warmup_iterations": integer(0, 10000),
        "method.p_mean": uniform(-2.0, 0.0),
        "method.p_std": uniform(1.0, 2.0),
        "method.tangent_c": log_uniform(0.01, 1.0),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        m = cfg.method
        if not float(m.sigma_min) < float(m.sigma_max):
            raise ConfigError(f"method.sigma_min={m.sigma_min} must be below method.sigma_max={m.sigma_max}")
        s = [float(v) for v in m.sampling_sigmas]
        if not s or any(a <= b for a, b in zip(s, s[1:])):
            raise ConfigError(f"method.sampling_sigmas={s} must be a decreasing list of sigmas, e.g. [80.0] or [80.0, 0.821]")
