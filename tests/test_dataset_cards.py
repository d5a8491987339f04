"""A dataset is one card: the user's own cards, found through $SIDBENCH_CONFIG_PATH (Hydra's search path)."""
from __future__ import annotations

from pathlib import Path

import pytest

import sidbench.conf
from sidbench.config import ConfigError, compose, group_config, group_options
from sidbench.eval.reference import card_references, reference_stats_url

#: the package's cards, whatever they are (a new shipped card changes no test)
SHIPPED = {p.stem for p in (Path(sidbench.conf.__file__).parent / "dataset").glob("*.yaml")}

OWN_CARD = """\
name: faces32
description: "my faces, 32x32, with my own EDM teacher"
resolution: 32
channels: 3
label_dim: 0
label_freq: uniform
metric: fid
ref_stats: /data/faces32.npz
eval_samples: 1000
final_samples: 50000
images: {path: null, builtin: null}
teacher:
  name: edm-faces32
  url: null
  path: /data/edm-faces32.pkl
  builtin: null
  sha256: null
  sampler_steps: 18
  published: null
  constructor: {precond: EDMPrecond, img_resolution: 32, img_channels: 3, label_dim: 0, model_type: SongUNet}
budget: {unit: passes, value: 1.0e+9}
"""


@pytest.fixture
def own_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "my_conf"
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "faces32.yaml").write_text(OWN_CARD)
    (root / "dataset" / "digits-few.yaml").write_text("defaults:\n  - digits\n  - _self_\nname: digits-few\neval_samples: 100\n")
    (root / "dataset" / "digits.yaml").write_text("name: not-the-shipped-digits\n")  # the package's card wins
    (root / "preset").mkdir()
    (root / "preset" / "sid_faces32.yaml").write_text("# @package _global_\nmethod:\n  alpha: 0.7\n")
    monkeypatch.setenv("SIDBENCH_CONFIG_PATH", str(root))
    return root


def test_shipped_cards_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDBENCH_CONFIG_PATH", raising=False)
    assert set(group_options("dataset")) == SHIPPED
    with pytest.raises(ConfigError, match="unknown dataset 'faces32'"):
        compose(["dataset=faces32"])


def test_own_cards_compose_with_their_presets(own_cards: Path) -> None:
    assert set(group_options("dataset")) == SHIPPED | {"faces32", "digits-few"}
    cfg = compose(["dataset=faces32", "method=sid"])
    assert (cfg.dataset.name, cfg.dataset.resolution, cfg.eval.metric, cfg.eval.num_samples) == ("faces32", 32, "fid", 1000)
    assert cfg.method.alpha == 0.7  # my_conf/preset/sid_faces32.yaml
    few = compose(["dataset=digits-few"])
    assert (few.dataset.name, few.dataset.eval_samples, few.dataset.teacher.builtin) == ("digits-few", 100, "digits")
    assert compose(["dataset=digits"]).dataset.name == "digits"
    # read as Hydra composes them (a card's defaults applied), and their references by key
    assert group_config("dataset", "digits-few").teacher.builtin == "digits"
    assert group_config("dataset", "digits").name == "digits"
    assert card_references()["faces32"] == "/data/faces32.npz" and reference_stats_url("faces32") == "/data/faces32.npz"
    assert "faces32" not in card_references(shipped_only=True)


def test_a_relative_folder_is_from_the_working_directory(own_cards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(own_cards.parent)
    monkeypatch.setenv("SIDBENCH_CONFIG_PATH", "my_conf")
    assert compose(["dataset=faces32"]).dataset.name == "faces32"


def test_a_missing_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDBENCH_CONFIG_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="SIDBENCH_CONFIG_PATH names .*nowhere.*, which is not a folder") as err:
        compose(["dataset=digits"])
    assert "\n" not in str(err.value)
