"""Make the progressive-distillation conformance fixture from the authors' code.

Two references, both read from local checkouts (nothing is fetched):

- `--reference`: openai/consistency_models (PyTorch). Its `KarrasDenoiser.progdist_losses` is the
  loss; we call it directly (the repository's own PD training entry passes it keywords it does
  not take). The reduction is the training loop's (`cm/train_util.py`: the mean over the batch of
  the per-image losses, uniform weights), and the gradient-norm clip at 1.0 is applied as the
  authors' EDM-form JAX configuration does (`optax.clip_by_global_norm(1.0)` on the batch-mean
  gradient: g * 1/|g| when |g| >= 1, else g unchanged).
- `--jax-reference`: openai/consistency_models_cifar10 (JAX). Its `get_ema_scales_fn` ("progdist"
  branch of `jcm/losses.py`) maps a training step to the student's step count. That function is
  read from the checkout and run with numpy standing in for jax.numpy (it calls only `maximum`,
  `log2` and `where` on scalars; numpy's float64 gives the same integers as JAX's float32 here,
  all values being exact below 2^24): the other imports of that module (flax, optax, haiku) are
  never needed.

The networks are tiny random 8x8 one-channel EDM SongUNets (8 channels, 19.5k weights) (sidbench's, which load EDM's state
dicts with identical keys), a teacher and a student with different weights. The reference calls
`model(c_in x, 250 ln(sigma + 1e-44))`; the wrapper below divides that by 1000, so the raw UNet sees
EDM's c_noise = ln(sigma)/4 and the reference's denoiser is the same function as EDMPrecond.

Cases (each with its own recorded draws): "binds", where the clip scales the gradient down
(small sigmas, whose truncated-SNR weight 1/t^2 is large), and "free", where it does not.

Run from the repository root with the project's environment:
    .venv/bin/python tests/conformance/make_progressive.py --reference /path/to/consistency_models \\
        --jax-reference /path/to/consistency_models_cifar10
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder  # noqa: E402
from make_sid import reference_commit  # noqa: E402

CONSTRUCTOR = {
    "precond": "EDMPrecond", "img_resolution": 8, "img_channels": 1, "label_dim": 0, "model_type": "SongUNet",
    "model_channels": 8, "channel_mult": [1, 1], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}
BATCH = 4
CLIP = 1.0
#: (name, student steps N, spread of the student's weights around the teacher's, data scale)
CASES = (("binds", 8, 0.5, 1.0), ("free", 2, 0.05, 1.0))
#: (name, start_scales, distill_steps_per_iter, steps at which to read the step count)
SCHEDULES = (
    ("cifar10", 4096, 50000, None),  # the published configuration: every boundary and its neighbours
    ("small", 16, 3, list(range(0, 40))),  # every step of a short schedule
)


def stub_modules() -> None:
    """Modules the reference imports at the top but the loss never uses (LPIPS, MPI, blob storage)."""
    for name, attrs in (("piq", {"LPIPS": object}), ("mpi4py", {"MPI": types.SimpleNamespace()}), ("blobfile", {})):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module


class ReferenceNet(torch.nn.Module):
    """The reference's `model(x_in, rescaled_t)` over an EDM UNet: rescaled_t / 1000 = ln(sigma)/4."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x_in: torch.Tensor, rescaled_t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_in, rescaled_t / 1000, None, None)


def build(seed: int, base: dict[str, torch.Tensor] | None, spread: float) -> torch.nn.Module:
    """A random EDMPrecond: every weight drawn (not EDM's zero-initialised output layers, which would
    leave most gradients zero); the student is the teacher's weights plus `spread` x noise."""
    from sidbench.teachers.networks import build_edm_network

    g = torch.Generator().manual_seed(seed)
    net = build_edm_network(CONSTRUCTOR)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(base[name] + spread * noise if base is not None else 0.1 * noise)
    return net


def run_case(diffusion, teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor, num_scales: int) -> dict:
    ref_student, ref_teacher = ReferenceNet(student.model), ReferenceNet(teacher.model).eval()
    student.zero_grad(set_to_none=True)
    with Recorder() as rec:
        terms = diffusion.progdist_losses(ref_student, x, num_scales, teacher_model=ref_teacher,
                                          teacher_diffusion=diffusion)
    per_image = terms["loss"]
    loss = per_image.mean()  # cm/train_util.py: (losses["loss"] * weights).mean(), weights 1
    loss.backward()
    params = dict(student.named_parameters())
    norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params.values())).item()
    scale = CLIP / norm if norm >= CLIP else 1.0  # optax.clip_by_global_norm
    grads = {k: (p.grad * scale).detach().clone() for k, p in params.items()}
    return {"num_scales": num_scales, "draws": rec.nonempty(), "per_image_loss": per_image.detach().clone(),
            "loss": loss.item(), "grad_norm_before_clip": norm, "clip_scale": scale, "grads": grads}


