"""Sample functions for evaluation: a saved one-step generator, or a teacher's Heun sampler.

A finished run writes `generator.safetensors` (our teacher format: weights, the network's
constructor, and `{"method", "kimg", "sampling": {"sigma_init"}}` as info). `load_generator`
turns that file, or the run folder holding it, back into a `SampleFn`:
`x = net(sigma_init * z, sigma_init, labels)` (SPEC section 4), so `sidbench fid` and any later
harness score exactly what the run's own evaluator scored.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sidbench.teachers.load import TeacherLoadError, load_teacher_file

#: The file a finished run writes its EMA generator to.
GENERATOR_FILENAME = "generator.safetensors"
#: The noise level of a generator whose file records none (SiD's value, SPEC section 4).
DEFAULT_SIGMA_INIT = 2.5


def is_run_folder(path: str | os.PathLike) -> bool:
    """A `sidbench run` folder (finished or not): it has a run config or a checkpoint."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in (GENERATOR_FILENAME, "config.yaml", "checkpoint.pt"))


def generator_file(path: str | os.PathLike) -> Path:
    """The generator file named by `path`: the file itself, or `<run folder>/generator.safetensors`."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidate = p / GENERATOR_FILENAME
        if not candidate.is_file():
            raise TeacherLoadError(
                f"run folder {p} has no {GENERATOR_FILENAME}: a run writes it when it finishes "
                f"(resume an unfinished run with `sidbench run resume={p}`)"
            )
        return candidate
    if not p.is_file():
        raise TeacherLoadError(f"generator file {p} does not exist")
    return p


class SavedGenerator:
    """A `SampleFn` over a saved one-step generator: `(z, labels) -> net(sigma_init z, sigma_init, labels)`.

    Attributes describe it for the caller: `shape` (C, H, W) and `label_dim` of the network,
    `sigma_init` (and `sigma_init_recorded`: whether the file said so), `info` (the file's info),
    `path`.
    """

    def __init__(self, net: torch.nn.Module, constructor: dict[str, Any], info: dict[str, Any], path: Path) -> None:
        self.net = net
        self.constructor = constructor
        self.info = info
        self.path = path
        recorded = (info.get("sampling") or {}).get("sigma_init")
        self.sigma_init_recorded = recorded is not None
        self.sigma_init = float(recorded) if recorded is not None else DEFAULT_SIGMA_INIT

    @property
    def shape(self) -> tuple[int, int, int]:
        r = int(self.constructor["img_resolution"])
        return (int(self.constructor["img_channels"]), r, r)

    @property
    def label_dim(self) -> int:
        return int(self.constructor.get("label_dim", 0) or 0)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=z.dtype)
        return self.net(z * self.sigma_init, sigma, labels)


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu") -> SavedGenerator:
    """The saved generator at `path` (a `generator.safetensors` or a run folder) as a `SampleFn`.

    The network is built with `load_teacher_file` (the constructor stored in the file, weights
    loaded strictly), frozen, in eval mode, on `device`. `sigma_init` comes from the file's info
    (`sampling.sigma_init`), else 2.5.
    """
    file = generator_file(path)
    net, constructor, info = load_teacher_file(file)
    net = net.to(device).eval().requires_grad_(False)
    return SavedGenerator(net, constructor, info, file)


def teacher_sampler(net: torch.nn.Module, num_steps: int):
    """A `SampleFn` drawing from a teacher with EDM's deterministic Heun sampler (2N - 1 NFE)."""
    from sidbench.teachers.sampling import heun_sample

    if num_steps < 1:
        raise ValueError(f"the Heun sampler needs at least 1 step, got {num_steps}")

    @torch.no_grad()
    def sample(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return heun_sample(net, z, labels, num_steps=num_steps)

    return sample
