"""`sidbench teacher train`: the small offline teacher, trained on scikit-learn's digits.

The same EDM network family and preconditioning as the published teachers (docs/edm.md), at a
size that trains on 2 CPU cores in minutes. The weights are written in our safetensors format
with the constructor, the command, the config and the teacher's measured distances, so a
distillation run can draw the teacher's reference line without sampling it again.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sidbench.distributed import pick_device
from sidbench.teachers.edm_loss import edm_loss
from sidbench.teachers.load import builtin_teacher_path, save_native_teacher
from sidbench.teachers.networks import build_edm_network
from sidbench.diffusion import heun_sample

console = Console(stderr=True)


def measure_teacher(net: torch.nn.Module, cfg: DictConfig, device: torch.device, num_samples: int, steps: int) -> dict[str, float]:
    """The teacher's own distances (Heun, 2N-1 NFE) in every offline digits metric."""
    from sidbench.eval import METRICS
    from sidbench.eval.images import generated_batches

    shape = (int(cfg.dataset.channels), int(cfg.dataset.resolution), int(cfg.dataset.resolution))

    def sample(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return heun_sample(net, z, labels, num_steps=steps)

    images = torch.cat(list(generated_batches(sample, num_samples, 500, shape, int(cfg.dataset.label_dim), device, seed=int(cfg.eval.seed))))
    return {name: METRICS.get(name)().compute([images]) for name in ("fd_pixel", "fd_digits")}


def train_teacher(cfg: DictConfig, out: str | Path | None = None, command: str = "") -> Path:
    """Train the teacher of `cfg.dataset` (a digits card) and write it; returns the file."""
    name = str(cfg.dataset.name)
    if not name.startswith("digits"):
        raise ValueError(f"`sidbench teacher train` trains the small offline teachers (digits, digits-cond), not {name}; "
                         "the real datasets use EDM's published teachers")
    from sidbench.data.digits import load_digits_tensors

    tcfg = cfg.dataset.teacher.train
    device = pick_device(cfg.device)
    torch.manual_seed(tcfg.seed)
    constructor: dict[str, Any] = OmegaConf.to_container(cfg.dataset.teacher.constructor, resolve=True)
    net = build_edm_network(constructor).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    images, classes = load_digits_tensors()
    images = images.to(device)
    label_dim = int(constructor.get("label_dim", 0))
    onehot = torch.nn.functional.one_hot(classes, 10).float().to(device) if label_dim else None
    opt = torch.optim.Adam(net.parameters(), lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8)
    iterations = int(tcfg.kimg * 1000 // tcfg.batch)
    start = time.perf_counter()
    for it in range(iterations):
        idx = torch.randint(len(images), (tcfg.batch,), device=device)
        x = images[idx]
        for g in opt.param_groups:  # linear warm-up, as EDM's training loop does
            g["lr"] = tcfg.lr * min(1.0, (it + 1) / tcfg.warmup_iterations)
        loss = edm_loss(net, x, onehot[idx] if onehot is not None else None).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        beta = 0.5 ** (tcfg.batch / (tcfg.ema_halflife_kimg * 1000))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - beta)
        if it % 100 == 0 or it == iterations - 1:
            console.print(f"teacher {name}: iteration {it + 1}/{iterations} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    train_seconds = time.perf_counter() - start
    steps = int(cfg.dataset.teacher.sampler_steps)
    t0 = time.perf_counter()
    metrics = measure_teacher(ema, cfg, device, int(tcfg.eval_samples), steps)
    info = {
        "metrics": metrics,
        "metric_samples": int(tcfg.eval_samples),
        "sampler": {"name": "heun", "steps": steps, "nfe": 2 * steps - 1},
        "command": command or f"sidbench teacher train dataset={name}",
        "train_config": OmegaConf.to_container(tcfg, resolve=True),
        "train_seconds": round(train_seconds, 1),
        "measure_seconds": round(time.perf_counter() - t0, 1),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "torch": torch.__version__,
    }
    path = Path(out) if out else builtin_teacher_path(name, must_exist=False)
    save_native_teacher(ema, constructor, path, info)
    path.with_name("card.json").write_text(json.dumps({"constructor": constructor, **info}, indent=2) + "\n")
    console.print(f"teacher {name}: {json.dumps(metrics)} in {train_seconds:.0f} s")
    return path
