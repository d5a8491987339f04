"""The network passes of an iteration, timed alone: the physical limit an iteration is compared with.

`record_passes(networks, run)` runs `run()` (one iteration of the trainer) with a forward hook on
every network and keeps, per call, what the compute counter counts: the network, its train/eval
mode, whether its weights were trained, the inputs (detached copies, and which of them needed a
gradient), whether gradient mode was on, and whether a backward reached the output.
`replay(passes)` makes exactly those calls again and nothing else: each forward on the recorded
inputs (a call made inside `torch.func.jvp`, sCD's tangent, again as a JVP, with autocast as it was),
and for each call a backward reached, one backward of its output (a ones gradient) into the
trained weights and into the inputs that needed a gradient (a frozen network that passes the
generator's gradient through computes no weight gradients, as in the iteration). Gradient buffers
of the trained networks are cleared first (what `zero_grad(set_to_none=True)` does), so memory is
the iteration's too. Left out, i.e. counted as overhead by the ratio iteration / passes: noise and
label sampling, augmentation, the losses and their backward, loss scaling, gradient sanitising,
the optimiser steps, the EMA, seeding, the compute counter and logging.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sidbench.trainer.compute import in_jvp


@dataclass
class Pass:
    name: str
    module: torch.nn.Module
    training: bool
    trained: bool
    grad_enabled: bool
    args: tuple
    kwargs: dict[str, Any]
    jvp: bool = False        # made inside a forward-mode JVP (inputs recorded as their primals)
    autocast: bool = True    # autocast was on (where the replay's autocast applies)
    backward: list[bool] = field(default_factory=lambda: [False])


def _primal(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under functorch's wrappers (a JVP's dual inputs): its primal value."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (_primal(value).detach().clone(), value.requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def _fresh(value: Any) -> Any:
    """A recorded input, again a leaf that needs a gradient where the original needed one."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor) and isinstance(value[1], bool):
        t, grad = value
        return t.detach().requires_grad_(grad) if grad else t
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def method_networks(method: Any) -> dict[str, torch.nn.Module]:
    """Every network a method's iteration can call: its frozen ones (the teacher), its averages'
    modules (e.g. consistency distillation's target network) and the ones it trains."""
    return {**method.frozen_networks(), **{k: a.module for k, a in method.averages().items()}, **method.networks()}


def record_passes(networks: dict[str, torch.nn.Module], run: Callable[[], Any]) -> list[Pass]:
    """The network calls `run()` makes, in order (every network's own calls, not its submodules')."""
    passes: list[Pass] = []
    handles = []

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def on_call(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            param = next(module.parameters(), None)
            device = param.device.type if param is not None else "cpu"
            p = Pass(name, module, module.training, bool(param is not None and param.requires_grad), torch.is_grad_enabled(),
                     _copy(args), {k: _copy(v) for k, v in kwargs.items()}, jvp=in_jvp(),
                     autocast=torch.is_autocast_enabled(device))
            passes.append(p)
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(lambda g, flag=p.backward: flag.__setitem__(0, True))

        return on_call

    seen: set[int] = set()
    for name, net in networks.items():
        if id(net) not in seen:
            seen.add(id(net))
            handles.append(net.register_forward_hook(hook(name), with_kwargs=True))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return passes


@contextlib.contextmanager
def _mode(module: torch.nn.Module, training: bool, trained: bool) -> Iterator[None]:
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.train(training)
    module.requires_grad_(trained)
    try:
        yield
    finally:
        module.train(was_training)
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def replay(passes: list[Pass], autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
    """Make the recorded calls again: forwards, and the backwards that reached them."""
    cleared: set[int] = set()
    for p in passes:
        with _mode(p.module, p.training, p.trained):
            if p.trained and id(p.module) not in cleared:  # one zero_grad per trained network
                cleared.add(id(p.module))
                for param in p.module.parameters():
                    param.grad = None
            args = _fresh(p.args)
            kwargs = {k: _fresh(v) for k, v in p.kwargs.items()}
            with torch.set_grad_enabled(p.grad_enabled), autocast() if p.autocast else contextlib.nullcontext():
                if p.jvp:  # the same call as a JVP along random tangents of its floating-point inputs
                    out = _jvp(p.module, args, kwargs)
                else:
                    out = p.module(*args, **kwargs)
            if p.backward[0]:
                outs = [t for t in _tensors(out) if t.requires_grad]
                leaves = [t for t in _tensors(args) + _tensors(kwargs) if t.requires_grad]
                weights = list(p.module.parameters()) if p.trained else []
                torch.autograd.backward(outs, [torch.ones_like(t) for t in outs], inputs=weights + leaves)


def _jvp(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    at = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]

    def call(*primals: torch.Tensor) -> Any:
        full = list(args)
        for i, v in zip(at, primals):
            full[i] = v
        return module(*full, **kwargs)

    primals = tuple(args[i] for i in at)
    _, tangent_out = torch.func.jvp(call, primals, tuple(torch.randn_like(v) for v in primals))
    return tangent_out


def passes_per_image(passes: list[Pass]) -> float:
    """The compute counter's count for these calls (forward 1, a JVP 2; backward 2 when weights are
    trained, else 1)."""
    total = 0.0
    for p in passes:
        images = next((t.shape[0] for t in _tensors(_fresh(p.args)) if t.ndim > 0), 1)
        total += images * ((2 if p.jvp else 1) + (2 if p.trained else 1) * p.backward[0])
    return total
