"""Build an EDM network from EDM's own constructor arguments."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from .precond import MODEL_TYPES, EDMPrecond, VPPrecond

__all__ = ["PRECONDS", "build_edm_network"]

PRECONDS: dict[str, type[nn.Module]] = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond}

# UNet arguments that the preconditioning wrapper supplies itself.
_SUPPLIED_BY_PRECOND = {"self", "img_resolution", "in_channels", "out_channels", "label_dim"}


def _named_params(cls: type) -> set[str]:
    return {
        name for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    } - {"self"}


def build_edm_network(constructor: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``precond`` ("EDMPrecond" | "VPPrecond") around ``model_type`` ("SongUNet" |
    "DhariwalUNet"); every other key is a keyword argument of one of the two, under EDM's names
    and with EDM's defaults (the precond's ``model_type`` default applies when it is absent).

    Raises a one-line ValueError for an unknown precond, model_type or key. Builds on the current
    default device, so ``with torch.device("meta"):`` gives a shape-only network.
    """
    kwargs = dict(constructor)
    precond_name = kwargs.pop("precond", None)
    if precond_name not in PRECONDS:
        raise ValueError(f"unknown precond {precond_name!r}; expected one of {sorted(PRECONDS)}")
    precond_cls = PRECONDS[precond_name]
    model_type = kwargs.get("model_type", inspect.signature(precond_cls.__init__).parameters["model_type"].default)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")

    allowed = _named_params(precond_cls) | (_named_params(MODEL_TYPES[model_type]) - _SUPPLIED_BY_PRECOND)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {precond_name} + {model_type}; "
            f"accepted: {', '.join(sorted(allowed))}")
    missing = [name for name in ("img_resolution", "img_channels") if name not in kwargs]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(map(repr, missing))} for {precond_name}")
    return precond_cls(**kwargs)
