"""Consistency distillation (Song et al. 2023, arXiv 2303.01469) on EDM networks: `loss.py` holds the formulas."""
