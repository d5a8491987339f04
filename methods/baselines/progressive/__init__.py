"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) in EDM's sigma form: `loss.py` holds the formulas."""
