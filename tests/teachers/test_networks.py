"""EDM networks: checkpoint layout, parity with the reference implementation, preconditioning,
bottleneck features, and that small variants train. Full-size networks are only built on the
meta device here (shapes without memory); their speed lives in benchmarks/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sidbench.teachers import build_edm_network
from sidbench.teachers.networks import DhariwalUNet, EDMPrecond, SongUNet, VPPrecond

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STATE_DICTS = json.loads((FIXTURES / "edm-state-dicts.json").read_text())
PARITY = torch.load(FIXTURES / "edm-parity.pt", weights_only=True)

# Small 16x16 configurations (two levels: bottleneck at 8x8).
TINY_SONG = dict(precond="EDMPrecond", model_type="SongUNet", img_resolution=16, img_channels=3,
                 model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                 augment_dim=9, dropout=0.0)
TINY_ADM = dict(precond="EDMPrecond", model_type="DhariwalUNet", img_resolution=16, img_channels=3,
                model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def _tiny(base: dict, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_edm_network({**base, **overrides})


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Replace the (partly zero) initial weights so every path contributes to the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


# ---------------------------------------------------------------------------------------------
# 1. Layout of the five published teachers (key for key, shape for shape, in order).

@pytest.mark.parametrize("name", sorted(STATE_DICTS))
def test_state_dict_layout_matches_checkpoint(name: str) -> None:
    ref = STATE_DICTS[name]
    with torch.device("meta"):
        net = build_edm_network(ref["constructor"])
    ours = [[key, list(t.shape)] for key, t in net.state_dict().items()]
    assert len(ours) == ref["num_tensors"]
    ours_map, ref_map = dict(map(tuple, ours)), {k: s for k, s in ref["state_dict"]}
    assert sorted(set(ours_map) - set(ref_map)) == [], "unexpected keys"
    assert sorted(set(ref_map) - set(ours_map)) == [], "missing keys"
    assert {k: s for k, s in ours_map.items() if ref_map[k] != s} == {}, "shape mismatches"
    assert ours == ref["state_dict"], "same keys and shapes, but in another order"
    assert sum(p.numel() for p in net.parameters()) == ref["num_params"]


# ---------------------------------------------------------------------------------------------
# 2. Numerical parity with the reference implementation.

@pytest.mark.parametrize("name", sorted(PARITY))
def test_parity_with_reference(name: str) -> None:
    case = PARITY[name]
    net = build_edm_network(case["constructor"]).eval()
    net.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        out = net(case["x"], case["sigma"], case["class_labels"], case["augment_labels"])
    ref = case["output"]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err < 1e-5 * max(1.0, ref.abs().max().item()), f"max abs difference {err:.3g}"


# ---------------------------------------------------------------------------------------------
# Bottleneck features (DMD2's GAN head, SiDA's discriminator).

def _last_encoder_output(net: torch.nn.Module, *args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(denoised, features) of one call with return_bottleneck, and the last encoder block's
    output captured by a hook during that same call."""
    captured = []
    last = list(net.model.enc.values())[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        denoised, feats = net(*args, return_bottleneck=True)
    finally:
        handle.remove()
    assert len(captured) == 1
    return denoised, feats, captured[0]


@pytest.mark.parametrize("name", sorted(PARITY))
def test_bottleneck_is_last_encoder_block_of_the_same_call(name: str) -> None:
    case = PARITY[name]
    net = build_edm_network(case["constructor"]).eval()
    net.load_state_dict(case["state_dict"], strict=True)
    args = (case["x"], case["sigma"], case["class_labels"], case["augment_labels"])
    with torch.no_grad():
        denoised, feats, hooked = _last_encoder_output(net, *args)
        plain = net(*args)
    channels = case["constructor"]["model_channels"] * case["constructor"]["channel_mult"][-1]
    assert feats.shape == (4, channels, 8, 8)
    assert feats is hooked
    torch.testing.assert_close(denoised, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    "config, channels",
    [
        (dict(TINY_SONG, img_resolution=64, channel_mult=[1, 2, 2, 2], attn_resolutions=[16]), 32),
        (dict(TINY_ADM, img_resolution=64, model_channels=16, channel_mult=[1, 2, 3, 4],
              attn_resolutions=[32, 16, 8], label_dim=10), 64),
    ],
    ids=["songunet-64", "dhariwal-64"],
)
def test_bottleneck_shape_64x64(config: dict, channels: int) -> None:
    net = _tiny(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        denoised, feats, hooked = _last_encoder_output(net, x, 1.0)
    assert denoised.shape == x.shape
    assert feats.shape == (2, channels, 8, 8) and feats is hooked


@pytest.mark.parametrize("name", sorted(PARITY))
def test_decode_first_stops_the_other_samples_after_the_encoder(name: str) -> None:
    """`decode_first=k`: the first k outputs and every bottleneck as the full call's, the decoder
    (every block after the bottleneck) run on k samples only."""
    case = PARITY[name]
    net = build_edm_network(case["constructor"]).eval()
    net.load_state_dict(case["state_dict"], strict=True)
    args = (case["x"], case["sigma"], case["class_labels"], case["augment_labels"])
    seen: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[0])) for m in net.model.dec.values()]
    with torch.no_grad():
        full, full_feats = net(*args, return_bottleneck=True)
        decoded_full = list(seen)
        seen.clear()
        part, part_feats = net(*args, return_bottleneck=True, decode_first=1)
    for h in hooks:
        h.remove()
    assert set(decoded_full) == {4} and set(seen) == {1} and len(seen) == len(decoded_full)
    assert part.shape == (1, *full.shape[1:]) and part_feats.shape == full_feats.shape
    torch.testing.assert_close(part_feats, full_feats, rtol=0, atol=0)
    torch.testing.assert_close(part, full[:1], rtol=1e-6, atol=1e-6)  # another batch size: round-off only
    with pytest.raises(ValueError, match="decode_first"):
        net(*args, decode_first=1)  # without return_bottleneck the other samples would give nothing


