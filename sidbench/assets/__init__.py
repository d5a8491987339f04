"""Shipped assets of the offline digits metrics, beside the scripts that made them.

* `digits_classifier.safetensors` + `.json`: the classifier behind `fd_digits`
  (`python -m sidbench.assets.train_digits_classifier`);
* `digits_floor.json`: what real digits score against real digits in `fd_pixel` and `fd_digits`
  (`python -m sidbench.assets.digits_floor`).

The metrics themselves are in `sidbench.eval.digits`; the digits teachers, with their trainer, in
`sidbench.teachers`.
"""
from pathlib import Path

#: The folder holding the asset files.
ASSETS = Path(__file__).resolve().parent
