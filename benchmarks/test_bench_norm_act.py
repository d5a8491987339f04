"""GroupNorm followed by SiLU, the pair every EDM UNet block opens with: eager (two ATen kernels
forward, two backward, an intermediate tensor between them) against the same function compiled
by TorchInductor (one fused kernel each way), at the shapes of the digits default's network and
CIFAR-10's, float32, forward and backward, on the CPU (one thread) and on CUDA where there is
one. It bounds what a fused GroupNorm+SiLU could gain before anything is built for it
(`trainer.compile=true` compiles whole UNets, these pairs included); docs/speed.md has the numbers.

    python -m pytest benchmarks/test_bench_norm_act.py -p no:xdist -o addopts="" --benchmark-enable -s

Each row prints the compiled form's time over eager's (fastest round of each, interleaved) and
its first calls' compile time. Nothing about time is asserted; the two forms' input gradients
are checked to agree.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.teachers import build_edm_network

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# (constructor, batch): the digits default's network at a DDP process's share of batch 128, and
# CIFAR-10's DDPM++ at the benchmarks' micro-batch 2.
NETWORKS = {
    "digits-b64": (lambda: compose([]).dataset.teacher.constructor, 64),
    "cifar10-b2": (lambda: json.loads((ROOT / "tests" / "fixtures" / "edm-state-dicts.json").read_text())
                   ["cifar10-32x32-uncond-vp"]["constructor"], 2),
}
ROUNDS = 7


def group_norm_inputs(constructor: Any, batch: int) -> list[tuple[int, ...]]:
    """The distinct input shapes of the network's GroupNorms in one forward at `batch`."""
    if not isinstance(constructor, dict):
        constructor = OmegaConf.to_container(constructor)
    net = build_edm_network(constructor)
    shapes: set[tuple[int, ...]] = set()
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.add(tuple(args[0].shape)))
             for m in net.modules() if type(m).__name__ == "GroupNorm"]
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution)
    labels = torch.zeros(batch, net.label_dim) if net.label_dim else None
    with torch.no_grad():
        net(x, torch.full((batch,), 2.5), labels)
    for h in hooks:
        h.remove()
    return sorted(shapes)


def norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.silu(F.group_norm(x, min(32, x.shape[1] // 4), weight, bias, 1e-5))


pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("config", list(NETWORKS))
def test_group_norm_silu(benchmark: Any, config: str, device: str) -> None:
    constructor, batch = NETWORKS[config]
    shapes = group_norm_inputs(constructor(), batch)
    torch.manual_seed(0)
    dev = torch.device(device)
    fused = torch.compile(norm_act, dynamic=False)
    cases = []
    compile_s = 0.0
    for b, c, h, w_ in shapes:
        x = torch.randn(b, c, h, w_, device=dev, requires_grad=True)
        w, bias = torch.randn(c, device=dev, requires_grad=True), torch.randn(c, device=dev, requires_grad=True)
        grad = torch.randn(b, c, h, w_, device=dev)
        t0 = time.perf_counter()
        (gx_fused,) = torch.autograd.grad(fused(x, w, bias), x, grad)  # the first call compiles
        compile_s += time.perf_counter() - t0
        (gx_eager,) = torch.autograd.grad(norm_act(x, w, bias), x, grad)
        torch.testing.assert_close(gx_fused, gx_eager, rtol=1e-4, atol=1e-4)
        cases.append((x, w, bias, grad))

    def run(fn: Any) -> None:
        for x, w, bias, grad in cases:
            torch.autograd.grad(fn(x, w, bias), (x, w, bias), grad)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    eager_s: list[float] = []
    fused_s: list[float] = []
    for _ in range(ROUNDS):  # interleaved, so both see the same load
        t0 = time.perf_counter()
        run(norm_act)
        eager_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run(fused)
        fused_s.append(time.perf_counter() - t0)
    ratio = min(fused_s) / min(eager_s)
    benchmark.extra_info.update(shapes=len(shapes), eager_ms=min(eager_s) * 1e3, fused_ms=min(fused_s) * 1e3,
                                fused_over_eager=ratio, compile_seconds=compile_s)
    print(f"\n{config} on {device}, {len(shapes)} shapes: eager {min(eager_s) * 1e3:.2f} ms, fused {min(fused_s) * 1e3:.2f} ms "
          f"(x{ratio:.2f}), compiling {compile_s:.1f} s")
    benchmark.pedantic(run, args=(fused,), rounds=3, iterations=1)
