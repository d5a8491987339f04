"""Metrics by name: one registry, one way to build each metric from the run config."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sidbench.config import ConfigError, compose
from sidbench.eval import METRICS, MetricRegistry
from sidbench.eval.base import Metric
from sidbench.eval.factory import build_metric
from sidbench.eval.reference import save_reference_stats
from sidbench.registry import UnknownNameError

BUILTINS = ("fd_digits", "fd_pixel", "fid")


def test_builtin_declarations_match_their_classes() -> None:
    declared = METRICS.describe()
    assert set(BUILTINS) <= set(declared)
    for name in BUILTINS:
        cls = METRICS.get(name)
        assert issubclass(cls, Metric) and cls.name == name and cls.description == declared[name]


def test_the_registered_name_is_the_logged_one() -> None:
    reg = MetricRegistry("metric", "sidbench.tests.none")

    @reg.register("brightness")
    class Brightness(Metric):
        """mean brightness"""

        def compute(self, batches):
            return 0.0

    assert Brightness.name == "brightness" and reg.describe() == {"brightness": "mean brightness"}
    with pytest.raises(ValueError, match="says its name is 'other' but is registered as 'x'"):
        reg.register("x")(type("Named", (Metric,), {"name": "other", "compute": lambda self, b: 0.0}))


def test_entry_point_metrics_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package's `sidbench.metrics` entry point, undecorated, is named without loading and gets its name on load."""
    (tmp_path / "ep_metric_mod.py").write_text(
        "from sidbench.eval.base import Metric\n\n"
        "class Gap(Metric):\n    description = 'a packaged metric'\n\n"
        "    def compute(self, batches):\n        return 1.0\n")
    info = tmp_path / "ep_metric-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-metric\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sidbench.tests.metrics]\ngap = ep_metric_mod:Gap\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_metric_mod", raising=False)
    reg = MetricRegistry("metric", "sidbench.tests.metrics")
    assert reg.names() == ["gap"] and "ep_metric_mod" not in sys.modules
    gap = reg.get("gap")
    assert gap.name == "gap" and gap().compute([]) == 1.0


def test_build_metric_by_name(run_env: Path) -> None:
    cfg = compose([])
    assert type(build_metric("fd_pixel", cfg)) is METRICS.get("fd_pixel")
    with pytest.raises(UnknownNameError, match="known metrics: fd_digits, fd_dinov2, fd_pixel, fid, precision_recall"):
        build_metric("fd_pixels", cfg)


def test_fid_is_built_from_the_card_and_fetches_its_reference_at_once(tmp_path: Path, run_env: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sidbench.eval.reference as reference

    stats = save_reference_stats(tmp_path / "cifar10-32x32.npz", np.arange(3.0), np.eye(3))
    fetched: list[str] = []
    monkeypatch.setattr(reference, "_fetch", lambda url, **kw: fetched.append(url) or stats)
    cfg = compose(["dataset=cifar10", "eval.fid_mode=clean"])
    fid = build_metric("fid", cfg, device="cpu")
    assert fetched == [cfg.dataset.ref_stats]  # before any image: a bad reference fails first
    assert (fid.mode, fid.device, fid.reference) == ("clean", "cpu", cfg.dataset.ref_stats)
    np.testing.assert_array_equal(fid.reference_stats[0], np.arange(3.0))
    assert type(fid).measurement_settings(cfg) == {"fid_mode": "clean", "ref": cfg.dataset.ref_stats}
    assert METRICS.get("fd_pixel").measurement_settings(cfg) == {}
    # a clean FID against EDM's statistics, and a small set, are flagged
    assert [c.split(";")[0] for c in fid.caveats(100)] == [
        "EDM's reference statistics were made in legacy_tensorflow mode", "100 images"]
    assert fid.caveats(50_000) == ["EDM's reference statistics were made in legacy_tensorflow mode; a clean FID "
                                   "against them is not comparable with published numbers"]

    no_ref = compose(["dataset=cifar10", "dataset.ref_stats=null"])
    with pytest.raises(ConfigError, match="dataset cifar10 has no FID reference statistics: set dataset.ref_stats="):
        build_metric("fid", no_ref)
