"""Methods from outside the package: the decorator, and discovery through entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from sidbench.config import ConfigError
from sidbench.registry import Registry, UnknownNameError
from sidbench.schema import setting
from sidbench.testing.tiny import tiny_overrides

PLUGIN = '''
"""A third-party method: regress the one-step generator onto the teacher's denoiser at sigma_init."""
from dataclasses import dataclass

import torch
from sidbench.methods import Method
from sidbench.schema import setting


@dataclass
class Settings:
    sigma_init: float = setting(2.5, gt=0, doc="the generator's input sigma")
    lr: float = setting(1e-4, gt=0, doc="Adam's learning rate")


class TeacherRegression(Method):
    description = "toy plugin: regress G onto the teacher at sigma_init"
    settings = Settings

    def __init__(self, teacher, cfg, device, full_cfg=None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.generator = teacher.init_generator()
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr)

    def networks(self):
        return {"generator": self.generator}

    def optimizers(self):
        return {"generator": self.opt}

    def sampling(self):
        return {"sampler": "one_step", "sigma": self.cfg.sigma_init, "nfe": 1}

    def train_step(self, ctx):
        def loss_fn(n):
            z = torch.randn(n, *self.teacher.shape)
            with torch.no_grad():
                target = self.sample(self.teacher.net, z, None)
            loss = ((self.sample(ctx.net("generator"), z, None) - target) ** 2).sum()
            return loss, {"regression": loss.detach() / n}
        return ctx.update("generator", loss_fn)
'''


def install_plugin(root: Path) -> Path:
    """A package plus its dist-info, as `pip install` would leave them, on a private path."""
    (root / "toy_sidbench_plugin").mkdir(parents=True)
    (root / "toy_sidbench_plugin" / "__init__.py").write_text(PLUGIN)
    info = root / "toy_sidbench_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-sidbench-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sidbench.methods]\ntoy = toy_sidbench_plugin:TeacherRegression\n")
    return root


def test_registry_decorator_and_unknown_names() -> None:
    reg: Registry[type] = Registry("thing", "sidbench.tests.none")

    @reg.register("a", "the first")
    class A: ...

    assert reg.get("a") is A and reg.names() == ["a"] and reg.describe() == {"a": "the first"}
    with pytest.raises(UnknownNameError, match="known things: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("B", (), {}))


LAZY_MODULE = '''
class Thing:
    """a thing that is imported only when asked for"""
'''


def test_lazy_entries_are_named_and_described_without_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_thing_mod.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_thing_mod", raising=False)
    reg: Registry[type] = Registry("thing", "sidbench.tests.none")
    reg.register_lazy("lazy", "lazy_thing_mod:Thing", "a thing that is imported only when asked for")
    assert reg.names() == ["lazy"] and "lazy" in reg
    assert reg.describe() == {"lazy": "a thing that is imported only when asked for"}
    assert "lazy_thing_mod" not in sys.modules
    thing = reg.get("lazy")
    assert thing is sys.modules["lazy_thing_mod"].Thing and reg.get("lazy") is thing
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_lazy("lazy", "elsewhere:Thing", "")


def test_the_decorator_checks_its_lazy_declaration() -> None:
    reg: Registry[type] = Registry("thing", "sidbench.tests.none")
    here = f"{__name__}:{{}}"
    reg.register_lazy("a", here.format("A"), "the first")
    reg.register_lazy("b", here.format("B"), "the second")
    with pytest.raises(ValueError, match="declared as"):
        reg.register("a")(type("Other", (), {"__module__": __name__}))
    with pytest.raises(ValueError, match="differs from the one declared"):
        reg.register("b")(type("B", (), {"__module__": __name__, "description": "not the second"}))
    a = reg.register("a")(type("A", (), {"__module__": __name__, "description": "the first"}))
    assert reg.get("a") is a and reg.describe()["a"] == "the first"


def test_builtin_declarations_match_their_classes() -> None:
    from sidbench.methods import METHODS

    declared = METHODS.describe()
    assert {"sid", "dmd", "dmd2", "progressive", "consistency"} <= set(declared)
    for name in ("sid", "dmd", "dmd2", "progressive", "consistency"):
        assert METHODS.get(name).description == declared[name]  # the decorator checked the target too


def test_entry_points_are_named_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_thing_mod.py").write_text('class Thing:\n    description = "from an entry point"\n')
    info = tmp_path / "ep_thing-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-thing\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sidbench.tests.lazy]\nthing = ep_thing_mod:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_thing_mod", raising=False)
    reg: Registry[type] = Registry("thing", "sidbench.tests.lazy")
    assert reg.names() == ["thing"] and "ep_thing_mod" not in sys.modules
    assert reg.describe() == {"thing": "from an entry point"}  # describe() loads plugins for their own line
    assert reg.get("thing") is sys.modules["ep_thing_mod"].Thing


@pytest.mark.slow
def test_entry_point_plugin_is_discovered_and_runs(tiny_teacher: Path, run_env: Path) -> None:
    root = install_plugin(run_env / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "sidbench.cli", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout and "regress G onto the teacher" in listed.stdout
    ran = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=toy", *tiny_overrides(tiny_teacher), "run_name=toy"],
                         cwd=run_env, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (run_env / "runs" / "digits" / "toy" / "generator.safetensors").is_file()
    assert "method:\n  name: toy\n  sigma_init: 2.5" in (run_env / "runs" / "digits" / "toy" / "config.yaml").read_text()
    bad = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=toy", "method.lr=abc", *tiny_overrides(tiny_teacher)],
                         cwd=run_env, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: method.lr=abc: must be a number > 0", bad.stderr


LAZY_SETTINGS_MODULE = '''
from dataclasses import dataclass

