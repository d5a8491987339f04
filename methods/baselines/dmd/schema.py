"""The settings of DMD2's and DMD's configs and their allowed values, checked by `sidbench.schema`
before a run starts (other keys of `cfg.method` are left alone)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sidbench.schema import setting


@dataclass
class GANSchema:
    enabled: bool = setting()
    generator_weight: float = setting(ge=0)
    discriminator_weight: float = setting(ge=0)


@dataclass
class DistributionMatchingSchema:
    name: str = setting()
    sigma_gen: float = setting(gt=0)
    dropout: float | None = setting(ge=0, lt=1)   # of the generator and fake score; null keeps the teacher's
    lr: float = setting(gt=0)
    lr_generator: float = setting(gt=0)
    lr_fake_score: float = setting(gt=0)
    betas: list[float] = setting(ge=0, lt=1)
    weight_decay: float = setting(ge=0)
    warmup_iterations: float = setting(ge=0)    # may be fractional: the LR factor is min(t / warmup, 1)
    grad_clip: float | None = setting(gt=0)
    ttur: int = setting(ge=1)                 # the generator steps every ttur-th iteration
    grid_points: int = setting(ge=2)
    dm_index_min: int = setting(ge=0)
    dm_index_max: int = setting(ge=0)


@dataclass
class DMD2Schema(DistributionMatchingSchema):
    gan: GANSchema = field(default_factory=GANSchema)


@dataclass
class RegressionSchema:
    weight: float = setting(ge=0)
    distance: str = setting(choices=("l2", "lpips"))
    adapt_gray: bool = setting()
    pairs: int = setting(ge=1)
    sampler_steps: int | None = setting(ge=1)   # null: the dataset card's teacher steps
    seed: int = setting()
    batch: int = setting(ge=1)
    pairs_file: str | None = setting(exists=True)


@dataclass
class DMDSchema(DistributionMatchingSchema):
    regression: RegressionSchema = field(default_factory=RegressionSchema)
