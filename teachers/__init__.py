from .networks import build_edm_network

__all__ = ["build_edm_network"]