from sidbench.schema import setting


@dataclass
class ThingSettings:
    size: int = setting(3, ge=1, doc="how big")


class Thing:
    """a thing with settings"""

    settings = ThingSettings
'''


def test_a_lazy_declaration_gives_its_settings_without_importing_the_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_settings_mod.py").write_text(LAZY_SETTINGS_MODULE)
    (tmp_path / "lazy_object_mod.py").write_text("from lazy_settings_mod import Thing, ThingSettings  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("lazy_settings_mod", "lazy_object_mod"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    reg: Registry[type] = Registry("thing", "sidbench.tests.none")
    reg.register_lazy("thing", "lazy_object_mod:Thing", "a thing with settings", settings="lazy_settings_mod:ThingSettings")
    settings = reg.attribute("thing", "settings")
    assert settings.__name__ == "ThingSettings" and "lazy_object_mod" not in sys.modules
    assert reg.get("thing").settings is settings and reg.attribute("thing", "settings") is settings
    # the decorator checks the declared settings against the class's
    reg.register_lazy("other", f"{__name__}:Other", "another", settings="lazy_settings_mod:ThingSettings")
    with pytest.raises(ValueError, match="its settings is"):
        reg.register("other")(type("Other", (), {"__module__": __name__, "description": "another", "settings": None}))


@dataclass
class ToySettings:
    lr: float = setting(1e-4, gt=0, doc="Adam's learning rate")
    sigma_init: float = setting(2.5, gt=0, doc="the generator's input sigma")
    steps: list[int] = setting([4, 2], ge=1, doc="a list default: a fresh copy per instance")
    mode: str = setting("a", choices=("a", "b"), doc="a choice")
    grad_clip: float | None = setting(None, gt=0, doc="a name the built-ins renamed (clip_grad_norm): here the plugin's own")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        if cfg.method.mode == "b" and cfg.method.sigma_init > 10:
            raise ConfigError(f"method.mode=b needs method.sigma_init <= 10, not {cfg.method.sigma_init}")


@pytest.fixture(scope="module")
def toy_with_settings() -> str:
    """A plugin registered in this process, with a settings class like the built-ins'."""
    from sidbench.methods import METHODS, Method, register_method

    if "toy-with-settings" not in METHODS:  # never built: its abstract methods do not matter here
        register_method("toy-with-settings")(type("ToyWithSettings", (Method,), {"description": "a plugin with settings",
                                                                                 "settings": ToySettings}))
    return "toy-with-settings"


def test_a_plugins_settings_are_its_defaults_and_are_checked_like_the_builtins(toy_with_settings: str, refused) -> None:  # noqa: ANN001
    from sidbench.config import compose

    cfg = compose([f"method={toy_with_settings}"])
    assert OmegaConf.to_container(cfg.method) == {"name": toy_with_settings, "lr": 1e-4, "sigma_init": 2.5, "steps": [4, 2],
                                                  "mode": "a", "grad_clip": None}
    assert compose([f"method={toy_with_settings}", "method.lr=3e-4"]).method.lr == 3e-4
    method = f"method={toy_with_settings}"
    assert refused(method, "method.lr=abc") == "method.lr=abc: must be a number > 0"
    assert refused(method, "method.steps=[4,0]") == "method.steps=[4, 0]: must be a list of integers >= 1"
    assert refused(method, "method.mode=c") == "method.mode=c: must be one of a, b"
    assert refused(method, "method.mode=b", "method.sigma_init=80") == "method.mode=b needs method.sigma_init <= 10, not 80"
    assert refused(method, "method.nope=1").startswith("unknown setting 'method.nope'")
    # a plugin may keep a name the built-ins renamed: it is its own setting, not an old name
    assert compose([method, "method.grad_clip=1.0"]).method.grad_clip == 1.0

