"""Settings the baselines share (no torch here): where the x of their losses comes from, and the
teacher samples made before training (`teacher_samples.py`). Progressive and consistency
distillation regress on x (`method.data`); DMD's regression pairs are teacher samples too, under
the same names with its own defaults."""
from __future__ import annotations

from dataclasses import dataclass

from sidbench.schema import setting

#: where x comes from (`method.data`)
DATA_MODES = ("teacher", "real")


@dataclass
class TeacherSampleSettings:
    """The teacher samples (their `SampleSpec`): made once before training, charged to the run, cached."""

    num_teacher_samples: int = setting(50000, ge=1,
        doc="samples of the teacher's Heun sampler made once before training")
    teacher_sampler_steps: int = setting("${dataset.teacher.sampler_steps}", ge=1,
        doc="Heun steps of those samples (2 x steps - 1 NFE each; default: the dataset card's)")
    teacher_sample_batch: int = setting(250, ge=1,
        doc="samples per teacher call while making them (fixes each sample's noise: part of the cache key)")
    teacher_sample_seed: int = setting("${trainer.seed}", doc="the seed of the samples' noise (part of the cache key)")


@dataclass
class TrainingImagesSettings(TeacherSampleSettings):
    """x of x_t = x + t n: the teacher's samples (data-free) or the dataset's images."""

    data: str = setting("teacher", choices=DATA_MODES,
        doc="x of x_t = x + t n: teacher (its Heun samples, data-free) | real (dataset.images)")
