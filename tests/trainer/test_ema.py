from __future__ import annotations

import math

import torch

from sidbench.trainer.ema import EMA, ema_beta


def test_beta_follows_halflife_with_rampup() -> None:
    # half-life 500 kimg, batch 512: with no ramp-up beta = 0.5 ** (512 / 500000)
    assert math.isclose(ema_beta(512, 10**9, 500, None), 0.5 ** (512 / 500000))
    # early on the ramp-up caps the half-life at 5% of images seen
    assert math.isclose(ema_beta(512, 10240, 500, 0.05), 0.5 ** (512 / (10240 * 0.05)))
    assert ema_beta(512, 0, 500, 0.05) == 0.0  # the first update copies the network


def test_ema_tracks_parameters_and_copies_buffers() -> None:
    net = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, halflife_kimg=1e-3, rampup=None)  # half-life 1 image
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.running_mean.fill_(3.0)
    beta = ema.update(net, batch=1, images_seen=1)
    assert math.isclose(beta, 0.5)
    torch.testing.assert_close(ema.module.weight, torch.full((2,), 0.5))
    torch.testing.assert_close(ema.module.running_mean, torch.full((2,), 3.0))
    assert not ema.module.weight.requires_grad


def test_fixed_rate_replaces_halflife_and_rampup_from_the_first_update() -> None:
    # The consistency models' EMA: theta_ema <- mu theta_ema + (1 - mu) theta at every update,
    # with no ramp-up (the first update averages too, unlike the ramped half-life's copy).
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    mu = 0.9999432189950708
    ema = EMA(net, halflife_kimg=500, rampup=0.05, beta=mu)
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert ema.update(net, batch=2048, images_seen=0) == mu
    assert ema.module.weight.item() == torch.tensor(0.0).lerp(torch.tensor(1.0), 1 - mu).item()
    none = EMA(net, beta=0.0)  # rate 0: the average is the network itself (no EMA, as published for PD)
    with torch.no_grad():
        net.weight.fill_(7.0)
    none.update(net, batch=1, images_seen=10**6)
    assert none.module.weight.item() == 7.0
