"""Every f_distill and uni_instruct preset exists, composes and passes the checks a run makes before it
starts (types, bounds, relations), and says where its values come from."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from sidbench.config import compose
from sidbench.schema import validate_run_config

DATASETS = ("digits", "digits-cond", "cifar10", "cifar10-cond", "ffhq64", "afhqv2-64", "imagenet64")
PUBLISHED = {("f_distill", "imagenet64"), ("f_distill", "cifar10-cond"), ("uni_instruct", "cifar10"),
             ("uni_instruct", "cifar10-cond"), ("uni_instruct", "imagenet64")}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", ["f_distill", "uni_instruct"])
def test_every_preset_passes_the_run_checks(method: str, dataset: str, run_env: Path) -> None:
    text = (files("sidbench.conf") / "preset" / f"{method}_{dataset}.yaml").read_text()
    if (method, dataset) in PUBLISHED:
        assert "arXiv" in text and "line" in text  # the paper and the configuration's lines
    else:
        assert "NOT published" in text and ("Derived" in text or "derived" in text)
    images = [] if dataset.startswith("digits") else [f"dataset.images.path={run_env}"]  # the check needs a path, not its images
    validate_run_config(compose([f"method={method}", f"dataset={dataset}", "device=cpu", *images]))