def ema_scales_fn(jax_reference: Path):
    """`get_ema_scales_fn` from the JAX checkout's jcm/losses.py, with numpy as jax.numpy."""
    source = (jax_reference / "jcm" / "losses.py").read_text()
    tree = ast.parse(source)
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_ema_scales_fn"]
    namespace: dict = {"jnp": np}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(jax_reference / "jcm" / "losses.py"), "exec"), namespace)
    return namespace["get_ema_scales_fn"]


def schedule_pairs(get_fn, start: int, k: int, steps: list[int] | None) -> torch.Tensor:
    training = types.SimpleNamespace(loss="progressive_distillation", target_ema_mode="fixed", scale_mode="progdist",
                                     start_scales=start, distill_steps_per_iter=k)
    fn = get_fn(types.SimpleNamespace(training=training))
    if steps is None:  # every multiple of K to 3 past the halvings (the 2K-long tail's too), and its neighbours
        bounds = [i * k for i in range(int(np.log2(start)) + 4)]
        steps = sorted({max(s + d, 0) for s in bounds for d in (-1, 0, 1)})
    return torch.tensor([[s, int(fn(s)[1])] for s in steps], dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of openai/consistency_models")
    parser.add_argument("--jax-reference", type=Path, required=True, help="a checkout of openai/consistency_models_cifar10")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()

    stub_modules()
    sys.path.insert(0, str(args.reference.resolve()))
    from cm.karras_diffusion import KarrasDenoiser

    torch.set_num_threads(1)
    diffusion = KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, rho=7.0,
                               weight_schedule="truncated-snr", distillation=False, loss_norm="l2")
    teacher = build(0, None, 0.0).eval().requires_grad_(False)
    base = {k: v.detach().clone() for k, v in teacher.named_parameters()}
    cases, students = {}, {}
    for i, (name, num_scales, spread, data_scale) in enumerate(CASES):
        student = build(10 + i, base, spread).train()
        x = data_scale * (2 * torch.rand(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(20 + i)) - 1)
        torch.manual_seed(30 + i)
        case = run_case(diffusion, teacher, student, x, num_scales)
        case["x"] = x
        cases[name] = case
        students[name] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        print(f"{name}: indices={case['draws']['randint'][0].tolist()} per-image={case['per_image_loss'].tolist()} N={num_scales} loss={case['loss']:.6g} |grad|={case['grad_norm_before_clip']:.6g} "
              f"clip scale={case['clip_scale']:.6g}")
    if not (cases["binds"]["clip_scale"] < 1.0 and cases["free"]["clip_scale"] == 1.0):
        raise SystemExit("the cases no longer bind / stay free of the clip: change CASES")

    get_fn = ema_scales_fn(args.jax_reference.resolve())
    schedules = {name: {"start_steps": start, "stage_iterations": k, "pairs": schedule_pairs(get_fn, start, k, steps)}
                 for name, start, k, steps in SCHEDULES}

    args.out.mkdir(parents=True, exist_ok=True)
    fixture = {"constructor": CONSTRUCTOR, "teacher": {k: v.clone() for k, v in teacher.state_dict().items()},
               "students": students, "cases": cases, "clip": CLIP, "schedules": schedules,
               "grid": {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}}
    torch.save(fixture, args.out / "progressive.pt")
    meta = {
        "references": [
            {"repository": "openai/consistency_models", "commit": reference_commit(args.reference),
             "used": "cm/karras_diffusion.py KarrasDenoiser.progdist_losses (loss_norm l2, weight_schedule "
                     "truncated-snr, distillation False); reduction of cm/train_util.py (batch mean)"},
            {"repository": "openai/consistency_models_cifar10", "commit": reference_commit(args.jax_reference),
             "used": "jcm/losses.py get_ema_scales_fn, progdist branch (run with numpy as jax.numpy); the clip of "
                     "configs/cifar10_ve_progressive_distillation.py (optim.grad_clip 1.0, optax.clip_by_global_norm)"},
        ],
        "command": "python tests/conformance/make_progressive.py --reference <consistency_models> "
                   "--jax-reference <consistency_models_cifar10>",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "contents": {
            "constructor": "the EDMPrecond of teacher and students (8x8, 1 channel, SongUNet, 8 channels, no attention: a small file)",
            "teacher": "the teacher's state dict (EDMPrecond keys)",
            "students": "per case, the student's state dict before the update",
            "cases": "per case (binds: N=8, the clip scales the gradient; free: N=2, it does not): N, x, the "
                     "recorded draws (randn_like: the noise; randint: the step indices), the per-image losses, "
                     "their batch mean, the gradient norm before the clip, the clip's scale, and the clipped "
                     "gradients keyed by the student's parameter names",
            "schedules": "(step, student steps) pairs of get_ema_scales_fn for start_scales/distill_steps_per_iter "
                         "4096/50000 (each stage boundary and its neighbours) and 16/3 (every step to 39)",
        },
    }
    (args.out / "progressive.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out / 'progressive.pt'} ({(args.out / 'progressive.pt').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
