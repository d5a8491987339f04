"""Distillation methods, installed as `sidbench.methods`. Importing it registers the built-ins."""
from sidbench.methods.base import METHODS, Method, register_method
from sidbench.methods import sid  # noqa: F401  (registers "sid")
from sidbench.methods.baselines.dmd import method as _dmd  # noqa: F401  (registers "dmd2", "dmd")
from sidbench.methods.baselines.progressive import method as _progressive  # noqa: F401  (registers "progressive")
from sidbench.methods.baselines.consistency import method as _consistency  # noqa: F401  (registers "consistency")

__all__ = ["METHODS", "Method", "register_method"]
