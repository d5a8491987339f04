"""Distillation methods, installed as `sidbench.methods`. Importing it registers the built-ins."""
from sidbench.methods.base import METHODS, Method, register_method
from sidbench.methods import sid  # noqa: F401  (registers "sid")
from sidbench.methods.baselines.dmd import method as _dmd  # noqa: F401  (registers "dmd2", "dmd")

__all__ = ["METHODS", "Method", "register_method"]
