"""Writes fixtures/scd.pt and .json: continuous-time consistency distillation (sCD, arXiv 2410.11081)
as NVIDIA FastGen computes it, for test_scd_conformance.py.

The loss is FastGen's `SCMModel._compute_scm_loss` (fastgen/methods/consistency_model/sCM.py) with
`loss_config.use_cd=True`, on FastGen's own EDM networks (`fastgen.networks.EDM.network.EDMPrecond`
around tiny 8x8 UNets; the student carries FastGen's `logvar_linear` head) wrapped in its
`TrigFlowPrecond`, with t drawn by the EDM noise schedule's `sample_t` as `single_train_step` does,
then reduced as that step and the trainer do: `scm_loss.mean()` (one accumulation round, no grad
scaler, float32), backward. The gradients are recorded before the trainer's clipping (1e6 on
CIFAR-10, 10 on ImageNet 64: the trainer's job, not the loss's).

FastGen builds SCMModel from its whole training stack; this script builds only what the loss uses:
an SCMModel object without its constructor, given the networks, the TrigFlow wrappers and the
settings of fastgen/configs/methods/config_scm.py (SampleTConfig, LossConfig) and the experiment
configs (EDM/config_scd_cifar10.py, EDM/config_scd_in64.py). Packages its modules import and the
loss does not use are stubbed: loguru, ftfy, imageio, einops, diffusers, and the package
`fastgen.methods` (its __init__ imports every method; here it provides only the two base classes
sCM.py needs, FastGenModel as a plain nn.Module).

Cases: "cifar10" (SongUNet, unconditional, P_std 1.4, iteration 2500 of a 10k warm-up: r = 0.25),
"imagenet64" (DhariwalUNet, 4 classes, P_std 1.6, iteration 20000: r = 1; float32, not the
published bf16 autocast), "paper_norms" (cifar10's networks with g_norm_spatial_invariance and
divide_x_0_spatial_dim off: the paper's ||g|| and (1/D)||.||^2), "high_noise" (cifar10's networks,
P_mean 2.5 and P_std 1.5: sigma near the schedule's top, t near pi/2, where the float64 TrigFlow
arithmetic matters; not a published setting).

Run from the repository root with the project's environment:
    .venv/bin/python tests/conformance/make_scd.py --reference /path/to/NVlabs/FastGen
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder  # noqa: E402
from make_consistency import pack  # noqa: E402
from make_sid import reference_commit  # noqa: E402

FIXTURE = HERE / "fixtures" / "scd.pt"
BATCH = 4
LABELS = 4
SIGMA_DATA = 0.5
NETWORKS = {
    "songunet": {"img_resolution": 8, "img_channels": 3, "label_dim": 0, "model_type": "SongUNet", "model_channels": 4,
                 "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0,
                 "embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
                 "decoder_type": "standard", "resample_filter": [1, 1]},
    "dhariwal": {"img_resolution": 8, "img_channels": 3, "label_dim": LABELS, "model_type": "DhariwalUNet",
                 "model_channels": 4, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
                 "dropout": 0.0},
}
#: fastgen/configs/methods/config_scm.py: SampleTConfig and LossConfig (use_cd from the sCD experiments)
SAMPLE_T = {"time_dist_type": "lognormal", "train_p_mean": -1.0, "train_p_std": 1.4, "min_t": 0.002, "max_t": 80.0,
            "sigma_data": SIGMA_DATA, "quantize": False}
LOSS = {"use_cd": True, "tangent_warmup_steps": 10000, "tangent_warmup_const": 0.1, "prior_weighting_enabled": True,
        "g_norm_spatial_invariance": True, "divide_x_0_spatial_dim": True, "use_jvp_finite_diff": False,
        "jvp_finite_diff_eps": 1e-3}
CASES = {
    "cifar10": {"nets": "songunet", "iteration": 2500, "sample_t": {}, "loss": {}},
    "imagenet64": {"nets": "dhariwal", "iteration": 20000, "sample_t": {"train_p_std": 1.6}, "loss": {}},
    "paper_norms": {"nets": "songunet", "iteration": 4000, "sample_t": {},
                    "loss": {"g_norm_spatial_invariance": False, "divide_x_0_spatial_dim": False}},
    "high_noise": {"nets": "songunet", "iteration": 12000, "sample_t": {"train_p_mean": 2.5, "train_p_std": 1.5},
                   "loss": {}},
}


class _Logger:
    """loguru's logger, doing nothing (FastGen logs through it)."""

    def __getattr__(self, name: str):  # noqa: ANN204
        return lambda *args, **kwargs: self


