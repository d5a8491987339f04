"""The official SiD iteration against sidbench's, and against the iteration's network passes alone,
side by side in one process (same network, weights, batch, threads and machine).

    python benchmarks/side_by_side.py --reference /path/to/SiD-checkout                 # CIFAR-10, batch 2, 1 thread
    python benchmarks/side_by_side.py --reference ... --set trainer.precision=bf16 --json out.json

Three contenders, run in turns (A, B, C, A, B, C, ...: a change of the machine's load touches
all of them alike), one warm-up round first:
- **official**: the authors' networks (`training/networks.py`) and loss (`training/sid_loss.py`)
  from the checkout given (put on sys.path, never copied), driven the way their training loop
  (`training/sid_training_loop.py`) drives one iteration: the fake-score update (G forward with its
  parameters frozen, the loss summed and scaled, backward, `.item()` of the loss, `nan_to_num` of
  each gradient, Adam), the generator update (the same with the teacher and the fake score), and
  its EMA update. One process, so no DDP wrapper and no data loader (the loop reads a batch of
  real images only for their shape and labels; here an unconditional network and a fixed tensor).
- **sidbench**: `Trainer.step()` of `method=sid` with the dataset's preset, built as `sidbench run`
  builds it (benchmarks/real_size.py `make_trainer`): StepContext, compute counter, EMA.
- **passes**: the network calls sidbench's iteration makes, replayed alone (benchmarks/passes.py).
All three start from the same weights (sidbench's random teacher; the official generator and fake
score copy it, as sidbench's do) with dropout 0 and no augmentation on both sides (so that both
compute the same thing; `--set` can change sidbench's side only). Times are CPU time of the
process (`time.process_time`, what other jobs on shared cores barely move; on CUDA, wall time
after a synchronise), fastest round of each; wall times and means are reported beside them.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import passes as passes_mod  # noqa: E402
import real_size  # noqa: E402


def import_reference(path: Path) -> tuple[type, type]:
    """(EDMPrecond, SID_EDMLoss) of the checkout."""
    sys.path.insert(0, str(path))
    from training.networks import EDMPrecond  # type: ignore[import-not-found]
    from training.sid_loss import SID_EDMLoss  # type: ignore[import-not-found]

    return EDMPrecond, SID_EDMLoss


class Official:
    """The official iteration's state: three networks, two Adams, the EMA, the loss object."""

    def __init__(self, reference: Path, constructor: dict[str, Any], weights: dict[str, torch.Tensor], method: Any,
                 batch: int, device: torch.device) -> None:
        edm_precond, sid_loss = import_reference(reference)
        kw = {k: v for k, v in constructor.items() if k != "precond"}
        self.teacher = edm_precond(**kw).to(device)
        self.teacher.load_state_dict(weights)
        self.teacher.eval().requires_grad_(False)
        self.fake_score = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.G = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.fake_score.eval().requires_grad_(False)  # as the loop leaves them between iterations
        self.G.eval().requires_grad_(False)
        self.loss = sid_loss()
        self.opt_fake = torch.optim.Adam(self.fake_score.parameters(), lr=method.lr_fake_score, betas=list(method.betas_fake_score), eps=method.eps)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=method.lr_generator, betas=list(method.betas_generator), eps=method.eps)
        self.sigma_init, self.alpha, self.tmax = float(method.sigma_init), float(method.alpha), float(method.t_max)
        self.scale_fake, self.scale_g = float(method.loss_scale_fake_score), float(method.loss_scale_generator)
        self.batch = batch
        self.images = torch.zeros(batch, self.teacher.img_channels, self.teacher.img_resolution, self.teacher.img_resolution, device=device)
        self.nimg = 0

    def _generate(self) -> torch.Tensor:
        z = self.sigma_init * torch.randn_like(self.images)
        n = z.shape[0]
        return self.G(z, self.sigma_init * torch.ones(n, 1, 1, 1, device=z.device), None,
                      augment_labels=torch.zeros(n, 9, device=z.device))

    def step(self) -> tuple[float, float]:
        self.fake_score.train().requires_grad_(True)
        self.opt_fake.zero_grad(set_to_none=True)
        images = self._generate()
        loss = self.loss(fake_score=self.fake_score, images=images, labels=None, augment_pipe=None)
        loss = loss.sum().mul(self.scale_fake / self.batch)
        loss.backward()
        loss_fake = loss.item()
        self.fake_score.eval().requires_grad_(False)
        for p in self.fake_score.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.opt_fake.step()

        self.G.train().requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        images = self._generate()
        loss = self.loss.generator_loss(true_score=self.teacher, fake_score=self.fake_score, images=images, labels=None,
                                        augment_pipe=None, alpha=self.alpha, tmax=self.tmax)
        loss = loss.sum().mul(self.scale_g / self.batch)
        loss.backward()
        loss_g = loss.item()
        self.G.eval().requires_grad_(False)
        for p in self.G.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.opt_g.step()

        halflife = min(500 * 1000, self.nimg * 0.05)
        beta = 0.5 ** (self.batch / max(halflife, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        self.nimg += self.batch
        return loss_fake, loss_g


def sidbench_trainer(dataset: str, batch: int, device: torch.device, extra: list[str]) -> tuple[Any, Any]:
    """(sidbench's SiD trainer, its config) at `batch`, dropout 0 and no augmentation."""
    from sidbench.config import compose
    from sidbench.schema import validate_run_config

    cfg = compose(["method=sid", f"dataset={dataset}", f"device={device}", f"trainer.batch={batch}", f"trainer.batch_gpu={batch}",
                   "method.dropout=0", "method.augment_p=0", "trainer.precision=fp32", *extra])
    validate_run_config(cfg)
    teacher = real_size.random_teacher(cfg, device)
    trainer, _ = real_size.make_trainer(cfg, teacher, device)
    return trainer, cfg


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def __call__(self, fn: Callable[[], Any]) -> Any:
        real_size.synchronize(self.device)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        real_size.synchronize(self.device)
        self.cpu.append(time.process_time() - c0)
        self.wall.append(time.perf_counter() - w0)
        return out

    def summary(self, warmup: int) -> dict[str, Any]:
        cpu, wall = self.cpu[warmup:], self.wall[warmup:]
        return {"cpu_min": min(cpu), "cpu_mean": mean(cpu), "wall_min": min(wall), "wall_mean": mean(wall),
                "cpu_all": [round(t, 3) for t in self.cpu], "wall_all": [round(t, 3) for t in self.wall]}


def measure(reference: Path, dataset: str = "cifar10", batch: int = 2, rounds: int = 3, warmup: int = 1,
            device: torch.device | None = None, extra: list[str] | None = None, contenders: tuple[str, ...] = ("official", "sidbench", "passes"),
            ) -> dict[str, Any]:
    """Time the contenders in turns; returns their summaries and the ratios."""
    device = device or torch.device("cpu")
    trainer, cfg = sidbench_trainer(dataset, batch, device, list(extra or []))
    method = trainer.method
    sidbench_step = real_size.stepper(trainer, batch)
    official = None
    if "official" in contenders:
        constructor = {**method.teacher.constructor, "dropout": 0.0}
        official = Official(reference, constructor, method.teacher.net.state_dict(), cfg.method, batch, device)
    # the passes of one iteration, recorded from sidbench's (after a first one: Adam's state exists)
    sidbench_step()
    recorded = passes_mod.record_passes(passes_mod.method_networks(method), sidbench_step)
    timers = {name: Timer(device) for name in contenders}
    runs = {"official": official.step if official else None, "sidbench": sidbench_step,
            "passes": lambda: passes_mod.replay(recorded, trainer.ctx.autocast)}
    load_before = os.getloadavg()
    for _ in range(warmup + rounds):
        for name in contenders:
            timers[name](runs[name])
            gc.collect()
    load_after = os.getloadavg()
    out: dict[str, Any] = {name: t.summary(warmup) for name, t in timers.items()}
    if "official" in out and "sidbench" in out:
        out["official_over_sidbench"] = out["official"]["cpu_min"] / out["sidbench"]["cpu_min"]
        out["official_over_sidbench_wall"] = out["official"]["wall_min"] / out["sidbench"]["wall_min"]
    if "passes" in out and "sidbench" in out:
        out["sidbench_over_passes"] = out["sidbench"]["cpu_min"] / out["passes"]["cpu_min"]
        out["sidbench_over_passes_wall"] = out["sidbench"]["wall_min"] / out["passes"]["wall_min"]
    if "passes" in out and "official" in out:
        out["official_over_passes"] = out["official"]["cpu_min"] / out["passes"]["cpu_min"]
    out["passes_per_iteration"] = passes_mod.passes_per_image(recorded)
    out["setup"] = {"dataset": dataset, "batch": batch, "rounds": rounds, "warmup": warmup, "threads": torch.get_num_threads(),
                    "device": real_size.device_name(device), "torch": torch.__version__, "overrides": list(extra or []),
                    "reference": str(reference), "loadavg_before": load_before, "loadavg_after": load_after,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine()}
    trainer.counter.detach()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/mingyuanzhou/SiD")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on shared cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of sidbench's config, e.g. trainer.precision=bf16")
    parser.add_argument("--only", nargs="+", default=["official", "sidbench", "passes"], choices=["official", "sidbench", "passes"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = measure(args.reference, args.dataset, args.batch, args.rounds, args.warmup, torch.device(args.device), args.set, tuple(args.only))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
