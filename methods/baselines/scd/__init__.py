"""Continuous-time consistency distillation (Lu & Song 2024, arXiv 2410.11081) over EDM teachers: `loss.py` holds the formulas, `method.py` the plugin."""
