"""benchmarks/real_size.py on the CPU at micro-batch 1 on the cifar10 preset: the real DDPM++ network
(56M parameters, random weights) through each method and the trainer's own iteration. Its images
have the dataset's shape, and the compute counter's passes and FLOPs per iteration are those of the
method's documented iteration (one forward of one image through the network, counted here on the
meta device, times the passes). One iteration of SiD and progressive distillation takes about 20 s
of one core; the other methods together about 40 s more (marked slow). The presets in bf16 (DMD2,
DMD2-GAN, f-distill) run in fp32 on a CPU without bf16 kernels, as the rows say (there one such
iteration took 239 s, not 5.7)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sidbench.config import compose
from sidbench.teachers.networks import build_edm_network
from sidbench.trainer.context import cpu_has_native

_spec = importlib.util.spec_from_file_location("real_size", Path(__file__).parents[1] / "benchmarks" / "real_size.py")
real_size = importlib.util.module_from_spec(_spec)
sys.modules["real_size"] = real_size  # its dataclass looks its module up there
_spec.loader.exec_module(real_size)

CPU = torch.device("cpu")
#: (network passes, the teacher's) per generated image of one iteration, from each method's
#: documented iteration (module docstrings; SiD's also in the README's "Equal compute")
PASSES = {
    # fake-score update: G forward 1, fake score forward and backward 3; generator update: G 3,
    # teacher and fake score forward and backward to the input, 2 each
    "sid": (11, 2),
    # last stage: two teacher Euler steps 2; the student forward and backward 3
    "progressive": (5, 2),
    # SiD's, with the fake score's update on [x_g, x_r]: 2 images x 3 (x_r through the encoder only)
    "sida": (14, 2),
    # generator: G 3, teacher 1, fake score 1 (no graph), the regression's G(z_ref) 3; fake score 3
    "dmd": (11, 1),
    # iteration 0 steps the generator (TTUR): G 3, teacher 1, fake score 1 (no graph); fake score 3
    "dmd2": (8, 1),
    # one Heun step of the teacher 2; f forward and backward 3; the target network 1
    "consistency": (6, 2),
    # DMD2's, plus the GAN term: fake score forward 1 and backward to x 1, head 2; the fake score's
    # update on [x_t, real, fake] 9 and the head's on 2 feature maps 6
    "dmd2-gan": (24, 1),
    # DMD2-GAN's, plus the frozen GAN head on the DM term's bottleneck for the ratio r 1 (a head costs the
    # passes of the UNet it sits beside, docs/compute.md; the bottleneck comes from the DM term's call)
    "f_distill": (25, 1),
    # SiDA's last phase: the ratio comes from the same fake-score call's logits, no extra pass
    "uni_instruct": (14, 2),
    # the student at t forward and backward 3, at r forward 1 (no graph); no teacher
    "ect": (4, 0),
    # teacher 1, student forward and backward 3, the tangent's JVP 2, the log-variance head 3
    "scd": (9, 1),
}
#: UNet forwards of FLOPs per generated image where that differs from the passes (docs/compute.md: a
#: JVP is 2 passes and about 3 forwards of FLOPs; the log-variance head is a few linear layers)
FLOP_FORWARDS = {"scd": 7}


@pytest.fixture(scope="module")
def forward_flops() -> float:
    """FLOPs of one image's forward through the cifar10 card's network (shapes only: meta device)."""
    with torch.device("meta"):
        net = build_edm_network(dict(compose(["dataset=cifar10"]).dataset.teacher.constructor)).eval()
        with FlopCounterMode(display=False) as mode:
            net(torch.randn(1, 3, 32, 32), torch.ones(1), None)
    return float(mode.get_total_flops())


@pytest.fixture(scope="module")
def encoder_flops() -> float:
    """FLOPs of one image's forward through that network's encoder alone (`decode_first=0`)."""
    with torch.device("meta"):
        net = build_edm_network(dict(compose(["dataset=cifar10"]).dataset.teacher.constructor)).eval()
        with FlopCounterMode(display=False) as mode:
            net(torch.randn(1, 3, 32, 32), torch.ones(1), None, return_bottleneck=True, decode_first=0)
    return float(mode.get_total_flops())


def check_row(row: dict, forward_flops: float, encoder_flops: float = 0.0) -> None:
    assert row["status"] == "measured", row["status"]
    assert (row["micro_batch"], row["iterations"]) == (1, 1)
    assert row["sample_shape"] == [1, 3, 32, 32]
    assert (row["passes_per_iteration"], row["teacher_passes_per_iteration"]) == PASSES[row["method"]]
    assert row["seconds_per_iteration"] > 0 and row["peak_memory_gib"] > 0.2
    assert row["flops_per_second"] == pytest.approx(row["flops_per_iteration"] / row["seconds_per_iteration"])
    if row["method"] in ("dmd2-gan", "f_distill"):
        # the head is a few convolutions, and the GAN term's backward runs through the encoder only:
        # 15 whole-network passes and part of one (f-distill's extra head call adds a few convolutions)
        assert 15 * forward_flops < row["flops_per_iteration"] < 16 * forward_flops
    elif row["method"] in FLOP_FORWARDS:
        assert row["flops_per_iteration"] == pytest.approx(FLOP_FORWARDS[row["method"]] * forward_flops, rel=0.03)
    elif row["method"] in ("sida", "uni_instruct"):
        # the real half of the fake score's update stops after the encoder: of its 3 passes (forward,
        # backward to the weights) only the encoder's part is spent; the passes count it whole
        decoder = forward_flops - encoder_flops
        assert encoder_flops < 0.4 * forward_flops
        assert row["flops_per_iteration"] == pytest.approx(row["passes_per_iteration"] * forward_flops - 3 * decoder, rel=0.01)
    else:  # every pass is a whole network's: FLOPs = passes x one forward (+-1%: augmentation, first layers)
        assert row["flops_per_iteration"] == pytest.approx(row["passes_per_iteration"] * forward_flops, rel=0.01)


def test_sid_and_progressive_at_micro_batch_1(tmp_path: Path, forward_flops: float, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "real_size.md"
    assert real_size.main(["--methods", "sid", "progressive", "--datasets", "cifar10", "--device", "cpu",
                           "--batch-gpu", "1", "--warmup", "0", "--iterations", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["sid", "progressive"]
    for row in rows:
        check_row(row, forward_flops)
    sid, progressive = rows
    assert sid["stage"] == "" and progressive["stage"] == "1-step (last of 13)"
    assert "precomputation excluded" in progressive["notes"] and "precomputation" not in sid["notes"]
    table = out.read_text()
    assert table in capsys.readouterr().out and table.count("| cifar10 | fp32 | 1 | 1 |") == 2


def test_the_default_rows_are_every_registered_method() -> None:
    from sidbench.methods import METHODS

    rows = real_size.default_methods()
    assert rows[0] == "sid" and len(rows) == len(set(rows))
    assert set(rows) == (set(METHODS.names()) - set(real_size.SAME_ITERATION)) | set(real_size.VARIANTS)
    assert set(real_size.SAME_ITERATION.values()) <= set(rows)  # the row that times such a method exists
    # every built-in row's passes are counted by hand above (other tests may have registered toy plugins)
    builtin = {r for r in rows if r in real_size.VARIANTS or METHODS.get(r).__module__.startswith("sidbench.methods.")}
    assert set(PASSES) == builtin and len(builtin) == 11


@pytest.mark.slow
def test_the_frontier_methods_at_micro_batch_1(forward_flops: float, encoder_flops: float) -> None:
    rows = real_size.measure_matrix(["f_distill", "uni_instruct", "ect", "scd"], ["cifar10"], CPU, batch_gpu=1,
                                    warmup=0, iterations=1)
    for row in rows:
        check_row(vars(row), forward_flops, encoder_flops)
    by_name = {r.method: r for r in rows}
    assert by_name["uni_instruct"].stage == "uni-instruct (last of 3)" and by_name["ect"].stage.endswith("(last of 24)")
    assert all(any(o.startswith("dataset.images.path=") for o in r.overrides) for r in rows)  # all read real images


@pytest.mark.slow
def test_the_other_methods_at_micro_batch_1(forward_flops: float, encoder_flops: float) -> None:
    methods = ["sida", "dmd", "dmd2", "consistency", "dmd2-gan"]
    rows = real_size.measure_matrix(methods, ["cifar10"], CPU, batch_gpu=1, warmup=0, iterations=1)
    for row in rows:
        check_row(vars(row), forward_flops, encoder_flops)
    by_name = {r.method: r for r in rows}
    assert by_name["sida"].stage == "sida (last of 3)"  # with the adversarial term
    assert any(o.startswith("dataset.images.path=") for o in by_name["sida"].overrides)
    assert not any(o.startswith("dataset.images.path=") for o in by_name["dmd2"].overrides)
    assert by_name["sida"].precision == "fp32" and "precision" not in by_name["sida"].notes  # its preset's
    for name in ("dmd2", "dmd2-gan"):  # bf16 presets: as published where this CPU has the kernels, else fp32 and a note
        if cpu_has_native("bf16"):
            assert by_name[name].precision == "bf16" and "precision" not in by_name[name].notes
        else:
            assert by_name[name].precision == "fp32"
            assert "trainer.precision=fp32, not the preset's bf16 (no native bf16 kernels on this CPU)" in by_name[name].notes


def test_rows_that_cannot_run_are_recorded_and_the_rest_go_on(tmp_path: Path) -> None:
    out = tmp_path / "t.md"
    rows = real_size.measure_matrix(["no-such-method"], ["cifar10"], CPU, out=out)
    assert rows[0].status.startswith("skipped: unknown method 'no-such-method'")
    rows = real_size.measure_matrix(["sid", "dmd"], ["cifar10", "ffhq64"], CPU, out=out, stop_after=0)
    assert [(r.method, r.dataset) for r in rows] == [("sid", "cifar10"), ("dmd", "cifar10"), ("sid", "ffhq64"), ("dmd", "ffhq64")]
    assert all(r.status == "not measured: --stop-after 0 s reached before this row" for r in rows)
    assert out.read_text().count("not measured: --stop-after") == 4
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == 4
