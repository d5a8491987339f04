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
    # measured at the sizes a run scores: its evaluations and its end (sidbench.run.reference_metrics)
    cfg = compose([f"dataset={name}"])
    assert card["metric_samples"] == info["metric_samples"] == cfg.eval.num_samples
    assert card["final_metric_samples"] == info["final_metric_samples"] == cfg.eval.final_samples
    assert card["final_metrics"] == info["final_metrics"]
    assert info["measure_command"] == card["measure_command"] == f"sidbench teacher measure dataset={name}"
    # the command stored with the weights remakes them from the dataset card as it stands
    assert info["command"] == card["command"] == f"sidbench teacher train dataset={name}"
    net = build_edm_network(constructor)
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == info["parameters"] == card["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize("size", ["metric", "final_metric"])
def test_shipped_digits_teacher_distance_is_remeasured_from_its_weights(size: str) -> None:
    """The README's ratios divide by the teacher's distances in its card: measure them again from
    the shipped weights (Heun, the card's steps, the evaluation's noise) at both sizes (2000
    images: every evaluation; 20000: a run's end, about 100 s on one core)."""
    import torch

    from sidbench.teachers.load import load_teacher
    from sidbench.teachers.train import measure_teacher

    cfg = compose(["dataset=digits"])
    card = json.loads(builtin_teacher_path("digits").with_name("card.json").read_text())
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    measured = measure_teacher(teacher.net, cfg, torch.device("cpu"), card[f"{size}_samples"], card["sampler"]["steps"])
    assert measured["fd_pixel"] == pytest.approx(card[f"{size}s"]["fd_pixel"], rel=1e-4)
    assert measured["fd_digits"] == pytest.approx(card[f"{size}s"]["fd_digits"], rel=1e-3)