# ---------------------------------------------------------------------------------------------
# 3. Preconditioning formulas, conditioning inputs, variants that train.

class _Recorder(torch.nn.Module):
    """Stands in for the UNet: records its inputs and returns a fixed F."""

    def __init__(self, f: torch.Tensor) -> None:
        super().__init__()
        self.f, self.calls = f, []
        self.map_augment = None

    def forward(self, x, noise_labels, class_labels, augment_labels, return_bottleneck=False):
        self.calls.append((x, noise_labels, class_labels, augment_labels))
        return (self.f, x) if return_bottleneck else self.f


def _wrapper_check(net: torch.nn.Module, sigma: torch.Tensor, c_skip, c_out, c_in, c_noise) -> None:
    x, f = torch.randn(len(sigma), 3, 16, 16), torch.randn(len(sigma), 3, 16, 16)
    net.model = _Recorder(f)
    out = net(x, sigma)
    fx_in, noise, _, _ = net.model.calls[-1]
    col = lambda v: torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1, 1)  # noqa: E731
    # c_noise: absolute tolerance, since VP's float32 ln(1 + sigma^2) (as in EDM) rounds at small sigma.
    torch.testing.assert_close(noise, torch.tensor(c_noise, dtype=torch.float32), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fx_in, col(c_in) * x)
    torch.testing.assert_close(out, col(c_skip) * x + col(c_out) * f)


def test_vp_precond_matches_hand_computation() -> None:
    net = build_edm_network(dict(TINY_SONG, precond="VPPrecond"))
    assert isinstance(net, VPPrecond) and (net.beta_d, net.beta_min, net.M) == (19.9, 0.1, 1000)
    sigmas = [0.002, 0.3, 2.5, 80.0]

    def t_of(s: float) -> float:
        return (math.sqrt(0.1 ** 2 + 2 * 19.9 * math.log(1 + s ** 2)) - 0.1) / 19.9

    _wrapper_check(
        net, torch.tensor(sigmas),
        c_skip=[1.0] * 4, c_out=[-s for s in sigmas], c_in=[1 / math.sqrt(s ** 2 + 1) for s in sigmas],
        c_noise=[999 * t_of(s) for s in sigmas],
    )
    # t(sigma) inverts sigma(t), and the supported range is [sigma(epsilon_t), sigma(1)].
    t = torch.tensor([1e-5, 0.01, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(net.sigma_inv(net.sigma(t)), t)
    assert net.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    assert net.sigma_min == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5) - 1))


def test_edm_precond_matches_hand_computation() -> None:
    net = build_edm_network(TINY_SONG)
    assert isinstance(net, EDMPrecond) and net.sigma_data == 0.5
    sigmas = [0.002, 0.3, 2.5, 80.0]
    _wrapper_check(
        net, torch.tensor(sigmas),
        c_skip=[0.25 / (s ** 2 + 0.25) for s in sigmas],
        c_out=[s * 0.5 / math.sqrt(s ** 2 + 0.25) for s in sigmas],
        c_in=[1 / math.sqrt(s ** 2 + 0.25) for s in sigmas],
        c_noise=[math.log(s) / 4 for s in sigmas],
    )


