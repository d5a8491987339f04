"""Run by tests/methods/test_scd_jvp.py under torch.distributed.run (2 processes, gloo, CPU): the sCD
loss with its JVP on DDP-wrapped networks, against one process on the whole batch.

Each rank takes half of a batch of 4; the student and the log-variance head are wrapped by
sidbench's `wrap_ddp` (DDP without buffer syncing in forward). Patterns for the JVP: "module" (the
bare network, as `StepContext.net` hands out frozen passes), "wrapper" (the DDP wrapper: the JVP runs
without a graph, so DDP prepares no reduction for it). Each runs two updates' backward passes (a
missed or doubled reduction raises at the next forward) and compares every gradient with the one
process's. "torch_default": a wrapper with DDP's defaults, whose forward copies buffers in place,
which functorch's jvp refuses. Rank 0 writes what it found to the JSON file named on the command line.
"""
from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist

from sidbench.distributed import wrap_ddp
from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.scd.loss import (
    LogVarianceHead, denoiser_F, normalize_tangent, scd_loss, tangent, tangent_jvp, teacher_velocity, trigflow_noise,
    trigflow_time,
)
from sidbench.teachers.networks import build_edm_network
from sidbench.testing.tiny import TINY_CONSTRUCTOR

BATCH = 4


def build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_edm_network(TINY_CONSTRUCTOR)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def loss_of(student, jvp_net, head, teacher, x0: torch.Tensor, sigma: torch.Tensor,  # noqa: ANN001
            z: torch.Tensor) -> torch.Tensor:
    """The sCD loss with `student` for the forward and `jvp_net` inside the JVP."""
    t = trigflow_time(sigma)
    x_t = trigflow_noise(x0, z, t)
    dxdt = teacher_velocity(teacher, x_t, t)
    state = rng.capture(x0.device)
    F = denoiser_F(student, x_t, t)
    F_dot = tangent_jvp(lambda x, s: denoiser_F(jvp_net, x, s), x_t, t, dxdt, state=state)
    g = normalize_tangent(tangent(F.detach(), F_dot, x_t, t, dxdt, ratio=0.5))
    return scd_loss(F, g, head(sigma), sigma)


def gradients(*nets: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": p.grad.detach().clone() for i, net in enumerate(nets) for k, p in net.named_parameters()}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    teacher = build(0).eval().requires_grad_(False)
    student = build(1).train()
    head = LogVarianceHead.for_network(student)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(BATCH, 1, 8, 8, generator=g) * 2 - 1
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    z = torch.randn(BATCH, 1, 8, 8, generator=g) * 0.5
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)

    one_student, one_head = copy.deepcopy(student), copy.deepcopy(head)
    loss_of(one_student, one_student, one_head, teacher, x0, sigma, z).mean().backward()
    expected = gradients(one_student, one_head)

    report: dict[str, object] = {"world": world}
    for pattern in ("module", "wrapper"):
        nets = {"student": copy.deepcopy(student), "head": copy.deepcopy(head)}
        wrapped = wrap_ddp(nets, torch.device("cpu"))
        jvp_net = nets["student"] if pattern == "module" else wrapped["student"]
        diffs = []
        for _ in range(2):  # a reduction left pending would raise at the second forward
            for net in nets.values():
                net.zero_grad(set_to_none=True)
            loss = loss_of(wrapped["student"], jvp_net, wrapped["head"], teacher, x0[part], sigma[part], z[part])
            loss.mean().backward()  # DDP averages the ranks' means: the mean over the whole batch
            got = gradients(nets["student"], nets["head"])
            diffs.append(max(float((got[k] - expected[k]).abs().max()) for k in expected))
        report[pattern] = {"max_abs_diff": max(diffs),
                           "max_abs_grad": max(float(v.abs().max()) for v in expected.values())}

    default = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(student))
    try:
        loss_of(default, default, copy.deepcopy(head), teacher, x0[part], sigma[part], z[part])
        report["torch_default"] = "ran"
    except RuntimeError as e:
        report["torch_default"] = str(e).splitlines()[0]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
