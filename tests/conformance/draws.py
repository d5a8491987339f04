"""Random draws recorded from one program and replayed into another: how a conformance fixture
feeds the authors' draws into sidbench's own code.

A fixture script runs the authors' loss under `Recorder`, which lets torch draw as usual and keeps
every tensor that torch's global random functions returned, per function, in call order. The
conformance test then runs sidbench's method under `Replay`, which makes the same functions return
those tensors in the same order instead of drawing. The two programs need not draw in the same
order across functions (one may take the noise before the sigma, the other after), only in the
same order within each function; a draw of another shape, dtype or count is an error naming it.

This file imports only torch (the fixture scripts import it from a reference checkout's
environment, where sidbench may not be installed).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: torch's global random functions that sidbench's methods and the reference codes call
FUNCTIONS = ("randn", "rand", "randint", "randn_like", "rand_like", "randint_like", "multinomial", "randperm")


class Recorder(contextlib.AbstractContextManager):
    """Keeps what torch's random functions return while active: `draws[name]` is a list of tensors."""

    def __init__(self, functions: tuple[str, ...] = FUNCTIONS) -> None:
        self.functions = functions
        self.draws: dict[str, list[torch.Tensor]] = {name: [] for name in functions}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Recorder:
        for name in self.functions:
            original = getattr(torch, name)

            def recording(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003
                out = _original(*args, **kwargs)
                self.draws[_name].append(out.detach().cpu().clone())
                return out

            self._stack.enter_context(_patched(name, recording))
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._stack.close()

    def nonempty(self) -> dict[str, list[torch.Tensor]]:
        return {k: v for k, v in self.draws.items() if v}


class Replay(contextlib.AbstractContextManager):
    """Makes torch's random functions return recorded tensors, in order, per function.

    A call with a `generator=` keyword draws as usual and is not replayed (sidbench's sampling of
    fixed evaluation noise uses its own generators; a method's training draws use the global one).
    `exhausted()` says whether every recorded draw was used; `assert_exhausted()` fails otherwise.
    """

    def __init__(self, draws: dict[str, list[torch.Tensor]]) -> None:
        self.queues = {k: list(v) for k, v in draws.items()}
        self.used = {k: 0 for k in draws}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Replay:
        for name in FUNCTIONS:
            original = getattr(torch, name)

            def replaying(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003
                if kwargs.get("generator") is not None:
                    return _original(*args, **kwargs)
                expected = _original(*args, **kwargs)  # the shape and dtype the caller asked for
                queue = self.queues.get(_name, [])
                if self.used.get(_name, 0) >= len(queue):
                    raise AssertionError(f"torch.{_name} called more often than recorded ({len(queue)} draws)")
                value = queue[self.used[_name]]
                self.used[_name] = self.used.get(_name, 0) + 1
                if value.shape != expected.shape:
                    raise AssertionError(f"torch.{_name} draw {self.used[_name]}: shape {tuple(expected.shape)} "
                                         f"asked, {tuple(value.shape)} recorded")
                return value.to(device=expected.device, dtype=expected.dtype)

            self._stack.enter_context(_patched(name, replaying))
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._stack.close()

    def unused(self) -> dict[str, int]:
        return {k: len(q) - self.used.get(k, 0) for k, q in self.queues.items() if len(q) > self.used.get(k, 0)}

    def assert_exhausted(self) -> None:
        left = self.unused()
        assert not left, f"recorded draws not used: {left}"


@contextlib.contextmanager
def _patched(name: str, fn) -> Iterator[None]:  # noqa: ANN001
    original = getattr(torch, name)
    setattr(torch, name, fn)
    try:
        yield
    finally:
        setattr(torch, name, original)


def step_gradients(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> dict[str, torch.Tensor]:
    """Registers a hook that records the gradients `optimizer` sees when it steps (after reduction,
    loss scaling, sanitising and clipping); returns the dict it fills, keyed by `names[param]`."""
    seen: dict[str, torch.Tensor] = {}

    def hook(opt: torch.optim.Optimizer, args, kwargs) -> None:  # noqa: ANN001
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    seen[names[p]] = p.grad.detach().clone()

    optimizer.register_step_pre_hook(hook)
    return seen
