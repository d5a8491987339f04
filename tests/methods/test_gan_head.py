"""DMD2's GAN head: the published 8x8 layers, the smaller bottlenecks, and real EDM networks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sidbench.methods.baselines.dmd.gan_head import GANHead, bottleneck_shape
from sidbench.methods.baselines.dmd.loss import gan_discriminator_loss
from sidbench.teachers.networks import build_edm_network
from sidbench.testing.tiny import TINY_CONSTRUCTOR

ROOT = Path(__file__).resolve().parents[2]


def _dataset_constructor(name: str) -> dict:
    config = yaml.safe_load((ROOT / "sidbench" / "conf" / "dataset" / f"{name}.yaml").read_text())
    return config["teacher"]["constructor"]


def _conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out  # weight + bias


def test_8x8_head_is_the_published_layer_stack() -> None:
    head = GANHead.for_bottleneck(768, 8)
    layers = list(head.layers)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.GroupNorm, nn.SiLU, nn.Conv2d, nn.GroupNorm, nn.SiLU, nn.Conv2d]
    c1, n1, _, c2, n2, _, c3 = layers
    conv = lambda m: (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)  # noqa: E731
    assert conv(c1) == (768, 768, (4, 4), (2, 2), (1, 1))  # 8x8 -> 4x4
    assert conv(c2) == (768, 768, (4, 4), (4, 4), (0, 0))  # 4x4 -> 1x1
    assert (c3.in_channels, c3.out_channels, c3.kernel_size) == (768, 1, (1, 1))
    assert (n1.num_groups, n1.num_channels, n2.num_groups) == (32, 768, 32)


def test_8x8_head_parameter_count_matches_a_hand_count() -> None:
    # two 4x4 convs 768 -> 768, two GroupNorms (weight + bias), one 1x1 conv 768 -> 1
    expected = 2 * _conv_params(768, 768, 4) + 2 * 2 * 768 + _conv_params(768, 1, 1)
    assert expected == 18_879_745
    assert sum(p.numel() for p in GANHead(768, 8).parameters()) == expected


@pytest.mark.parametrize("channels,resolution", [(768, 8), (256, 8), (32, 4), (16, 4), (64, 16), (8, 2)])
def test_head_gives_one_logit_per_image(channels: int, resolution: int) -> None:
    torch.manual_seed(0)
    head = GANHead(channels, resolution)
    logits = head(torch.randn(3, channels, resolution, resolution))
    assert logits.shape == (3,)
    # a GroupNorm with one channel a group on the final 1x1 map would make every logit the same
    assert float(logits.detach().std()) > 1e-3


def test_4x4_head_keeps_the_two_hidden_layers_with_fewer_groups() -> None:
    c1, n1, _, c2, n2, _, c3 = GANHead(32, 4).layers
    assert (c1.kernel_size, c1.stride, c1.padding) == ((4, 4), (2, 2), (1, 1))  # 4 -> 2
    assert (c2.kernel_size, c2.stride, c2.padding) == ((2, 2), (2, 2), (0, 0))  # 2 -> 1
    assert (n1.num_groups, n2.num_groups) == (8, 8)  # 4 channels a group
    assert GANHead(16, 4).layers[1].num_groups == 4
    assert GANHead(256, 8).layers[1].num_groups == 32
    assert len(GANHead(64, 16).layers) == 10  # 16 -> 8 -> 4 -> 1 -> logit


@pytest.mark.parametrize("channels,resolution", [(32, 6), (32, 1), (32, 12), (2, 4)])
def test_head_rejects_a_bottleneck_it_cannot_handle(channels: int, resolution: int) -> None:
    with pytest.raises(ValueError, match="GAN head") as info:
        GANHead(channels, resolution)
    assert "\n" not in str(info.value)


def test_head_rejects_features_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"\[B, 32, 4, 4\]"):
        GANHead(32, 4)(torch.zeros(2, 16, 4, 4))


@pytest.mark.parametrize("constructor,expected", [
    (TINY_CONSTRUCTOR, (16, 4, 4)),
    (json.loads((ROOT / "teachers" / "digits" / "card.json").read_text())["constructor"], (32, 4, 4)),
])
def test_bottleneck_shape_of_small_teachers(constructor: dict, expected: tuple[int, int, int]) -> None:
    net = build_edm_network(constructor)
    img = (constructor["img_channels"], constructor["img_resolution"], constructor["img_resolution"])
    assert bottleneck_shape(net, img) == expected


@pytest.mark.parametrize("dataset,expected", [("imagenet64", (768, 8, 8)), ("cifar10", (256, 8, 8))])
def test_bottleneck_shape_of_published_teachers(dataset: str, expected: tuple[int, int, int]) -> None:
    c = _dataset_constructor(dataset)
    with torch.device("meta"):  # shapes only: the full networks are never allocated
        net = build_edm_network(c)
    assert bottleneck_shape(net, (c["img_channels"], c["img_resolution"], c["img_resolution"])) == expected


def test_head_on_a_real_fake_score_trains_its_encoder() -> None:
    torch.manual_seed(0)
    net = build_edm_network(TINY_CONSTRUCTOR)
    head = GANHead(*bottleneck_shape(net, (1, 8, 8))[:2])
    x_real, x_fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    sigma = torch.tensor([0.002, 0.5, 2.0, 80.0])
    _, f_real = net(x_real, sigma, None, return_bottleneck=True)
    _, f_fake = net(x_fake, sigma, None, return_bottleneck=True)
    loss = gan_discriminator_loss(head(f_real), head(f_fake))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    encoder_grads = [p.grad for p in net.model.enc.parameters() if p.grad is not None]
    assert encoder_grads and any(float(g.abs().sum()) > 0 for g in encoder_grads)
    # the decoder is not on the path from the bottleneck to the logit
    assert all(p.grad is None for p in net.model.dec.parameters())
