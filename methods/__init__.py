"""Distillation methods, installed as `sidbench.methods`.

Importing this package imports no method (nor torch): the built-ins are declared here lazily,
each by its name, its class, the line `sidbench list` shows and its settings class (in a module
without torch: composing a config reads its defaults); `METHODS.get(name)` imports the class,
whose `@register_method(name)` decorator checks it against its declaration. A new built-in
is its class with the decorator plus one line here; a plugin needs only the decorator (or an entry
point in the group `sidbench.methods`). `Method` (and the rest of `sidbench.methods.base`, which
imports torch) is imported on first use: `from sidbench.methods import Method` works as before.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidbench.registry import Registry

if TYPE_CHECKING:
    from sidbench.methods.base import Method, Recipe, Stage

METHODS: Registry[type[Method]] = Registry("method", "sidbench.methods")
register_method = METHODS.register

# The built-ins: name, "module:Class", the class's `description` and its `settings` (the decorator checks all).
METHODS.register_lazy("sid", "sidbench.methods.sid.method:SiD",
                      "Score identity Distillation (Zhou et al. 2024): data-free, one-step",
                      settings="sidbench.methods.sid.settings:SiDSettings")
METHODS.register_lazy("sida", "sidbench.methods.sid.sida:SiDA",
                      "SiDA / SiD²A (Zhou et al. 2024): SiD plus an adversarial term, the fake score's encoder as discriminator",
                      settings="sidbench.methods.sid.settings:SiDASettings")
METHODS.register_lazy("sid2a", "sidbench.methods.sid.sid2a:SiD2A",
                      "SiD²A (Zhou et al. 2024): SiDA started from a trained SiD generator (method.init)",
                      settings="sidbench.methods.sid.settings:SiD2ASettings")
METHODS.register_lazy("uni_instruct", "sidbench.methods.sid.uni_instruct:UniInstruct",
                      "Uni-Instruct (Wang et al. 2025): SiDA with the gradient of an expanded f-divergence, the ratio from its discriminator",
                      settings="sidbench.methods.sid.settings:UniInstructSettings")
METHODS.register_lazy("dmd2", "sidbench.methods.baselines.dmd.method:DMD2",
                      "DMD2 (Yin et al. 2024): distribution matching, two time-scale updates, optional GAN head",
                      settings="sidbench.methods.baselines.dmd.settings:DMD2Settings")
METHODS.register_lazy("dmd", "sidbench.methods.baselines.dmd.method:DMD",
                      "DMD (Yin et al. 2023): distribution matching plus regression on teacher ODE pairs",
                      settings="sidbench.methods.baselines.dmd.settings:DMDSettings")
METHODS.register_lazy("f_distill", "sidbench.methods.baselines.dmd.f_distill:FDistill",
                      "f-distill (Xu et al. 2025): DMD2 with the DM gradient weighted by h(r) of an f-divergence",
                      settings="sidbench.methods.baselines.dmd.settings:FDistillSettings")
METHODS.register_lazy("progressive", "sidbench.methods.baselines.progressive.method:ProgressiveDistillation",
                      "Progressive distillation (Salimans & Ho 2022): halve the student's Euler steps stage by stage",
                      settings="sidbench.methods.baselines.progressive.settings:ProgressiveSettings")
METHODS.register_lazy("consistency", "sidbench.methods.baselines.consistency.method:ConsistencyDistillation",
                      "Consistency distillation (Song et al. 2023): one- or few-step consistency function",
                      settings="sidbench.methods.baselines.consistency.settings:ConsistencySettings")
METHODS.register_lazy("ect", "sidbench.methods.baselines.ect.method:ECT",
                      "Easy consistency tuning (Geng et al. 2024): a consistency model tuned from the teacher on real images",
                      settings="sidbench.methods.baselines.ect.settings:ECTSettings")
METHODS.register_lazy("scd", "sidbench.methods.baselines.scd.method:SCD",
                      "sCD (Lu & Song 2024): continuous-time consistency distillation, TrigFlow over the EDM teacher",
                      settings="sidbench.methods.baselines.scd.settings:SCDSettings")

_FROM_BASE = ("Method", "Recipe", "Stage")


def __getattr__(name: str) -> Any:  # PEP 562: the torch-importing names, on first use
    if name in _FROM_BASE:
        from importlib import import_module

        value = getattr(import_module("sidbench.methods.base"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "Method", "register_method"]
