"""`sidbench teacher measure`: a digits teacher's distances measured again at a run's two sizes and
stored with its weights, which stay as they were."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sidbench.cli import main
from sidbench.teachers.load import load_native_teacher
from sidbench.testing.tiny import make_tiny_teacher

SIZES = ["dataset.teacher.train.eval_samples=48", "eval.final_samples=96", "dataset.teacher.sampler_steps=2", "device=cpu"]


def test_measure_stores_both_sizes_and_keeps_the_weights(tmp_path: Path) -> None:
    path = make_tiny_teacher(tmp_path / "teacher.safetensors")
    constructor, before, _ = load_native_teacher(path)
    assert main(["teacher", "measure", *SIZES, "--file", str(path)]) == 0
    after_constructor, after, info = load_native_teacher(path)
    assert after_constructor == constructor and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (info["metric_samples"], info["final_metric_samples"]) == (48, 96)
    assert set(info["metrics"]) == set(info["final_metrics"]) == {"fd_pixel", "fd_digits"}
    # a random network is far from the digits, and more images only take the size bias away
    assert 0 < info["final_metrics"]["fd_pixel"] < info["metrics"]["fd_pixel"]
    assert info["measure_command"] == f"sidbench teacher measure {' '.join(SIZES)} --file {path}"
    card = json.loads(path.with_name("card.json").read_text())
    assert {k: card[k] for k in ("metrics", "final_metrics", "final_metric_samples")} == \
        {k: info[k] for k in ("metrics", "final_metrics", "final_metric_samples")}
    # The same evaluation noise gives the same numbers again.
    assert main(["teacher", "measure", *SIZES, "--file", str(path)]) == 0
    assert load_native_teacher(path)[2]["final_metrics"] == info["final_metrics"]


def test_measure_of_a_real_dataset_says_what_to_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "measure", "dataset=cifar10", "--file", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "sidbench fid teacher dataset=cifar10" in err and "Traceback" not in err


def test_measure_of_a_file_that_does_not_fit_its_constructor_says_which_and_keeps_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    path = make_tiny_teacher(tmp_path / "teacher.safetensors")
    constructor, state, info = load_native_teacher(path)
    state.pop(sorted(state)[0])
    save_file(state, str(path), metadata={"constructor": json.dumps(constructor), "info": json.dumps(info)})
    before = path.read_bytes()
    assert main(["teacher", "measure", *SIZES, "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "missing in the file" in err and "Traceback" not in err
    assert path.read_bytes() == before
