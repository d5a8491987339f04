"""Easy consistency tuning (Geng et al. 2024, arXiv 2406.14548): `loss.py` holds the formulas, `method.py` the plugin."""
