"""EDM's network family (DDPM++ SongUNet, ADM DhariwalUNet) and its preconditioning wrappers,
with parameter names that load the published checkpoints as they are."""

from .build import build_edm_network
from .dhariwal import DhariwalUNet
from .precond import ConsistencyParam, EDMPrecond, Precond, VPPrecond, consistency_coefficients
from .songunet import SongUNet

__all__ = ["build_edm_network", "ConsistencyParam", "EDMPrecond", "Precond", "VPPrecond", "SongUNet", "DhariwalUNet",
           "consistency_coefficients"]
