"""Easy consistency tuning's settings: each one's default, type, bounds and doc, checked by
`sidbench.schema` before a run starts. Defaults are the published CIFAR-10 run (locuslab/ect at
the commit in docs/ect-scd.md: run_ecm.sh line 6 and ct_train.py's defaults); preset/ect_<dataset>.yaml
sizes each dataset. No torch here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.schema import setting
from sidbench.search_space import SearchSpace, log_uniform, uniform

#: the r(t, s) mappings of the reference (`--mapping`): n(t) = 1 + k sigmoid(-b t), or 1
MAPPINGS = ("sigmoid", "const")


@dataclass
class ECTSettings:
    """Easy consistency tuning (Geng et al. 2024, arXiv 2406.14548) from an EDM teacher's weights on real images."""

    p_mean: float = setting(-1.1, doc="P_mean of ln t ~ N(P_mean, P_std^2) (published: -1.1)")
    p_std: float = setting(2.0, gt=0, doc="P_std of ln t ~ N(P_mean, P_std^2) (published: 2.0)")
    mapping: str = setting("sigmoid", choices=MAPPINGS,
        doc="r = t (1 - q^-(s+1) n(t)): n = 1 + k sigmoid(-b t) (sigmoid, published) | n = 1 (const)")
    q: float = setting(2.0, gt=1, doc="the step t - r shrinks by this factor at each stage (published: 2)")
    k: float = setting(8.0, ge=0, doc="k of the sigmoid mapping (published: 8)")
    b: float = setting(1.0, gt=0, doc="b of the sigmoid mapping (published: 1)")
    c: float = setting(0.0, ge=0, doc="the pseudo-Huber constant; 0 is the plain L2 distance (published CIFAR-10 run: 0)")
    stage_kimg: float = setting(3200.0, gt=0,
        doc="kimg per stage: the step t - r halves (q = 2) every this many kimg (published: 250 ticks of 12.8 kimg)")
    lr: float = setting(1.0e-4, gt=0, doc="RAdam's learning rate (published: 1e-4, constant)")
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1, length=2, doc="RAdam's betas (published: torch's defaults)")
    eps: float = setting(1.0e-8, gt=0, doc="RAdam's eps (published: torch's default)")
    clip_grad_norm: float | None = setting(None, gt=0, doc="gradient-norm clip; null: none, as published")
    dropout: float | None = setting(0.2, ge=0, lt=1,
        doc="the tuned network's dropout, the same mask in both calls (published CIFAR-10: 0.2); null: the teacher's")
    sampling_sigmas: list[float] = setting([80.0], gt=0,
        doc="the sampler's sigmas: [80.0] one step; [80.0, 0.821] the published two steps")
    sigma_min: float = setting(0.003, gt=0,
        doc="the sampling boundary f(x, sigma_min) = x of the reference's eval-mode network (published: 0.003)")

    #: `sidbench tune`'s ranges (sidbench.search_space): the LR around the published 1e-4 and the
    #: digits 4e-4; the stage length (the doubling period) from a tenth of the digits preset's 40
    #: kimg to twice the published 3200 kimg, so one range serves every dataset (a study should
    #: narrow it to its trials' budget, docs/tuning.md); ln t's mean and spread around the
    #: published -1.1 and 2.0.
    search_space: ClassVar[SearchSpace] = {
        "method.lr": log_uniform(1e-5, 1e-3),
        "method.stage_kimg": uniform(4.0, 6400.0),
        "method.p_mean": uniform(-2.0, 0.0),
        "method.p_std": uniform(1.0, 2.5),
    }

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        m = cfg.method
        s = [float(v) for v in m.sampling_sigmas]
        if not s or any(v < float(m.sigma_min) for v in s) or any(a <= b for a, b in zip(s, s[1:])):
            raise ConfigError(f"method.sampling_sigmas={s} must be a decreasing list of sigmas above "
                              f"sigma_min={float(m.sigma_min)}, e.g. [80.0] or [80.0, 0.821]")
