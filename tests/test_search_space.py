"""Search spaces (sidbench.search_space): every built-in declares one next to its settings, the
published value of each searched setting lies inside its range, and a bad range is one line."""
from __future__ import annotations

from importlib.resources import files

import pytest
from omegaconf import OmegaConf

from sidbench.config import ConfigError, compose
from sidbench.search_space import (
    Param, active, apply_changes, check_space, choice, declared_space, integer, log_uniform, parse_param, uniform,
)

BUILTINS = ("sid", "sida", "sid2a", "dmd", "dmd2", "progressive", "consistency", "f_distill", "uni_instruct", "ect", "scd")


def presets_of(method: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml").removeprefix(f"{method}_") for p in (files("sidbench.conf") / "preset").iterdir()
                  if p.name.startswith(f"{method}_"))


@pytest.mark.parametrize("method", BUILTINS)
def test_every_builtin_declares_a_valid_space_with_learning_rates_log_uniform(method: str) -> None:
    space = declared_space(method)
    assert space and all(isinstance(p, Param) for p in space.values())
    for key, p in space.items():
        if key.rsplit(".", 1)[-1].startswith("lr"):
            assert p.kind == "log", key
    check_space(active(space, compose([f"method={method}"])), compose([f"method={method}"]))


@pytest.mark.parametrize("method", BUILTINS)
def test_the_published_value_and_every_preset_value_lie_inside_each_range(method: str) -> None:
    # the defaults alone are the published settings (the paper's dataset); then each dataset's preset
    configs = [("defaults", compose([f"method={method}", "~preset"]))]
    configs += [(d, compose([f"method={method}", f"dataset={d}"])) for d in presets_of(method)]
    for where, cfg in configs:
        for key, p in declared_space(method).items():
            value = OmegaConf.select(cfg, key)
            assert p.contains(value), f"{method} {where}: {key}={value} outside {p.describe()}"


def test_the_issue_s_settings_are_searched() -> None:
    assert {"method.alpha", "trainer.ema_rampup", "method.lr"} <= set(declared_space("sid"))
    assert {"method.ttur", "method.gan.generator_weight", "method.gan.discriminator_weight"} <= set(declared_space("dmd2"))
    assert "method.stage_iterations" in declared_space("progressive")
    assert {"method.mu", "method.num_points"} <= set(declared_space("consistency"))


def test_a_conditional_setting_is_searched_only_when_its_switch_is_on() -> None:
    off = active(declared_space("dmd2"), compose(["method=dmd2"]))
    on = active(declared_space("dmd2"), compose(["method=dmd2", "method.gan.enabled=true"]))
    assert "method.gan.generator_weight" not in off and "method.gan.generator_weight" in on


@pytest.mark.parametrize("space,fragment", [
    ({"method.alpah": uniform(0.5, 1.5)}, "space.method.alpah: method=sid has no setting method.alpah; did you mean method.alpha?"),
    ({"trainer": uniform(0.5, 1.5)}, "has no setting trainer"),
    ({"method.alpha": uniform(1.5, 0.5)}, "space.method.alpha=uniform(1.5,0.5): the range is empty; give low < high"),
    ({"method.alpha": uniform(1.0, 1.0)}, "the range is empty"),
    ({"method.lr": log_uniform(0.0, 1e-3)}, "space.method.lr=log(0,0.001): a log range needs low > 0"),
    ({"method.lr": uniform(-1.0, 1e-3)}, "space.method.lr=uniform(-1,0.001): method.lr=-1.0: must be a number > 0"),
    ({"trainer.batch": uniform(8, 64)}, "trainer.batch is an integer setting; use int(a,b) or intlog(a,b)"),
    ({"method.augment_resample": choice()}, "give at least one value"),
    ({"method.augment_resample": choice("sym6", "box")}, "method.augment_resample=box: must be one of sym6, bilinear"),
    ({"method.alpha": uniform(0.5, 1.5, when="method.nosuch")}, "its condition when='method.nosuch' names no setting"),
    ({}, "declares no search space"),
])
def test_a_bad_space_is_one_line(space: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_space(space, compose(["method=sid"]))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text,want", [
    ("log(1e-5,1e-3)", log_uniform(1e-5, 1e-3)),
    ("uniform(0.5, 1.5)", uniform(0.5, 1.5)),
    ("int(1,10)", integer(1, 10)),
    ("intlog(16,4096)", integer(16, 4096, log=True)),
    ("choice(l2,lpips)", choice("l2", "lpips")),
    ("null", None),
])
def test_the_command_line_writes_ranges(text: str, want: Param | None) -> None:
    assert parse_param("method.x", text) == want


@pytest.mark.parametrize("text,fragment", [
    ("logg(1,2)", "write one of uniform(a,b)"),
    ("log(1)", "takes two numbers"),
    ("int(1.5,3)", "the ends of an integer range are integers"),
    ("uniform(a,1)", "'a' is not a number"),
])
def test_a_bad_command_line_range_is_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_param("method.x", text)


def test_the_command_line_replaces_and_drops_ranges() -> None:
    space = apply_changes(declared_space("sid"), {"method.lr": log_uniform(1e-5, 1e-3), "method.alpha": None})
    assert space["method.lr"] == log_uniform(1e-5, 1e-3) and "method.alpha" not in space
    with pytest.raises(ConfigError, match="method.nosuch is not in the search space"):
        apply_changes(declared_space("sid"), {"method.nosuch": None})
