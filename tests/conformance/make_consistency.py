"""Writes fixtures/consistency.pt and .json: one consistency-distillation update run by the authors'
PyTorch code, and their LPIPS, for test_consistency_conformance.py.

The update is `cm.train_util.CMTrainLoop.run_step` of openai/consistency_models (arXiv 2303.01469)
on tiny EDM networks: `KarrasDenoiser.consistency_losses` with loss_norm "l2" (or "lpips"),
weight_schedule "uniform", the boundary-condition scalings (distillation=True), the teacher's own
`KarrasDenoiser` (distillation=False) and its Heun step, the loop's mean over the batch, RAdam,
then the target's EMA with the fixed rate mu. Its networks are sidbench's EDM UNets behind a
wrapper that takes the reference's time input 250 ln(sigma) (EDM's c_noise = ln(sigma)/4 after
the division by 1000). The loop runs with use_fp16=True and networks that stay float32 (their
`convert_to_fp16` does nothing): its float32 path pairs the target's flattened parameter groups
with the online network's unflattened parameters and cannot update the target, while the fp16
path's loss scale 2^20 is a power of two, undone exactly before RAdam sees the gradients.

Cases: "cifar10" (unconditional, N = 18, mu = 0: the target starts equal to the online network),
"imagenet64" (conditional, N = 40, mu = 0.95, a target with weights of its own; also the
parameters after the step), "dropout" (as cifar10 with dropout 0.3: the masks of the online and
target calls, keyed by the random state each call started from), "lpips" (as imagenet64 with
piq's average-pooling LPIPS, shared random weights) and "lpips_pair" (piq's LPIPS with both
poolings on fixed images, and the gradients to the first image).

Run from the repository root with the project's environment plus the packages the reference
needs for these functions (piq 0.7.0, the version its setup.py pins, and scipy):
    .venv/bin/python tests/conformance/make_consistency.py --reference /path/to/consistency_models
blobfile and mpi4py are stubbed (the functions called do not use them), piq's weight downloads
are replaced by random weights, and torch.distributed runs a one-process gloo group.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_sid import reference_commit  # noqa: E402

FIXTURE = HERE / "fixtures" / "consistency.pt"

#: the tiny networks: 8x8 SongUNets with a downsampling and an attention layer
CONSTRUCTOR = {
    "precond": "EDMPrecond", "img_resolution": 8, "img_channels": 3, "label_dim": 0, "model_type": "SongUNet",
    "model_channels": 4, "channel_mult": [1, 1], "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0,
}
BATCH = 4
LABELS = 4
#: torchvision's VGG16 `features`: index of each 3x3 convolution and its (in, out) channels
VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SEED = 20230302


def lpips_random_weights(seed: int = LPIPS_SEED) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Random LPIPS weights, the same on every machine: the VGG16 `features` state dict (He-scaled
    convolutions, small biases) and the five non-negative linear weights [1, C, 1, 1]. The test
    regenerates them (59 MB is too much for a fixture) and checks them against `weights_digest`."""
    g = torch.Generator().manual_seed(seed)
    vgg: dict[str, torch.Tensor] = {}
    for index, c_in, c_out in VGG16_CONVS:
        vgg[f"{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (9 * c_in))
        vgg[f"{index}.bias"] = torch.randn(c_out, generator=g) * 0.1
    lins = [torch.rand(1, c, 1, 1, generator=g) * (4.0 / c) for c in LPIPS_CHANNELS]
    return vgg, lins


def weights_digest(vgg: dict[str, torch.Tensor], lins: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(vgg):
        h.update(key.encode())
        h.update(vgg[key].contiguous().numpy().tobytes())
    for w in lins:
        h.update(w.contiguous().numpy().tobytes())
    return h.hexdigest()


def pack(tensors: dict[str, torch.Tensor]) -> dict:
    """A dict of tensors as one flat float32 tensor with its names and shapes: the fixture stays
    small (torch.save spends about 0.4 kB on every tensor it stores)."""
    names = list(tensors)
    return {"names": names, "shapes": [list(tensors[k].shape) for k in names],
            "flat": torch.cat([tensors[k].detach().reshape(-1).float() for k in names])}


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    sizes = [math.prod(shape) for shape in packed["shapes"]]
    parts = torch.split(packed["flat"], sizes)
    return {k: v.reshape(shape) for k, v, shape in zip(packed["names"], parts, packed["shapes"])}


def rng_key() -> str:
    """Names the global random state: the dropout masks are keyed by it."""
    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()


class DropoutLog:
    """Replaces torch.nn.functional.dropout while active: the mask is drawn from torch's global
    stream as usual, and each call records (index of the random state it started from, in order of
    first appearance; the mask). Two calls that start from the same state get the same mask."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.calls: list[int] = []
        self.masks: list[torch.Tensor] = []

    def dropout(self, x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0:
            return x
        key = rng_key()
        mask = torch.empty_like(x).bernoulli_(1 - p).bool()
        if key not in self.keys:
            self.keys.append(key)
            self.masks.append(mask)
        self.calls.append(self.keys.index(key))
        return x * mask / (1 - p)

    @contextlib.contextmanager
    def active(self):
        original = torch.nn.functional.dropout
        torch.nn.functional.dropout = self.dropout
        try:
            yield self
        finally:
            torch.nn.functional.dropout = original


# -- the reference's environment -------------------------------------------------------------------
def stub_modules() -> None:
    """blobfile and mpi4py: imported by the reference's modules, unused by the functions called."""
    blobfile = types.ModuleType("blobfile")
    blobfile.exists = lambda path: False
    sys.modules.setdefault("blobfile", blobfile)
    comm = types.SimpleNamespace(rank=0, size=1, Get_rank=lambda: 0, bcast=lambda value, root=0: value)
    mpi4py = types.ModuleType("mpi4py")
    mpi4py.MPI = types.SimpleNamespace(COMM_WORLD=comm)
    sys.modules.setdefault("mpi4py", mpi4py)


@contextlib.contextmanager
def random_piq_weights(vgg: dict[str, torch.Tensor], lins: list[torch.Tensor]):
    """piq builds LPIPS from torchvision's pretrained VGG16 and a downloaded list of linear
    weights; both come from `lpips_random_weights` instead (no network here)."""
    import piq.perceptual
    import torchvision

    def vgg16(pretrained: bool = True, progress: bool = False) -> nn.Module:
        net = torchvision.models.vgg16(weights=None)
        net.features.load_state_dict(vgg)
        return net

    original = piq.perceptual.vgg16, torch.hub.load_state_dict_from_url
    piq.perceptual.vgg16 = vgg16
    torch.hub.load_state_dict_from_url = lambda *args, **kwargs: [w.clone() for w in lins]
    try:
        yield
    finally:
        piq.perceptual.vgg16, torch.hub.load_state_dict_from_url = original


class ReferenceNet(nn.Module):
    """An EDM raw UNet called as the reference calls its UNet: model(c_in x, 250 ln(sigma), **kwargs)."""

    def __init__(self, edm: nn.Module) -> None:
        super().__init__()
        self.raw = edm.model

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.raw(x, t / 1000, class_labels, None)

    def convert_to_fp16(self) -> None:
        """Stays float32 (see the module docstring)."""


def edm_name(name: str) -> str:
    """ReferenceNet's parameter names -> the EDM network's (the state_dict keys of sidbench's)."""
    assert name.startswith("raw.")
    return "model." + name[len("raw."):]


def build(seed: int, **overrides: object) -> nn.Module:
    from sidbench.teachers.networks import build_edm_network

    torch.manual_seed(seed)
    net = build_edm_network({**CONSTRUCTOR, **overrides})
    with torch.no_grad():  # EDM zero-initialises some layers: random weights everywhere exercise every path
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def reference_step(cm: types.SimpleNamespace, case: dict, nets: dict[str, nn.Module], x: torch.Tensor,
                   labels: torch.Tensor | None, loss_norm: str) -> dict:
    """One CMTrainLoop.run_step of the reference on (x, labels); what it drew, saw and produced."""
    import copy

    from draws import Recorder, step_gradients

    diffusion = cm.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, weight_schedule="uniform",
                                  distillation=True, loss_norm=loss_norm)
    teacher_diffusion = cm.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002,
                                          weight_schedule="uniform", distillation=False, loss_norm="l2")
    student = ReferenceNet(copy.deepcopy(nets["student"]))
    target = ReferenceNet(copy.deepcopy(nets["target"]))
    teacher = ReferenceNet(copy.deepcopy(nets["teacher"]))
    for net in (student, target):  # the teacher runs in eval mode: its dropout never acts
        for m in net.modules():
            if isinstance(getattr(m, "dropout", None), float):
                m.dropout = case["dropout"]  # a UNetBlock's dropout: no weights, so set after building
    ema_scale_fn = cm.create_ema_and_scales_fn(
        target_ema_mode="fixed", start_ema=case["mu"], scale_mode="fixed", start_scales=case["num_points"],
        end_scales=case["num_points"], total_steps=600000, distill_steps_per_iter=50000)
    loop = cm.CMTrainLoop(
        model=student, target_model=target, teacher_model=teacher, teacher_diffusion=teacher_diffusion,
        training_mode="consistency_distillation", ema_scale_fn=ema_scale_fn, total_training_steps=600000,
        diffusion=diffusion, data=None, batch_size=BATCH, microbatch=-1, lr=case["lr"],
        ema_rate="0.9999432189950708", log_interval=10, save_interval=10000, resume_checkpoint="",
        use_fp16=True, schedule_sampler=cm.UniformSampler(diffusion), weight_decay=0.0, lr_anneal_steps=0)
    groups = loop.mp_trainer.param_groups_and_shapes
    seen = step_gradients(loop.opt, {p: f"group{i}" for i, p in enumerate(loop.mp_trainer.master_params)})
    losses: list[torch.Tensor] = []
    original = diffusion.consistency_losses

    def keep_losses(*args, **kwargs):  # noqa: ANN002, ANN003
        out = original(*args, **kwargs)
        losses.append(out["loss"].detach().clone())
        return out

    diffusion.consistency_losses = keep_losses
    cond = {} if labels is None else {"class_labels": labels}
    dropout = DropoutLog()
    with Recorder() as rec, dropout.active():
        loop.run_step(x, cond)
    grads: dict[str, torch.Tensor] = {}
    for i, (group, _) in enumerate(groups):
        flat = seen[f"group{i}"].reshape(-1)
        for (name, _), g in zip(group, cm.unflatten_master_params(group, flat)):
            grads[edm_name(name)] = g.clone()
    out = {
        "draws": rec.nonempty(),
        "loss_per_sample": losses[0],
        "loss": float(losses[0].mean()),
        "grads": pack(grads),
    }
    if case.get("keep_step"):
        out["student_after"] = pack({edm_name(k): v for k, v in student.named_parameters()})
        out["target_after"] = pack({edm_name(k): v for k, v in target.named_parameters()})
    if case["dropout"] > 0:
        out["dropout_calls"] = torch.tensor(dropout.calls)
        out["dropout_masks"] = dropout.masks
    return out


