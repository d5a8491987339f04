"""The sampler registry: name -> sampler, and the recipes that name one. Imports no torch.

A sampler is a small pure function of one signature (`sidbench.diffusion` holds the built-ins):

    sampler(net, noise, labels, sigmas, **options) -> images

`net` the network the recipe samples (a denoiser D(x, sigma[B], labels), or what the sampler makes
of one); `noise` standard-normal [B, C, H, W], unscaled: the sampler scales it (by sigmas[0]);
`labels` one-hot [B, label_dim] or None; `sigmas` a 1-D float64 CPU tensor, the noise levels the
sampler visits, in order; `options` the recipe's other arguments. It returns images in [-1, 1] in
`noise`'s dtype. A sampler that runs the network once may keep the graph (a one-step generator
trains through it); a multi-step sampler runs without one.

A recipe is JSON: `{"sampler": <name>, "sigmas": [...], <options>, "nfe": <network calls>}`. A
method's `sampling()` returns one, a saved generator carries it, and `sidbench.diffusion.sample`
follows it. `read_recipe` turns the forms older files hold into this one.

The built-ins are declared here lazily (name, "module:function", the function's docstring line):
`sidbench list` names them without importing torch, and `@register_sampler(name)` on the function
checks it against its line when `SAMPLERS.get` imports it. A plugin's sampler is the decorator in
a module named by `$SIDBENCH_PLUGINS`, or an entry point in the group `sidbench.samplers`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sidbench.errors import InputError
from sidbench.registry import Registry

#: `sampler(net, noise, labels, sigmas, **options) -> images` (see the module docstring)
Sampler = Callable[..., Any]

SAMPLERS: Registry[Sampler] = Registry("sampler", "sidbench.samplers")
register_sampler = SAMPLERS.register

SAMPLERS.register_lazy("one_step", "sidbench.diffusion:sample_one_step",
                       "One network call at sigmas[0]: the one-step generator D(sigma z, sigma) (1 NFE).")
SAMPLERS.register_lazy("heun", "sidbench.diffusion:sample_heun",
                       "EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on sigmas (2N - 1 NFE on N + 1 points ending at 0).")
SAMPLERS.register_lazy("euler", "sidbench.diffusion:sample_euler",
                       "Euler (DDIM) steps of the probability-flow ODE on sigmas: a progressive student's sampler (1 NFE a step).")
SAMPLERS.register_lazy("consistency", "sidbench.diffusion:sample_consistency",
                       "Multistep consistency sampling (Song et al. 2023, Algorithm 1) at sigmas, boundary sigma_min (1 NFE a sigma).")

#: recipe keys that are not the sampler's arguments
NOT_ARGUMENTS = ("sampler", "nfe")


class RecipeError(InputError):
    """A sampling recipe that cannot be followed; the message says which and why."""

    exit_code = 2


def read_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """`recipe` in today's form. Older files hold `{"sampler": "one_step", "sigma": s, ...}` (one
    step at s: sigmas [s]) or, older still, `{"sigma_init": s}` with no sampler (the same)."""
    out = dict(recipe)
    if "sampler" not in out and "sigma_init" in out:
        return {"sampler": "one_step", "sigmas": [float(out["sigma_init"])], "nfe": 1}
    if "sampler" not in out:
        raise RecipeError(f"recipe {dict(recipe)} names no sampler; known samplers: {', '.join(SAMPLERS.names())}")
    if "sigma" in out and "sigmas" not in out:
        out["sigmas"] = [float(out.pop("sigma"))]
    return out


def sampler_arguments(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments a recipe (in today's form) passes its sampler besides `sigmas`."""
    return {k: v for k, v in recipe.items() if k not in (*NOT_ARGUMENTS, "sigmas")}


__all__ = ["SAMPLERS", "Sampler", "RecipeError", "read_recipe", "register_sampler", "sampler_arguments"]