def import_reference(reference: Path) -> types.SimpleNamespace:
    loguru = types.ModuleType("loguru")
    loguru.logger = _Logger()
    einops = types.ModuleType("einops")
    einops.rearrange = None
    diffusers = types.ModuleType("diffusers")
    diffusers.DDIMScheduler = diffusers.CogVideoXDPMScheduler = object
    imageio, imageio_v3 = types.ModuleType("imageio"), types.ModuleType("imageio.v3")
    imageio.v3 = imageio_v3
    stubs = {"loguru": loguru, "einops": einops, "diffusers": diffusers, "imageio": imageio, "imageio.v3": imageio_v3,
             "ftfy": types.ModuleType("ftfy")}
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(reference))
    methods = types.ModuleType("fastgen.methods")
    methods.__path__ = [str(reference / "fastgen" / "methods")]
    methods.FastGenModel = nn.Module
    sys.modules["fastgen.methods"] = methods
    from fastgen.methods.consistency_model import CM

    methods.CMModel = CM.CMModel
    from fastgen.methods.consistency_model.sCM import SCMModel, TrigFlowPrecond
    from fastgen.networks.EDM.network import EDMPrecond

    return types.SimpleNamespace(SCMModel=SCMModel, TrigFlowPrecond=TrigFlowPrecond, EDMPrecond=EDMPrecond)


def build(ref: types.SimpleNamespace, seed: int, kind: str) -> nn.Module:
    torch.manual_seed(seed)
    net = ref.EDMPrecond(**NETWORKS[kind])
    with torch.no_grad():  # EDM zero-initialises some layers: random weights everywhere exercise every path
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def scm_model(ref: types.SimpleNamespace, student: nn.Module, teacher: nn.Module, sample_t: dict,
              loss: dict) -> nn.Module:
    """An SCMModel holding what `_compute_scm_loss` reads, without FastGen's training stack."""
    model = ref.SCMModel.__new__(ref.SCMModel)
    nn.Module.__init__(model)
    model.net = student.train().requires_grad_(True)
    model.teacher = teacher.eval().requires_grad_(False)
    model.net_trigflow = ref.TrigFlowPrecond(model.net, sigma_data=SIGMA_DATA)
    model.teacher_trigflow = ref.TrigFlowPrecond(model.teacher, sigma_data=SIGMA_DATA)
    model.sigma_data = SIGMA_DATA
    model.sample_t_cfg = types.SimpleNamespace(**sample_t)
    model.loss_config = types.SimpleNamespace(**loss)
    model.config = types.SimpleNamespace(guidance_scale=None, skip_layers=None, precision_amp_jvp=None)
    model.precision_amp_jvp = None
    model.device = torch.device("cpu")
    return model


