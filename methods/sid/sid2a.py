"""SiD²A (Zhou et al. 2024, arXiv 2410.14919) by name: SiDA whose generator, and so its EMA, starts
from a trained SiD generator (`method.init`: a generator file, a run folder, an MLflow run id or a
released generator's name, `sidbench.methods.sid.init`). The fake score and both optimisers start
fresh from the teacher and the kimg schedule counts from 0, as in the published code's
`--sid_model` start (docs/sid.md#sida); everything else is SiDA's. The leaderboard's rows say
`sid2a`, the method's name.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from sidbench.methods.base import register_method
from sidbench.methods.sid.init import resolve_init
from sidbench.methods.sid.settings import SiD2ASettings
from sidbench.methods.sid.sida import SiDA
from sidbench.teachers.teacher import Teacher


@register_method("sid2a")
class SiD2A(SiDA):
    description = "SiD²A (Zhou et al. 2024): SiDA started from a trained SiD generator (method.init)"
    settings = SiD2ASettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        path, _ = resolve_init(str(cfg.init), full_cfg, progress=False)
        self._load_generator(path, what=f"method.init={cfg.init}")