def import_reference(reference: Path) -> types.SimpleNamespace:
    stub_modules()
    sys.path.insert(0, str(reference))
    from cm import logger
    from cm.fp16_util import unflatten_master_params
    from cm.karras_diffusion import KarrasDenoiser
    from cm.resample import UniformSampler
    from cm.script_util import create_ema_and_scales_fn
    from cm.train_util import CMTrainLoop

    logger.configure(dir=tempfile.mkdtemp(prefix="cm-logs-"), format_strs=[])
    return types.SimpleNamespace(KarrasDenoiser=KarrasDenoiser, UniformSampler=UniformSampler, CMTrainLoop=CMTrainLoop,
                                 create_ema_and_scales_fn=create_ema_and_scales_fn,
                                 unflatten_master_params=unflatten_master_params)


def lpips_pair(vgg: dict[str, torch.Tensor], lins: list[torch.Tensor]) -> dict:
    """piq's LPIPS, both poolings, on two pairs of 8x8 images resized to 224 as the reference's
    loss resizes them, with inputs in [-1, 1] mapped to [0, 1] as it maps them."""
    import piq
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2.4 - 1.2  # a little outside [-1, 1], like a network's output
    y = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    out = {"x": x, "y": y}
    for pooling, replace in (("avg", True), ("max", False)):
        with random_piq_weights(vgg, lins):
            metric = piq.LPIPS(replace_pooling=replace, reduction="none")
        xr = x.clone().requires_grad_(True)
        up = [F.interpolate(v, size=224, mode="bilinear") for v in (xr, y)]
        d = metric((up[0] + 1) / 2.0, (up[1] + 1) / 2.0)
        d.sum().backward()
        out[pooling] = {"distance": d.detach().clone(), "grad_x": xr.grad.clone()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of openai/consistency_models")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # draws.py
    cm = import_reference(args.reference.resolve())
    import piq
    import torch.distributed as dist

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        vgg, lins = lpips_random_weights()
        nets = {
            "uncond": {"teacher": build(1), "student": build(2)},
            "cond": {"teacher": build(3, label_dim=LABELS), "student": build(4, label_dim=LABELS),
                     "target": build(5, label_dim=LABELS)},
        }
        g = torch.Generator().manual_seed(11)
        x = torch.rand(BATCH, 3, 8, 8, generator=g) * 2 - 1
        classes = torch.tensor([2, 0, 3, 2])
        onehot = torch.nn.functional.one_hot(classes, LABELS).float()
        cases = {
            "cifar10": {"nets": "uncond", "num_points": 18, "mu": 0.0, "lr": 4e-4, "dropout": 0.0, "distance": "l2"},
            "imagenet64": {"nets": "cond", "num_points": 40, "mu": 0.95, "lr": 8e-6, "dropout": 0.0, "distance": "l2",
                           "keep_step": True},
            "dropout": {"nets": "uncond", "num_points": 18, "mu": 0.0, "lr": 4e-4, "dropout": 0.3, "distance": "l2"},
            "lpips": {"nets": "cond", "num_points": 40, "mu": 0.95, "lr": 8e-6, "dropout": 0.0, "distance": "lpips",
                      "lpips_pooling": "avg"},
        }
        results = {}
        for name, case in cases.items():
            group = nets[case["nets"]]
            case_nets = {**group, "target": group.get("target", group["student"])}
            labels = onehot if case["nets"] == "cond" else None
            torch.manual_seed(100)
            if case["distance"] == "lpips":
                with random_piq_weights(vgg, lins):
                    results[name] = reference_step(cm, case, case_nets, x, labels, "lpips")
            else:
                results[name] = reference_step(cm, case, case_nets, x, labels, "l2")
            results[name]["settings"] = {k: v for k, v in case.items() if k != "keep_step"}
            print(f"{name}: loss {results[name]['loss']:.6g}, {len(results[name]['grads']['names'])} gradients")
        pair = lpips_pair(vgg, lins)
        dist.destroy_process_group()

    state = lambda net: pack(net.state_dict())  # noqa: E731
    fixture = {
        "constructor": CONSTRUCTOR,
        "label_dim": LABELS,
        "x": x,
        "classes": classes,
        "weights": {group: {role: state(net) for role, net in roles.items()} for group, roles in nets.items()},
        "cases": results,
        "lpips": {"seed": LPIPS_SEED, "digest": weights_digest(vgg, lins), **pair},
    }
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    reference = args.reference.resolve()
    commit = reference_commit(reference)
    meta = {
        "reference": "https://github.com/openai/consistency_models",
        "commit": commit,
        "command": "python tests/conformance/make_consistency.py --reference <checkout of openai/consistency_models>",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "piq": piq.__version__ if hasattr(piq, "__version__") else "unknown",
        "contains": (
            "One CMTrainLoop.run_step (cm/train_util.py; use_fp16=True with float32 networks, see the script) per "
            "case on 8x8 EDM SongUNets (weights under 'weights'; x and classes the batch of 4): the draws of "
            "torch.randint (grid indices) and torch.randn_like (noise), "
            "the per-sample losses of KarrasDenoiser.consistency_losses, the gradients RAdam sees (per EDM "
            "state_dict name; after the loop's mean over the batch; no clipping), for 'imagenet64' the student and "
            "target after the step (RAdam, then the target EMA with mu), for 'dropout' the masks per random state. "
            "Cases: cifar10 (uncond, N 18, mu 0, l2), imagenet64 (cond, N 40, mu 0.95, l2), dropout (cifar10 with "
            "dropout 0.3), lpips (imagenet64 with piq.LPIPS(replace_pooling=True) on random weights). 'lpips': "
            "piq's LPIPS with average and max pooling on two pairs of 8x8 images resized to 224, distances and "
            "gradients to x; its random weights come from lpips_random_weights(seed) and are checked by digest. "
            "Dicts of tensors (weights, gradients, parameters) are stored packed: one flat float32 tensor with "
            "their names and shapes (unpack() in the script)."),
    }
    FIXTURE.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
