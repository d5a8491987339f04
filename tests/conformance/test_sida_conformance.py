"""SiDA's iteration against the official code (fixtures/sida.pt, made by make_sida.py from the SiD
repository's `sida` branch; fixtures/sida.json says which commit).

sidbench's own SiDA plugin runs one iteration (its real `train_step` through a `StepContext`, in
the phase the trainer's stage logic gives for the fixture's images seen) on networks with the
fixture's weights, with the fixture's real batches as its real data and under `Replay` of the
official draws (reordered as in test_sid_conformance.py). The gradients each Adam sees when it
steps and the losses are compared with the official ones; tolerance rtol 1e-4, atol 1e-6 of the
largest gradient, as for SiD; for the fake score, whose gradients are clipped to [-1, 1], of the
largest before the clip (the float error of a value left unclipped scales with the unclipped
gradients, not with the clip).

sidbench's documented departures from the official loop (docs/sid.md, "SiDA in sidbench") and
where this file shows what they do to the optimiser:
- before `generator_start_kimg` sidbench skips the generator's update; the official loop computes
  it and takes no step. Case "warm-up": in both, the generator's Adam sees nothing and G is
  unchanged; the fake score's gradients agree.
- the real batch runs through the whole fake score (concatenated with the generated one), the
  official code through its encoder only: the discarded decoder output has no gradient, so every
  case's fake-score gradients agree.
- the phase boundaries: sidbench enters a phase when the images seen reach its start, the official
  loop when they exceed it; `test_phase_boundaries_never_fall_on_an_iteration_of_a_preset` shows
  the two never differ for the presets.
The reductions (division by the process's batch, BCE means per micro-batch) are the official ones:
case "adversarial" has two accumulation rounds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from draws import Replay
from test_sid_conformance import CPU, assert_gradients_match, build_method, load, sid_replay_draws, watch

from sidbench.config import compose
from sidbench.methods.sid.sida_loss import discriminator_logits
from sidbench.teachers.networks import build_edm_network
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import stage_index

PRESETS = Path(__file__).resolve().parents[2] / "sidbench" / "conf" / "preset"


class FixtureReal:
    """The fixture's data-loader batches, in the order the iteration reads them (the real data a
    run would draw from its dataset; `StepContext.real` calls `draw`)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.queue = list(batches)

    def draw(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = self.queue.pop(0)
        assert images.shape[0] == n, f"a real batch of {images.shape[0]} for a micro-batch of {n}"
        return images.to(device), None if labels is None else labels.to(device)


def sida_overrides(settings: dict[str, Any]) -> list[str]:
    # the fixture's key -> sidbench's setting
    keys = {"discriminator_weight": "discriminator_weight", "adversarial_scale": "adversarial_scale",
            "adversarial_mix": "adversarial_mix", "fake_score_clip_value": "clip_grad_value_fake_score",
            "generator_start_kimg": "generator_start_kimg", "adversarial_start_kimg": "adversarial_start_kimg"}
    return [f"method.{ours}={settings[theirs]}" for theirs, ours in keys.items()]


def run_case(name: str) -> tuple[dict[str, Any], Any, dict[str, dict[str, torch.Tensor]], dict[str, Any], FixtureReal]:
    fixture = load("sida")
    case, settings = fixture["cases"][name], fixture["settings"]
    sida = build_method("sida", case, sida_overrides(settings), settings=settings)
    phase = stage_index(sida.stages(), case["cur_nimg"], 0)
    for i in range(1, phase + 1):  # as the trainer enters the stages
        sida.enter_stage(i, sida.stages()[i])
    real = FixtureReal(case["real"]["fake_score"] + case["real"]["generator"])
    ctx = StepContext(sida.networks(), sida.optimizers(), CPU, batch=case["batch"], batch_gpu=case["batch_gpu"], real_data=real)
    seen = watch(sida)
    with Replay(sid_replay_draws(case, generator=case["generator_stepped"])) as replay:
        logs = sida.train_step(ctx)
    replay.assert_exhausted()
    return case, sida, seen, logs, real


@pytest.mark.parametrize("name", ["adversarial", "sid-phase"])
def test_one_sida_iteration_gives_the_official_gradients_and_losses(name: str) -> None:
    case, sida, seen, logs, real = run_case(name)
    assert not real.queue, "every real batch of the fixture was read"
    for net in ("fake_score", "generator"):
        assert_gradients_match(seen[net], case["grads"][net], f"{name}/{net}", case["grad_scale_before_clip"].get(net))
    expected = {k: sum(v) / case["batch"] for k, v in case["loss_sums"].items()}
    if name == "sid-phase":
        assert "adversarial" not in logs  # the official loop computes the term; it does not enter the gradient
        del expected["adversarial"]
    for k, v in expected.items():
        torch.testing.assert_close(torch.as_tensor(float(logs[k])), torch.tensor(v), rtol=1e-5, atol=1e-6, msg=k)


def test_in_the_warm_up_the_generator_takes_no_step_in_either() -> None:
    case, sida, seen, logs, real = run_case("warm-up")
    assert case["generator_stepped"] is False and case["grads"]["generator"] is None
    assert seen["generator"] == {} and "generator" not in logs  # sidbench's generator optimiser never stepped
    weights = case["weights"]["generator"]
    assert all(torch.equal(p, weights[k]) for k, p in sida.generator.named_parameters())
    assert_gradients_match(seen["fake_score"], case["grads"]["fake_score"], "warm-up/fake_score",
                           case["grad_scale_before_clip"]["fake_score"])
    for k in ("fake_score", "discriminator"):
        torch.testing.assert_close(torch.as_tensor(float(logs[k])), torch.tensor(sum(case["loss_sums"][k]) / case["batch"]),
                                   rtol=1e-5, atol=1e-6, msg=k)
    assert len(real.queue) == len(case["real"]["generator"])  # the generator's batches were not read


@pytest.mark.parametrize("name", ["adversarial", "sid-phase"])
def test_return_bottleneck_gives_the_official_encoder_logits(name: str) -> None:
    """SiDA's logits: the encoder's last output averaged over channels. sidbench's network with
    `return_bottleneck=True` and `discriminator_logits` against the official network's
    return_flag='encoder' and 'encoder_decoder' on the same weights (SongUNet and DhariwalUNet)."""
    case = load("sida")["cases"][name]
    ref = case["encoder"]
    net = build_edm_network(case["constructor"])
    net.load_state_dict(case["weights"]["fake_score"], strict=True)
    with torch.no_grad():
        denoised, bottleneck = net.eval()(ref["x"], ref["sigma"], ref["labels"], return_bottleneck=True)
    logits = discriminator_logits(bottleneck)
    assert logits.shape == ref["logits"].shape and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ref["logits_encoder_decoder"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoised, ref["denoised"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("sida_*.yaml")))
def test_phase_boundaries_never_fall_on_an_iteration_of_a_preset(preset: str) -> None:
    """sidbench's stages start when the images seen reach `start` (`stage_index`: >=); the official
    loop's phases when they exceed it (`cur_nimg > 100 * 1000`). The two differ only at an iteration
    whose images seen equal a start exactly, i.e. when the batch divides it; no preset's does."""
    dataset = preset.removeprefix("sida_")
    cfg = compose(["method=sida", f"dataset={dataset}"])
    batch = int(cfg.trainer.batch)
    for start in (float(cfg.method.generator_start_kimg), float(cfg.method.adversarial_start_kimg)):
        images = start * 1000
        assert images % batch != 0, f"{preset}: batch {batch} lands on {images:.0f} images, where sidbench and the official loop differ"
    # sidbench's convention itself, on stages at 100 and 200 kimg
    sida_stages = build_method_stages()
    assert [stage_index(sida_stages, n, 0) for n in (99_999, 100_000, 199_999, 200_000)] == [0, 1, 1, 2]


def build_method_stages() -> list:
    from sidbench.methods.base import Stage
    from sidbench.methods.sid.sida import PHASES

    return [Stage(name, start=s, unit="kimg") for name, s in zip(PHASES, (0.0, 100.0, 200.0))]
