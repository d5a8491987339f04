"""Score identity Distillation: `loss.py` holds the formulas, `method.py` the iteration."""
from sidbench.methods.sid.method import SiD

__all__ = ["SiD"]
