"""Sample functions for evaluation: a saved generator, or a teacher's Heun sampler.

A finished run writes `generator.safetensors` (our teacher format: weights, the network's
constructor, and as info `{"method", "kimg", "sampling": <the method's recipe>, "nfe"}`).
`load_generator` turns that file, or the run folder holding it, back into a `SampleFn` that
follows the recipe (`sidbench.diffusion.sample`: the registered sampler it names, a one-step
generator at its sigma, a multi-step student with its steps), so `sidbench fid` and the harness
score exactly what the run's own evaluator scored. Nothing is assumed: a file that records no
recipe is refused; recipes of older files are read in today's form (`sidbench.samplers.read_recipe`).

A generator released by its authors (an EDM-format pickle, `sidbench fid published=<name>`) carries
no recipe of ours: `load_published_generator` takes it from the catalogue
(`sidbench.eval.published_generators`) and samples through the same samplers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sidbench.diffusion import heun_sample, sample
from sidbench.samplers import SAMPLERS, RecipeError, read_recipe
from sidbench.teachers.load import TeacherLoadError, load_teacher_file

#: The file a finished run writes its EMA generator to.
GENERATOR_FILENAME = "generator.safetensors"


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
    """A `SampleFn` over a saved generator: `(z, labels) -> images`, following its recipe.

    Attributes describe it for the caller: `shape` (C, H, W) and `label_dim` of the network,
    `recipe` (the sampling recipe) and `nfe`, `method`, `info` (the file's info), `path`.
    """

    def __init__(self, net: torch.nn.Module, constructor: dict[str, Any], info: dict[str, Any], path: Path) -> None:
        self.net = net
        self.constructor = constructor
        self.info = info
        self.path = path
        self.recipe: dict[str, Any] = dict(info["sampling"])
        self.method = str(info.get("method", ""))
        self.nfe = int(self.recipe.get("nfe", info.get("nfe", 1)))

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

    def describe(self) -> str:
        """One line for the user: method, length of training (when known), recipe (one sigma as "sigma s")."""
        shown = {k: v for k, v in self.recipe.items() if k not in ("sampler", "nfe")}
        if len(shown.get("sigmas", ())) == 1:
            shown = {"sigma": shown.pop("sigmas")[0], **shown}
        steps = ", ".join(f"{k} {v}" for k, v in shown.items())
        trained = f"{self.info['kimg']} kimg, " if "kimg" in self.info else ""
        return f"{self.method or 'unknown method'}, {trained}{self.recipe.get('sampler')} ({steps}), {self.nfe} NFE"

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return sample(self.net, z, labels, self.recipe)


def _recipe(info: dict[str, Any], file: Path) -> dict[str, Any]:
    """The file's recipe in today's form, naming a sampler that is registered."""
    recipe = info.get("sampling")
    if not recipe or ("sampler" not in recipe and "sigma_init" not in recipe):
        raise TeacherLoadError(f"generator file {file} records no sampling recipe (info 'sampling'); "
                               "it was not written by `sidbench run`: save it with its method's recipe")
    recipe = read_recipe(recipe)
    if recipe["sampler"] not in SAMPLERS:
        raise RecipeError(f"generator file {file} names the sampler {recipe['sampler']!r}, which is not registered "
                          f"(known: {', '.join(SAMPLERS.names())}); install or name in $SIDBENCH_PLUGINS the "
                          "package that registers it")
    return recipe


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu") -> SavedGenerator:
    """The saved generator at `path` (a `generator.safetensors` or a run folder) as a `SampleFn`.

    The network is built with `load_teacher_file` (the constructor stored in the file, weights
    loaded strictly), frozen, in eval mode, on `device`; it samples with the registered sampler
    its recipe names (a sampler from a plugin must be installed to read its generators).
    """
    file = generator_file(path)
    net, constructor, info = load_teacher_file(file, kind="generator")
    info = {**info, "sampling": _recipe(info, file)}
    net = net.to(device).eval().requires_grad_(False)
    return SavedGenerator(net, constructor, info, file)


def load_published_generator(path: str | os.PathLike, recipe: dict[str, Any], *, method: str = "",
                             device: torch.device | str = "cpu",
                             constructor: dict[str, Any] | None = None) -> SavedGenerator:
    """A released generator file as a `SampleFn` that follows `recipe` (e.g. `{"sampler": "one_step",
    "sigmas": [2.5], "nfe": 1}`) through the registered samplers: an EDM-format `.pkl` (read by the
    safe loader; its `ema` network), or with `constructor` a `torch.save`d state dict of that
    network (`load_state_dict_file`). `method` only labels it."""
    file = Path(path)
    if constructor is not None:
        from sidbench.teachers.load import load_state_dict_file

        constructor = dict(constructor)
        net = load_state_dict_file(file, constructor, kind="released generator")
    else:
        net, constructor, _ = load_teacher_file(file, kind="released generator")
    info = {"method": method, "sampling": _recipe({"sampling": recipe}, file)}
    net = net.to(device).eval().requires_grad_(False)
    return SavedGenerator(net, constructor, info, file)


def teacher_sampler(net: torch.nn.Module, num_steps: int):
    """A `SampleFn` drawing from a teacher with EDM's deterministic Heun sampler (2N - 1 NFE)."""
    if num_steps < 1:
        raise ValueError(f"the Heun sampler needs at least 1 step, got {num_steps}")

    @torch.no_grad()
    def draw(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return heun_sample(net, z, labels, num_steps=num_steps)

    return draw
