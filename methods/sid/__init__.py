"""Score identity Distillation and SiDA: `loss.py` and `sida_loss.py` hold the formulas, `method.py`
and `sida.py` the iterations, `settings.py` the settings (imported without torch, so the package
imports none of the others)."""
