"""RAdam's update through Adam's fused kernel, on the CPU.

PyTorch has a fused (one pass over the parameters) kernel for Adam and AdamW but not for RAdam, the
optimiser of consistency distillation, ECT and sCD; its for-each RAdam makes several passes and, on
a CIFAR-10 network on the CPU, takes about 5x as long as fused Adam (docs/speed.md). Once RAdam's
variance is rectified (its SMA length rho_t > 5, from the 6th step at beta2 = 0.999), its update
(Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond", Algorithm 2, with
PyTorch's placement of eps) is

    p -= lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)

and Adam's fused step, p -= lr' / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps'), is the
same with lr' = lr * r_t and eps' = eps / sqrt(1 - beta2^t). The moments (m, v), the step count, the
coupled weight decay (added to the gradient) and `maximize` are the same in both. So a rectified
step is Adam's fused kernel with that LR and eps; the unrectified first steps (SGD with momentum)
keep RAdam's own for-each update. The state is RAdam's (`step`, `exp_avg`, `exp_avg_sq`): state
dicts are unchanged, and either kernel can continue the other's run. The round-off differs from
the for-each kernel in the last bits (tested against `torch.optim.RAdam`).

CPU only: on CUDA the fused kernel reads its step counts from the device, and the rectification
would then need them on the host every step; PyTorch's for-each RAdam is a handful of kernel
launches there.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.adam import adam
from torch.optim.radam import radam

__all__ = ["fuses", "step_radam_fused"]


def fuses(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt` is a RAdam whose update Adam's fused kernel can make: on the CPU, coupled (or
    no) weight decay, not differentiable or capturable, a float LR."""
    if type(opt) is not torch.optim.RAdam:
        return False
    return all(not g["differentiable"] and not g["capturable"] and not isinstance(g["lr"], torch.Tensor)
               and (not g["decoupled_weight_decay"] or g["weight_decay"] == 0)
               and all(p.device.type == "cpu" for p in g["params"]) for g in opt.param_groups)


def rectification(step: float, beta2: float) -> float:
    """RAdam's variance rectification r_t for the step about to be taken (0 while rho_t <= 5, when
    RAdam steps without the adaptive term). The same float expressions as PyTorch's RAdam, so both
    decide alike on the same step."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / (1 - beta2 ** step)
    if rho_t <= 5:
        return 0.0
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


@torch.no_grad()
def step_radam_fused(opt: torch.optim.RAdam, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
    """One RAdam step of `opt` (for which `fuses` holds), rectified groups through Adam's fused
    kernel."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    for group in opt.param_groups:
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        exp_avgs: list[torch.Tensor] = []
        exp_avg_sqs: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []
        # RAdam's own gathering and lazy state initialisation (a protected method of the class whose
        # step this is), so the state is exactly the one its for-each step would have made
        has_complex = opt._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)
        if not params:
            continue
        beta1, beta2 = group["betas"]
        # parameters step together unless some had no gradient on some step: one call per count
        by_count: dict[float, list[int]] = {}
        for i, s in enumerate(steps):
            by_count.setdefault(float(s) + 1, []).append(i)  # on the CPU: no synchronisation
        for step, index in by_count.items():
            lists = [[x[i] for i in index] for x in (params, grads, exp_avgs, exp_avg_sqs, steps)]
            rect = 0.0 if has_complex else rectification(step, beta2)
            if rect > 0:
                adam(*lists[:4], [], lists[4], fused=True, amsgrad=False, beta1=beta1, beta2=beta2,
                     lr=group["lr"] * rect, weight_decay=group["weight_decay"],
                     eps=group["eps"] / math.sqrt(1 - beta2 ** step), maximize=group["maximize"])
            else:  # the first, unrectified steps (and complex parameters): RAdam's own update
                radam(*lists, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                      eps=group["eps"], maximize=group["maximize"], foreach=True, capturable=False,
                      differentiable=False, decoupled_weight_decay=group["decoupled_weight_decay"],
                      has_complex=has_complex)
    return loss
