"""A method's settings in one place (sidbench.schema.setting): the defaults of `method=<name>` come
from its settings class (there is no method YAML), every setting has a type, bounds and a doc,
a bad value of each kind is one line, renamed settings name their new name, and the presets
override the defaults (DMD's inheriting DMD2's)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sidbench.config import RENAMED, ConfigError, compose, renamed_message
from sidbench.methods import METHODS
from sidbench.schema import check, defaults, docs, method_settings, override, setting

BUILTINS = ("sid", "sida", "sid2a", "dmd", "dmd2", "progressive", "consistency", "f_distill", "uni_instruct", "ect", "scd")
DATASETS = ("digits", "digits-cond", "cifar10", "cifar10-cond", "ffhq64", "afhqv2-64", "imagenet64")


def test_there_is_no_method_yaml() -> None:
    assert not (files("sidbench.conf") / "method").is_dir()


@pytest.mark.parametrize("name", BUILTINS)
def test_the_defaults_are_the_settings_class(name: str) -> None:
    settings = method_settings(name)
    assert METHODS.get(name).settings is settings  # the lazy declaration names the class's own
    cfg = compose([f"method={name}", "~preset"])  # no preset: the defaults alone
    got = OmegaConf.to_container(cfg.method)
    want = defaults(settings)
    assert got.pop("name") == name and set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation: resolved below
        assert got[key] == value, key
    # the interpolations the YAML had resolve as they did
    m = cfg.method
    if "lr_generator" in m:
        assert m.lr_generator == m.lr_fake_score == m.lr
        assert list(m.betas_generator) == list(m.betas_fake_score) == list(m.betas)
    if "teacher_sampler_steps" in m:
        assert m.teacher_sampler_steps == cfg.dataset.teacher.sampler_steps
    if "data" in m:
        assert m.teacher_sample_seed == cfg.trainer.seed


@pytest.mark.parametrize("name", BUILTINS)
def test_every_setting_has_a_one_line_doc(name: str) -> None:
    for key, doc in docs(method_settings(name)).items():
        assert doc and "\n" not in doc, f"method={name}: method.{key} has no one-line doc"


def test_composing_imports_no_method_and_no_torch() -> None:
    import subprocess
    import sys

    probe = ("import sys; from sidbench.config import compose\n"
             f"for m in {list(BUILTINS)!r}: compose([f'method={{m}}'])\n"
             "print([m for m in ('torch', 'sidbench.methods.sid.method') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# -- one line for a bad value of each kind -------------------------------------------------------
@dataclass
class Kinds:
    count: int = setting(2, ge=1, doc="an integer")
    rate: float = setting(0.5, gt=0, lt=1, doc="a number in an open interval")
    maybe: float | None = setting(None, ge=0, doc="null or a number")
    mode: str = setting("a", choices=("a", "b"), doc="a choice")
    flag: bool = setting(False, doc="a switch")
    pair: list[float] = setting([0.9, 0.999], ge=0, lt=1, length=2, doc="a pair")
    path: str | None = setting(None, exists=True, doc="a file that must be there")


@pytest.mark.parametrize(("key", "value", "line"), [
    ("count", 0, "method.count=0: must be an integer >= 1"),
    ("count", 1.5, "method.count=1.5: must be an integer >= 1"),
    ("count", "abc", "method.count=abc: must be an integer >= 1"),
    ("rate", 1.0, "method.rate=1.0: must be a number in (0, 1)"),
    ("rate", True, "method.rate=true: must be a number in (0, 1)"),
    ("rate", None, "method.rate=null: must be a number in (0, 1)"),
    ("maybe", -1, "method.maybe=-1: must be null or a number >= 0"),
    ("mode", "c", "method.mode=c: must be one of a, b"),
    ("flag", "yes", "method.flag=yes: must be true or false"),
    ("pair", [0.9], "method.pair=[0.9]: must be a pair of numbers in [0, 1)"),
    ("pair", [0.9, 1.0], "method.pair=[0.9, 1.0]: must be a pair of numbers in [0, 1)"),
    ("pair", 0.9, "method.pair=0.9: must be a pair of numbers in [0, 1)"),
    ("path", "/nowhere/x", "method.path=/nowhere/x: must be an existing path"),
])
def test_a_bad_value_of_each_kind_is_one_line(key: str, value: object, line: str) -> None:
    node = OmegaConf.create({**defaults(Kinds), key: value})
    with pytest.raises(ConfigError) as info:
        check(Kinds, node, "method")
    assert str(info.value) == line


def test_good_values_pass_and_defaults_are_fresh_per_instance(tmp_path: Path) -> None:
    (tmp_path / "x").touch()
    check(Kinds, OmegaConf.create({**defaults(Kinds), "maybe": 3, "path": str(tmp_path / "x"), "pair": [0, 0.5]}), "method")
    a, b = Kinds(), Kinds()
    a.pair.append(1.0)
    assert b.pair == [0.9, 0.999]


def test_a_setting_needs_its_doc_and_a_subclass_keeps_the_bounds_of_what_it_overrides() -> None:
    with pytest.raises(TypeError, match="doc"):
        setting(1.0)
    with pytest.raises(TypeError, match="doc"):
        setting(1.0, doc="two\nlines")

    @dataclass
    class Larger(Kinds):
        count: int = override(Kinds, "count", 5)

    assert Larger().count == 5 and docs(Larger)["count"] == "an integer"
    with pytest.raises(ConfigError, match="method.count=0: must be an integer >= 1"):
        check(Larger, OmegaConf.create({**defaults(Larger), "count": 0}), "method")


# -- renamed settings ------------------------------------------------------------------------------
#: a built-in that had each old name
HAD = {"g_beta1": "sid", "fake_beta1": "sida", "adam_betas": "progressive", "adam_eps": "sid", "sigma_gen": "dmd2",
       "grad_clip": "dmd", "fake_score_clip_value": "sida", "lr_warmup": "progressive", "regression.pairs": "dmd",
       "regression.sampler_steps": "dmd", "regression.seed": "dmd", "regression.batch": "dmd",
       "regression.pairs_file": "dmd", "regression.adapt_gray": "dmd"}


def test_the_rename_table_names_settings_that_exist() -> None:
    assert set(HAD) == set(RENAMED)
    for old, (new, _) in RENAMED.items():
        fields = docs(method_settings(HAD[old]))
        assert new in fields and old not in fields, old
    assert renamed_message("method.g_beta1") == (
        "method.g_beta1 is now method.betas_generator (a pair, e.g. method.betas_generator=[0.9,0.999])")
    assert renamed_message("method.adam_eps") == "method.adam_eps is now method.eps"
    assert renamed_message("trainer.grad_clip") is None and renamed_message("method.lr") is None


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_name_on_the_command_line_names_the_new_one(old: str) -> None:
    for prefix in ("", "+"):  # a plain override (Hydra refuses the key) and an added one
        with pytest.raises(ConfigError) as info:
            compose([f"method={HAD[old]}", f"{prefix}method.{old}=1"])
        assert str(info.value) == renamed_message(f"method.{old}")


def test_an_old_name_in_a_preset_names_the_new_one(tmp_path: Path) -> None:
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "mine.yaml").write_text("# @package _global_\nmethod:\n  regression:\n    pairs: 2000\n")
    with pytest.raises(ConfigError) as info:
        compose(["method=dmd", f"hydra.searchpath=[file://{tmp_path}]", "preset=mine"])
    assert str(info.value) == "method.regression.pairs is now method.num_teacher_samples"


# -- the presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS)
def test_dmd_presets_inherit_dmd2s(dataset: str) -> None:
    dmd, dmd2 = (compose([f"method={m}", f"dataset={dataset}"]) for m in ("dmd", "dmd2"))
    assert dmd.trainer == dmd2.trainer and (dmd.threads, dmd.processes) == (dmd2.threads, dmd2.processes)
    own = {"lr_generator", "num_teacher_samples"} if dataset.startswith("digits") else set()
    shared = set(dmd2.method) - {"name", "ttur", "gan"} - own
    assert {k: dmd.method[k] for k in shared} == {k: dmd2.method[k] for k in shared}
    if own:  # DMD's own digits settings: a slower generator, 2000 pairs
        assert (dmd.method.lr_generator, dmd.method.num_teacher_samples) == (2e-5, 2000)


@pytest.mark.parametrize("dataset", DATASETS)
def test_sid2a_presets_are_sidas(dataset: str, tmp_path: Path) -> None:
    init = tmp_path / "g.safetensors"
    init.write_bytes(b"")
    sid2a, sida = (compose([f"method={m}", f"dataset={dataset}", *extra])
                   for m, extra in (("sid2a", [f"method.init={init}"]), ("sida", [])))
    assert sid2a.trainer == sida.trainer and (sid2a.threads, sid2a.processes) == (sida.threads, sida.processes)
    assert {k: v for k, v in sid2a.method.items() if k not in ("name", "init")} == \
        {k: v for k, v in sida.method.items() if k != "name"}


# A few pinned values per preset (the composed configs were compared key by key with the YAML
# configs before the settings classes; only renamed keys differed).
@pytest.mark.parametrize(("overrides", "pinned"), [
    (["method=sid", "dataset=ffhq64"], {"method.betas_generator": [0.9, 0.999], "method.betas_fake_score": [0.0, 0.999],
                                        "method.eps": 1e-6, "method.lr_generator": 1e-5}),
    (["method=sida", "dataset=imagenet64"], {"method.alpha": 1.0, "method.eps": 1e-6, "method.clip_grad_value_fake_score": 1.0,
                                             "method.published_batch_gpu": 32}),
    (["method=dmd2", "dataset=imagenet64"], {"method.sigma_init": 80.0, "method.clip_grad_norm": 10.0, "method.ttur": 5,
                                             "method.warmup_iterations": 500 / 7, "trainer.batch": 280}),
    (["method=dmd", "dataset=cifar10"], {"method.ttur": 1, "method.lr": 2e-6, "method.num_teacher_samples": 10000,
                                         "method.teacher_sampler_steps": 18, "method.teacher_sample_seed": 0,
                                         "method.teacher_sample_batch": 500, "trainer.batch": 256}),
    (["method=dmd", "dataset=digits"], {"method.lr": 1e-4, "method.lr_fake_score": 1e-4, "method.warmup_iterations": 20}),
    (["method=progressive", "dataset=imagenet64"], {"method.warmup_iterations": 0, "method.betas": [0.9, 0.999],
                                                    "method.start_steps": 1024, "method.final_zero": True}),
    (["method=ect", "dataset=cifar10"], {"method.lr": 1e-4, "method.dropout": 0.2, "method.stage_kimg": 3200,
                                         "trainer.batch": 128, "trainer.ema_beta": 0.9999, "trainer.kimg": 25600}),
    (["method=scd", "dataset=imagenet64"], {"method.p_std": 1.6, "method.clip_grad_norm": 10.0, "trainer.batch": 1024,
                                            "method.betas": [0.9, 0.99], "method.data": "real"}),
    (["method=consistency", "dataset=imagenet64"], {"method.betas": [0.9, 0.999], "method.eps": 1e-8, "method.mu": 0.95,
                                                    "method.teacher_sampler_steps": 40, "method.teacher_sample_seed": 0}),
    (["method=f_distill", "dataset=imagenet64"], {"method.divergence": "jensen_shannon", "method.ratio_ema": 0.5,
                                                  "method.lr": 2e-6, "method.gan.enabled": True, "method.dm_index_min": 2,
                                                  "method.dm_index_max": 998, "trainer.batch": 512, "trainer.ema_beta": 0.9999}),
    (["method=f_distill", "dataset=cifar10-cond"], {"method.divergence": "forward_kl", "method.ratio_ema": 0.0,
                                                    "method.lr": 1e-4, "method.gan.generator_weight": 1e-3,
                                                    "trainer.batch": 2048}),
    (["method=f_distill", "dataset=digits"], {"method.lr": 1e-4, "method.gan.enabled": True, "trainer.batch": 128}),
    (["method=uni_instruct", "dataset=imagenet64"], {"method.divergence": "forward_kl", "method.lr": 4e-6, "method.eps": 1e-6,
                                                     "method.published_batch_gpu": 8, "trainer.batch": 8192,
                                                     "trainer.ema_halflife_kimg": 2000}),
    (["method=uni_instruct", "dataset=cifar10"], {"method.generator_start_kimg": 100, "method.adversarial_start_kimg": 200,
                                                  "method.published_batch_gpu": 128, "trainer.batch_gpu": 128}),
    (["method=uni_instruct", "dataset=digits-cond"], {"method.generator_start_kimg": 4, "method.adversarial_start_kimg": 8}),
])
def test_pinned_preset_values(overrides: list[str], pinned: dict[str, object]) -> None:
    cfg = compose(overrides)
    for key, value in pinned.items():
        got = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, key


def test_settings_classes_share_their_fields_with_their_siblings() -> None:
    def names(m: str) -> set[str]:
        return {f.name for f in dataclasses.fields(method_settings(m))}

    assert names("sid") < names("sida") < names("uni_instruct") and names("dmd2") - {"gan"} < names("dmd")
    assert names("dmd2") < names("f_distill")
    assert issubclass(method_settings("sida"), method_settings("sid"))
