"""SiDA's adversarial terms against the formulas of docs/sid.md#sida, written out by hand."""
from __future__ import annotations

import math

import torch

from sidbench.diffusion import edm_weight
from sidbench.methods.sid.loss import normaliser
from sidbench.methods.sid.sida_loss import adversarial_generator_loss, discriminator_logits, discriminator_loss


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_logits_are_the_bottleneck_averaged_over_channels_in_float32() -> None:
    bottleneck = torch.arange(2 * 3 * 2 * 2, dtype=torch.float16).reshape(2, 3, 2, 2)
    logits = discriminator_logits(bottleneck)
    assert logits.shape == (2, 1, 2, 2) and logits.dtype == torch.float32
    # sample 0, position (0, 0): channels hold 0, 4, 8
    assert logits[0, 0, 0, 0].item() == 4.0 and logits[1, 0, 1, 1].item() == (15 + 19 + 23) / 3


def test_discriminator_loss_is_one_batch_bce_scalar_times_each_weight() -> None:
    l_real = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]]])   # [2, 1, 1, 2]
    l_fake = torch.tensor([[[[-1.0, 0.0]]], [[[2.0, -0.5]]]])
    weight = torch.tensor([2.0, 0.25]).view(2, 1, 1, 1)
    # BCE(l, 1) = log(1 + e^-l), BCE(l, 0) = log(1 + e^l), each the mean over all four logits
    bce_real = sum(softplus(-v) for v in (1.0, -2.0, 0.5, 3.0)) / 4
    bce_fake = sum(softplus(v) for v in (-1.0, 0.0, 2.0, -0.5)) / 4
    expected = (2.0 + 0.25) * 0.5 * (bce_real + bce_fake)
    assert math.isclose(discriminator_loss(l_real, l_fake, weight).item(), expected, rel_tol=1e-6)


def test_adversarial_term_clamps_logits_and_divides_by_each_normaliser() -> None:
    logits = torch.tensor([[[[20.0, -30.0]]], [[[0.0, 1.0]]]])  # 20 and -30 count as 10 and -10
    wf = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    g = sum(softplus(-v) for v in (10.0, -10.0, 0.0, 1.0)) / 4
    numel = 3 * 8 * 8
    expected = g * numel / 0.5 + g * numel / 2.0
    assert math.isclose(adversarial_generator_loss(logits, wf, numel).item(), expected, rel_tol=1e-6)


def test_the_adversarial_gradient_reaches_the_logits_only_through_the_bce() -> None:
    logits = torch.tensor([[[[0.3]]], [[[-0.7]]]], requires_grad=True)
    wf = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    adversarial_generator_loss(logits, wf, 1).backward()
    # d/dl of mean softplus(-l) = -sigmoid(-l) / N, summed with weights 1/wf_i over the samples
    scale = 1 / 1.0 + 1 / 4.0
    expected = torch.tensor([-torch.sigmoid(torch.tensor(-0.3)) / 2, -torch.sigmoid(torch.tensor(0.7)) / 2]) * scale
    torch.testing.assert_close(logits.grad.flatten(), expected)


def test_shared_helpers_are_sids() -> None:
    sigma = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(edm_weight(sigma).flatten(), torch.tensor([(0.25 + 0.25) / 0.0625, (4 + 0.25) / 1.0]))
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, -3.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    torch.testing.assert_close(normaliser(x, y).flatten(), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(normaliser(x, x).flatten(), torch.full((2,), 1e-5))  # clipped below
