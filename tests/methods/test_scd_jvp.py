"""What sCD's forward-mode JVP costs and how it runs under DDP (methods/baselines/scd/loss.py
`tangent_jvp`).

Cost: `torch.utils.flop_counter.FlopCounterMode` sees the operations a `torch.func.jvp` executes,
primal and tangent. On sidbench's EDM networks it counts 3 forwards' FLOPs (PyTorch 2.14): the
primal forward, the tangent through each layer, and a product of each layer's input with a zero
tangent of its weight, which the forward-AD rules of mm/addmm/convolution materialise (the weights
are no JVP inputs). The necessary work is 2 forwards, which the pass rule charges (docs/compute.md):
the compute counter's forward hook sees the call made inside the JVP transform.

DDP: the student's forward must go through its DDP wrapper (the gradient reduction); the JVP runs
without a graph and may use the bare module or the wrapper, provided the wrapper does not sync
buffers in forward (sidbench's `wrap_ddp`); DDP's default copies buffers in place in forward, which
functorch's transforms refuse. Two processes match one process's gradients (the worker:
tests/methods/scd_ddp_worker.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import forward_ad
from torch.utils.flop_counter import FlopCounterMode

from sidbench.methods.baselines.scd.loss import denoiser_F, tangent_jvp, trigflow_time
from sidbench.teachers.networks import build_edm_network
from sidbench.testing.tiny import TINY_CONSTRUCTOR

WORKER = Path(__file__).parent / "scd_ddp_worker.py"
#: the gradients of 2 processes (DDP's average of two half-batch means) against 1 process's whole-batch
#: mean: float32 sums in another order, relative to the largest gradient
RTOL_OF_SCALE = 1e-5


def tiny(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_edm_network({**TINY_CONSTRUCTOR, **overrides}).eval()


def inputs(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x_t = torch.randn(n, 1, 8, 8)
    t = trigflow_time(torch.logspace(-1, 1, n, dtype=torch.float64))
    return x_t, t, torch.randn_like(x_t)


@pytest.mark.parametrize("attn", [[4], []])
def test_flop_counter_counts_a_jvp(attn: list[int]) -> None:
    net = tiny(attn_resolutions=attn)
    x_t, t, dxdt = inputs()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        denoiser_F(net, x_t, t)
    with FlopCounterMode(display=False) as jvp:
        tangent_jvp(lambda x, s: denoiser_F(net, x, s), x_t, t, dxdt)
    ratio = jvp.get_total_flops() / forward.get_total_flops()
    # at least primal + tangent (2); PyTorch 2.14 also runs the zero-weight-tangent products (3)
    assert 2.0 <= ratio <= 3.0 + 1e-6, ratio


def test_a_forward_hook_sees_a_jvp_call() -> None:
    net = tiny()
    seen: list[bool] = []
    net.register_forward_hook(lambda module, args, out: seen.append(forward_ad.unpack_dual(out).tangent is not None))
    x_t, t, dxdt = inputs()
    with torch.no_grad():
        denoiser_F(net, x_t, t)
    tangent_jvp(lambda x, s: denoiser_F(net, x, s), x_t, t, dxdt)
    assert seen == [False, True]


def test_the_counter_charges_a_jvp_two_passes_and_its_flops() -> None:
    from sidbench.trainer.compute import JVP, ComputeCounter

    net = tiny()
    x_t, t, dxdt = inputs()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        denoiser_F(net, x_t, t)
    counter = ComputeCounter()
    counter.attach({"generator": net})
    with counter.iteration():
        with torch.no_grad():
            denoiser_F(net, x_t, t)
        tangent_jvp(lambda x, s: denoiser_F(net, x, s), x_t, t, dxdt)
    assert counter.calls == [("generator", 4, True, False), ("generator", 4, True, JVP)]
    cost = counter.take()
    assert cost.passes == 4 + 2 * 4
    assert cost.flops == pytest.approx(4 * forward.get_total_flops(), rel=1e-6)  # 1 forward + the JVP's 3


@pytest.mark.slow
def test_jvp_under_ddp_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--log-dir={tmp_path / 'logs'}",
           str(WORKER), str(out)]  # torchrun's log folder here, not left in the temp folder
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    report = json.loads(out.read_text())
    assert report["world"] == 2
    for pattern in ("module", "wrapper"):
        found = report[pattern]
        assert found["max_abs_diff"] <= RTOL_OF_SCALE * found["max_abs_grad"], (pattern, found)
    assert "mutate a captured Tensor" in report["torch_default"], report["torch_default"]
