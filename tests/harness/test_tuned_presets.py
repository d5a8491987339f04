"""The tuned digits settings committed in results/tuned/ (the equal tuning study's best settings,
which the tuned bench of results/README.md runs) are presets a run accepts as they stand: each builds
on its method's digits preset, says which study tuned it and at what compute, and sets only keys
the method's settings declare (a renamed setting would refuse the run)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.schema import validate_run_config
from sidbench.tracking import flatten

TUNED = Path(__file__).parents[2] / "results" / "tuned"
FILES = sorted(TUNED.glob("*_digits.yaml"))


def test_every_method_has_its_tuned_settings() -> None:
    methods = {f.name.removesuffix("_digits.yaml").split("-")[0] for f in FILES}
    assert methods == {"sid", "sida", "dmd", "dmd2", "progressive", "consistency", "f_distill", "uni_instruct", "ect", "scd"}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_a_tuned_preset_runs_as_committed(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    method = path.name.removesuffix("_digits.yaml").split("-")[0]
    assert body["defaults"] == [f"{method}_digits", "_self_"]
    assert body["settings_source"].startswith(f"tuned:{method}-digits-flops2e12-s0") and body["tuning_flops"] > 2e13
    cfg = compose([f"method={method}", "dataset=digits", f"preset_file={path}"])
    validate_run_config(cfg)
    assert cfg.settings_source == body["settings_source"] and cfg.tuning_flops == body["tuning_flops"]
    # every tuned value reaches the run's config, over the derived preset's
    for key, value in flatten({k: body[k] for k in ("method", "trainer") if k in body}).items():
        assert str(OmegaConf.select(cfg, key)) == value, key
