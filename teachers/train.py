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

from sidbench.config import ConfigError
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


def teacher_measurements(net: torch.nn.Module, cfg: DictConfig, device: torch.device, steps: int) -> dict[str, Any]:
    """The card's measurements: `metrics` at the size of a run's evaluations (`metric_samples`) and,
    where a run's end is scored on more images, `final_metrics` at that size (`final_metric_samples`).
    A Frechet distance depends on the number of images, so a run's values are only ever divided by
    the teacher's at the same size (sidbench.run.reference_metrics)."""
    num, final = int(cfg.dataset.teacher.train.eval_samples), int(cfg.eval.final_samples)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"metrics": measure_teacher(net, cfg, device, num, steps), "metric_samples": num}
    if final != num:
        out |= {"final_metrics": measure_teacher(net, cfg, device, final, steps), "final_metric_samples": final}
    out["measure_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def train_teacher(cfg: DictConfig, out: str | Path | None = None, command: str = "") -> Path:
    """Train the teacher of `cfg.dataset` (a digits card) and write it; returns the file."""
    name = str(cfg.dataset.name)
    if not name.startswith("digits"):
        raise ConfigError(f"`sidbench teacher train` trains the small offline teachers (digits, digits-cond), not {name}; "
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
    measured = teacher_measurements(ema, cfg, device, steps)
    info = {
        **measured,
        "sampler": {"name": "heun", "steps": steps, "nfe": 2 * steps - 1},
        "command": command or f"sidbench teacher train dataset={name}",
        "train_config": OmegaConf.to_container(tcfg, resolve=True),
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "torch": torch.__version__,
    }
    path = Path(out) if out else builtin_teacher_path(name, must_exist=False)
    _write_teacher(ema, constructor, path, info)
    console.print(f"teacher {name}: {json.dumps(measured['metrics'])} in {train_seconds:.0f} s")
    return path


def _write_teacher(net: torch.nn.Module, constructor: dict[str, Any], path: Path, info: dict[str, Any]) -> None:
    save_native_teacher(net, constructor, path, info)
    path.with_name("card.json").write_text(json.dumps({"constructor": constructor, **info}, indent=2) + "\n")


def measure_shipped_teacher(cfg: DictConfig, path: str | Path | None = None, command: str = "") -> Path:
    """Measure a digits teacher file again (default: the package's, for `cfg.dataset`) at the sizes
    of `teacher_measurements` and store the values with it, in its metadata and the card.json beside
    it; its weights and the rest of its record stay as they are."""
    from sidbench.teachers.load import build_teacher_network, load_native_teacher

    name = str(cfg.dataset.name)
    if not name.startswith("digits"):
        raise ConfigError(f"`sidbench teacher measure` measures the small offline teachers (digits, digits-cond), not {name}; "
                          f"for the others use `sidbench fid teacher dataset={name}`, which keeps the value in MLflow")
    path = Path(path) if path else builtin_teacher_path(name)
    constructor, state, info = load_native_teacher(path)  # ours only: the file is written back in that form
    net = build_teacher_network(constructor, state, str(path))
    device = pick_device(cfg.device)
    net = net.to(device).eval().requires_grad_(False)
    steps = int(info.get("sampler", {}).get("steps") or cfg.dataset.teacher.sampler_steps)
    kept = {k: v for k, v in info.items() if k not in ("final_metrics", "final_metric_samples")}
    info = {**kept, **teacher_measurements(net, cfg, device, steps),
            "measure_command": command or f"sidbench teacher measure dataset={name}"}
    _write_teacher(net, constructor, path, info)
    console.print(f"teacher {name}: {json.dumps({k: info[k] for k in ('metrics', 'final_metrics') if k in info})}")
    return path