def reference_loss(ref: types.SimpleNamespace, nets: dict[str, nn.Module], case: dict, x: torch.Tensor,
                   labels: torch.Tensor | None, seed: int) -> dict:
    import copy

    sample_t = {**SAMPLE_T, **case["sample_t"]}
    loss_cfg = {**LOSS, **case["loss"]}
    model = scm_model(ref, copy.deepcopy(nets["student"]), copy.deepcopy(nets["teacher"]), sample_t, loss_cfg)
    seen: dict[str, torch.Tensor] = {}
    original = model._scm_pred_to_loss

    def keep(**kwargs):  # noqa: ANN003
        for key in ("F_theta", "F_theta_jvp", "x_t_hat", "dxt_dt", "logvar", "sigma_t", "t_hat"):
            seen[key] = kwargs[key].detach().clone()
        out = original(**kwargs)
        seen["warmup_ratio"] = out[2]
        return out

    model._scm_pred_to_loss = keep
    torch.manual_seed(seed)
    with Recorder() as rec:
        t = model.net.noise_scheduler.sample_t(len(x), **sample_t, device=torch.device("cpu"))
        scm_loss, _, _, _, _ = model._compute_scm_loss(x, t, condition=labels, iteration=case["iteration"])
    scm_loss.mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.net.named_parameters() if p.grad is not None}
    return {"settings": {"sample_t": sample_t, "loss": loss_cfg, "iteration": case["iteration"], "nets": case["nets"]},
            "draws": rec.nonempty(), "outputs": seen, "loss_per_sample": scm_loss.detach().clone(),
            "grads": pack(grads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of NVlabs/FastGen")
    args = parser.parse_args()
    reference = args.reference.resolve()
    ref = import_reference(reference)
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(11)
    x = torch.rand(BATCH, 3, 8, 8, generator=g) * 2 - 1
    classes = torch.tensor([2, 0, 3, 1])
    onehot = torch.nn.functional.one_hot(classes, LABELS).float()
    nets = {kind: {"student": build(ref, 2 * i + 1, kind), "teacher": build(ref, 2 * i + 2, kind)}
            for i, kind in enumerate(NETWORKS)}
    results = {}
    for i, (name, case) in enumerate(CASES.items()):
        labels = onehot if NETWORKS[case["nets"]]["label_dim"] else None
        results[name] = reference_loss(ref, nets[case["nets"]], case, x, labels, seed=500 + i)
        out = results[name]
        print(f"{name}: loss {out['loss_per_sample'].mean():.6g}, r = {out['outputs']['warmup_ratio']}, "
              f"sigma {[round(v, 4) for v in out['outputs']['sigma_t'].tolist()]}")

    fixture = {"networks": NETWORKS, "label_dim": LABELS, "x": x, "classes": classes,
               "weights": {kind: {role: pack(net.state_dict()) for role, net in roles.items()}
                           for kind, roles in nets.items()},
               "cases": results}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    commit = reference_commit(reference)
    meta = {
        "reference": "https://github.com/NVlabs/FastGen",
        "commit": commit,
        "command": "python tests/conformance/make_scd.py --reference <checkout of NVlabs/FastGen>",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "contains": (
            "Per case, one SCMModel._compute_scm_loss (fastgen/methods/consistency_model/sCM.py, use_cd=True) on "
            "FastGen's EDMPrecond student and teacher (8x8; weights[nets][role], FastGen state_dict names: EDM's "
            "plus model.logvar_linear.*), the batch x of 4 (one-hot labels of 'classes' for the conditional "
            "DhariwalUNet): the draws of torch.rand (the truncated lognormal sigma) and torch.randn_like (z), the "
            "inputs of _scm_pred_to_loss (sigma_t, t_hat, x_t_hat, dxt_dt, F_theta, logvar, F_theta_jvp) and the "
            "warm-up ratio, the per-sample losses, and the gradients of scm_loss.mean() per student parameter "
            "(before the trainer's clipping). Cases: cifar10 (SongUNet, P_std 1.4, iteration 2500), imagenet64 "
            "(DhariwalUNet, P_std 1.6, iteration 20000, float32), paper_norms (cifar10's networks, "
            "g_norm_spatial_invariance and divide_x_0_spatial_dim off, iteration 4000), high_noise (cifar10's networks, "
            "P_mean 2.5, P_std 1.5, iteration 12000). Dicts of tensors are "
            "packed: one flat float32 tensor with names and shapes (make_consistency.unpack)."),
    }
    FIXTURE.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
