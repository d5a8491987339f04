"""The teachers shipped in the package agree with their dataset cards and their card.json: a dry run
prints the card's constructor, while a run builds the network from the file's own metadata."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.teachers.load import builtin_teacher_path, load_native_teacher
from sidbench.teachers.networks import build_edm_network


@pytest.mark.parametrize("name", ["digits", "digits-cond"])
def test_shipped_teacher_matches_its_dataset_card(name: str) -> None:
    path = builtin_teacher_path(name)
    constructor, state, info = load_native_teacher(path)
    assert constructor == OmegaConf.to_container(compose([f"dataset={name}"]).dataset.teacher.constructor, resolve=True)
    card = json.loads(path.with_name("card.json").read_text())
    assert card["constructor"] == constructor and card["metrics"] == info["metrics"]
    # the command stored with the weights remakes them from the dataset card as it stands
    assert info["command"] == card["command"] == f"sidbench teacher train dataset={name}"
    net = build_edm_network(constructor)
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == info["parameters"] == card["parameters"]
