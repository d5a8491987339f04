"""f-distill's weights and weighted DM loss against NVIDIA FastGen's (fixtures/f_distill.pt, made by
make_f_distill.py; fixtures/f_distill.json says which commit).

For each case, sidbench's `f_distill_weights` (with a `RatioNormaliser` carried across the case's
consecutive batches) and `weighted_distribution_matching_loss` run on the fixture's inputs; the
weights h, the normaliser's bin averages after every batch, the loss and its gradient w.r.t. the
generated images (what reaches the generator) are compared with FastGen's.

Tolerances (float32): weights and bins rtol 1e-5, atol 1e-6 (the same operations in the same order
up to float rounding). Loss and gradient rtol 1e-5, atol 1e-7 times the largest gradient: FastGen
adds 1e-6 to the DM normaliser mean|x - teacher_x0| where sidbench floors it at 1e-5 (the same
gradient up to 1e-6 / normaliser, about 2e-6 relative here).

Reverse KL: FastGen's branch raises (its h is a 0-d tensor whose len() the batch normalisation
takes; the fixture records the error); sidbench's weights are exactly 1, and the loss is DMD2's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sidbench.methods.baselines.dmd.f_distill_loss import (
    RatioNormaliser, f_distill_weights, weighted_distribution_matching_loss,
)
from sidbench.methods.baselines.dmd.loss import distribution_matching_loss

FIXTURE = Path(__file__).parent / "fixtures" / "f_distill.pt"


def load() -> dict[str, Any]:
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} missing: run tests/conformance/make_f_distill.py --reference <FastGen checkout>")
    return torch.load(FIXTURE, weights_only=False)


FIX = load()
SETTINGS = FIX["info"]["settings"]
BINNED = [k for k, c in FIX["cases"].items() if "steps" in c]


def normaliser_of(case: dict[str, Any]) -> RatioNormaliser | None:
    if not case["normalization"]:
        return None
    return RatioNormaliser(bins=case["bins"], sigma_min=SETTINGS["t_min"], sigma_max=SETTINGS["t_max"], ema_rate=case["ema"])


@pytest.mark.parametrize("name", BINNED)
def test_weights_bins_and_gradient_match_fastgen(name: str) -> None:
    case = FIX["cases"][name]
    normaliser = normaliser_of(case)
    for i, step in enumerate(case["steps"]):
        sigma = step["t"].float().reshape(-1, 1, 1, 1)
        h = f_distill_weights(step["logits"], sigma, case["divergence"], normaliser)
        torch.testing.assert_close(h, step["h"], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} step {i} weights: {m}")
        if normaliser is not None:
            torch.testing.assert_close(normaliser.means, step["bins"], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{name} step {i} bin averages: {m}")
        x = step["gen_data"].clone().requires_grad_(True)
        loss, keep = weighted_distribution_matching_loss(x, step["teacher_x0"], step["fake_score_x0"], h)
        (grad,) = torch.autograd.grad(loss, x)
        assert keep.all()
        scale = step["grad_gen_data"].abs().max().item()
        assert scale > 0
        torch.testing.assert_close(grad, step["grad_gen_data"], rtol=1e-5, atol=1e-7 * scale,
                                   msg=lambda m: f"{name} step {i} gradient w.r.t. the images: {m}")
        torch.testing.assert_close(loss, step["loss"], rtol=1e-5, atol=0.0)


def test_the_weights_matter_in_the_fixture() -> None:
    """The fixture pins the weighting: unweighted DMD2 gives another gradient on its inputs."""
    step = FIX["cases"]["js-ema0.5"]["steps"][0]
    x = step["gen_data"].clone().requires_grad_(True)
    loss, _ = distribution_matching_loss(x, step["teacher_x0"], step["fake_score_x0"])
    (grad,) = torch.autograd.grad(loss, x)
    assert not torch.allclose(grad, step["grad_gen_data"], rtol=0.05)


def test_reverse_kl_is_dmd2_where_fastgen_fails() -> None:
    case = FIX["cases"]["rkl"]
    assert "len() of a 0-d tensor" in case["error"], case["error"]
    inputs = case["inputs"]
    sigma = inputs["t"].float()
    normaliser = normaliser_of(case)
    h = f_distill_weights(inputs["logits"], sigma, "reverse_kl", normaliser)
    assert torch.equal(h, torch.ones_like(h))
    assert torch.equal(normaliser.means, torch.ones(case["bins"]))  # no ratio, no update
    x = inputs["gen_data"].clone().requires_grad_(True)
    weighted, _ = weighted_distribution_matching_loss(x, inputs["teacher_x0"], inputs["fake_score_x0"], h)
    (g_weighted,) = torch.autograd.grad(weighted, x)
    plain, _ = distribution_matching_loss(x, inputs["teacher_x0"], inputs["fake_score_x0"])
    (g_plain,) = torch.autograd.grad(plain, x)
    assert torch.equal(weighted, plain) and torch.equal(g_weighted, g_plain)