@pytest.mark.parametrize("base", [TINY_SONG, TINY_ADM], ids=["songunet", "dhariwal"])
def test_unconditional_net_runs_without_labels(base: dict) -> None:
    net = _randomise(_tiny(base, label_dim=0)).eval()
    assert net.model.map_label is None
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16), 1.5)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("base", [TINY_SONG, TINY_ADM], ids=["songunet", "dhariwal"])
def test_missing_labels_mean_zeros_and_sigma_forms_agree(base: dict) -> None:
    net = _randomise(_tiny(base, label_dim=10, augment_dim=9)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = net(x, torch.full([3], 0.7), torch.zeros(3, 10), torch.zeros(3, 9))
        for sigma in (0.7, torch.tensor(0.7), torch.tensor([0.7]), torch.tensor(0.7, dtype=torch.float64)):
            torch.testing.assert_close(net(x, sigma), ref)
        labelled = net(x, 0.7, torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float())
        augmented = net(x, 0.7, augment_labels=torch.randn(3, 9))
    assert not torch.allclose(labelled, ref) and not torch.allclose(augmented, ref)


@pytest.mark.parametrize("width", [8, 16, 64])
@pytest.mark.parametrize(
    "base, extra",
    [
        (TINY_SONG, {}),
        (TINY_SONG, dict(embedding_type="fourier", encoder_type="residual", decoder_type="skip")),
        (TINY_SONG, dict(encoder_type="skip", channel_mult_noise=2, resample_filter=[1, 3, 3, 1])),
        (TINY_ADM, {}),
        (TINY_ADM, dict(augment_dim=9, channel_mult=[1, 2, 2])),
    ],
    ids=["ddpmpp", "ncsnpp", "skip-enc", "adm", "adm-3-levels"],
)
def test_tiny_variants_forward_backward(base: dict, extra: dict, width: int) -> None:
    net = _randomise(_tiny(base, img_resolution=8, attn_resolutions=[4], model_channels=width,
                           label_dim=10, **extra)).train()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 7]), 10).float()
    out = net(x, torch.tensor([0.05, 20.0]), labels)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_attention_heads_and_groups() -> None:
    # DhariwalUNet: 64 channels per head, and no attention layers below 64 channels.
    adm = _tiny(TINY_ADM, model_channels=64, channel_mult=[1, 2])
    assert adm.model.enc["8x8_block0"].num_heads == 2
    assert adm.model.enc["16x16_block0"].num_heads == 0
    assert not hasattr(_tiny(TINY_ADM, model_channels=16).model.enc["8x8_block0"], "qkv")  # 32 channels
    # SongUNet: always one head.
    song = _tiny(TINY_SONG, model_channels=64)
    assert song.model.enc["8x8_block0"].num_heads == 1
    # Groups: min(32, C // 4); eps 1e-6 in SongUNet, 1e-5 in DhariwalUNet.
    assert song.model.enc["16x16_block0"].norm0.num_groups == 16
    assert song.model.enc["8x8_block0"].norm1.num_groups == 32
    assert song.model.dec["16x16_aux_norm"].eps == 1e-6 and adm.model.out_norm.eps == 1e-5


def test_runs_under_autocast_and_returns_float32() -> None:
    net = _randomise(_tiny(TINY_SONG, label_dim=10)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref, ref_feats = net(x, 1.0, return_bottleneck=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, feats = net(x, 1.0, return_bottleneck=True)
    assert out.dtype == torch.float32 and feats.shape == ref_feats.shape
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    # use_fp16 only changes CUDA runs (as in EDM); on CPU the net stays float32.
    fp16 = _tiny(TINY_SONG, label_dim=10, use_fp16=True).eval()
    fp16.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fp16(x, 1.0), ref)


def test_exports_and_build_errors() -> None:
    net = _tiny(TINY_ADM)
    assert isinstance(net, EDMPrecond) and isinstance(net.model, DhariwalUNet)
    assert isinstance(_tiny(TINY_SONG, precond="VPPrecond").model, SongUNet)
    # Each precond's own default model_type applies when the key is absent.
    cfg = {k: v for k, v in TINY_SONG.items() if k != "model_type"}
    assert isinstance(build_edm_network(dict(cfg, precond="VPPrecond")).model, SongUNet)
    cases = [
        (dict(TINY_SONG, bogus_key=1), "bogus_key"),
        (dict(TINY_ADM, embedding_type="positional"), "embedding_type"),  # a SongUNet-only key
        (dict(TINY_SONG, precond="VEPrecond"), "VEPrecond"),
        (dict(TINY_SONG, model_type="DiT"), "DiT"),
        ({k: v for k, v in TINY_SONG.items() if k != "img_resolution"}, "img_resolution"),
    ]
    for config, word in cases:
        with pytest.raises(ValueError, match=word) as info:
            build_edm_network(config)
        assert "\n" not in str(info.value)
