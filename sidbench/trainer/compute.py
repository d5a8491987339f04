"""Counted compute: what a run's network calls cost, measured rather than declared.

Two counters, both charged only while the trainer runs an iteration or a method's precomputation:
- **passes**, in images: a forward of one image through a network is 1; its backward is 2 when
  the network's weights are trained (gradients to the weights and through the activations) and 1
  when only the input needs a gradient (a frozen teacher or fake score that passes the generator's
  gradient through: no weight-gradient convolutions). Forward hooks on every network see each call;
  a hook on the call's outputs sees whether a backward reached it. A forward-mode JVP of one image
  (`torch.func.jvp`, as sCD's tangent) is 2: the primal forward and the tangent's, which runs the
  same layers once more (docs/compute.md); the hook sees it called inside the JVP transform.
- **FLOPs**, as `torch.utils.flop_counter.FlopCounterMode` counts them from the operations executed
  (matrix multiplies and convolutions, forward and backward, 2 per multiply-add; elementwise
  operations are not counted, as is usual). Running every iteration under the counter would slow
  it down several percent, so an iteration is measured once per *kind*: the sequence of its
  network calls (which network, how many images, trained or frozen, differentiated or not). A kind
  is only known once the iteration has run, so the counter predicts it from the kind that followed
  the previous one last time (methods' iterations are periodic, like a TTUR generator step every
  5th, or constant within a stage) and measures when the prediction is new. An iteration of a kind
  nobody predicted is owed and settled when that kind is next measured; `finish` charges what is
  still owed at the end at the measured FLOPs per pass.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

#: the name under which the frozen teacher's passes are also reported on their own
TEACHER = "teacher"

#: the "differentiated" slot of a JVP call (forward mode: no backward, the tangent's pass instead)
JVP = "jvp"

# (network, images, weights trained, differentiated: True once a backward reached the call, or JVP)
Call = tuple[str, int, bool, "bool | str"]


@dataclass
class Cost:
    """Compute charged by this process (a DDP run adds the processes' costs together)."""

    passes: float = 0.0
    teacher_passes: float = 0.0
    flops: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.passes + other.passes, self.teacher_passes + other.teacher_passes, self.flops + other.flops)


def _batch_size(args: tuple) -> int:
    for a in args:
        if isinstance(a, torch.Tensor) and a.ndim > 0:
            return int(a.shape[0])
    return 1


def _grad_tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.requires_grad else []
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _grad_tensors(o)]
    return []


def in_jvp() -> bool:
    """Whether the current call runs inside a forward-mode JVP: `torch.func.jvp`'s transform, or
    `torch.autograd.forward_ad`'s dual level."""
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is not None and interpreter.key() == torch._C._functorch.TransformType.Jvp:
        return True
    return torch.autograd.forward_ad._current_level >= 0


@dataclass
class _Record:
    network: str
    images: int
    trained: bool
    backward: bool | str = False


@dataclass
class ComputeCounter:
    """Counts the passes and FLOPs of the networks it is attached to."""

    count_flops: bool = True
    cost: Cost = field(default_factory=Cost)
    _handles: dict[int, tuple[str, torch.utils.hooks.RemovableHandle]] = field(default_factory=dict)
    _active: bool = False
    _calls: list[_Record] = field(default_factory=list)
    _flops_of_kind: dict[tuple[Call, ...], float] = field(default_factory=dict)
    _owed: dict[tuple[Call, ...], int] = field(default_factory=dict)
    _last_kind: tuple[Call, ...] | None = None
    _next_kind: dict[tuple[Call, ...] | None, tuple[Call, ...]] = field(default_factory=dict)

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self, networks: dict[str, torch.nn.Module]) -> None:
        """Count calls of exactly these networks from now on (re-attaching is cheap and idempotent:
        a method may swap a network, e.g. when a student becomes the next stage's teacher)."""
        wanted = {id(m): (name, m) for name, m in networks.items()}
        for key in list(self._handles):
            name, handle = self._handles[key]
            if key not in wanted or wanted[key][0] != name:
                handle.remove()
                del self._handles[key]
        for key, (name, module) in wanted.items():
            if key not in self._handles:
                self._handles[key] = (name, module.register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        for _, handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):  # noqa: ANN202 - a forward hook
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            if not self._active:
                return
            param = next(module.parameters(), None)
            record = _Record(name, _batch_size(args), bool(param is not None and param.requires_grad))
            self._calls.append(record)
            if in_jvp():  # the primal and the tangent: 2 passes, no backward (the JVP keeps no graph)
                record.backward = JVP
                self._charge_passes(name, 2 * record.images)
                return
            self._charge_passes(name, record.images)
            outputs = _grad_tensors(output) if torch.is_grad_enabled() else []
            if outputs:
                def on_backward(grad: torch.Tensor) -> None:
                    if not record.backward:  # several outputs of one call: one backward
                        record.backward = True
                        self._charge_passes(name, record.images * (2 if record.trained else 1))

                for t in outputs:
                    t.register_hook(on_backward)

        return hook

    def _charge_passes(self, name: str, images: float) -> None:
        self.cost.passes += images
        if name == TEACHER:
            self.cost.teacher_passes += images

    # -- what is charged -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _counting(self, measure: bool) -> Iterator[list[float]]:
        """Hooks on for the block; with `measure`, its FLOPs land in the yielded list."""
        flops: list[float] = []
        mode = FlopCounterMode(display=False) if measure else contextlib.nullcontext()
        outer, self._active = self._active, True  # nested blocks leave the hooks as they found them
        try:
            with mode:
                yield flops
        finally:
            self._active = outer
        if measure:
            flops.append(float(mode.get_total_flops()))

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        """Charge one training iteration (all its updates) to the counters."""
        self._calls = []
        predicted = self._next_kind.get(self._last_kind)
        measure = self.count_flops and (predicted is None or predicted not in self._flops_of_kind or predicted in self._owed)
        with self._counting(measure) as measured:
            yield
        kind = tuple((r.network, r.images, r.trained, r.backward) for r in self._calls)
        self._next_kind[self._last_kind] = kind
        self._last_kind = kind
        if not self.count_flops:
            return
        if measure:
            self._flops_of_kind[kind] = measured[0]
            self.cost.flops += measured[0] * (1 + self._owed.pop(kind, 0))
        elif kind in self._flops_of_kind:
            self.cost.flops += self._flops_of_kind[kind]
        else:
            self._owed[kind] = self._owed.get(kind, 0) + 1

    @staticmethod
    def _passes_of(kind: tuple[Call, ...]) -> float:
        return sum(images * (2 if backward == JVP else 1 + (2 if trained else 1) * backward)
                   for _, images, trained, backward in kind)

    def finish(self) -> None:
        """Charge iterations still owed (a kind that never recurred) at the FLOPs per pass measured
        on the other kinds: an estimate, only for kinds seen once or twice in a whole run."""
        if not self._owed:
            return
        per_pass = sum(self._flops_of_kind.values()) / max(sum(map(self._passes_of, self._flops_of_kind)), 1)
        for kind, count in self._owed.items():
            self.cost.flops += count * per_pass * self._passes_of(kind)
        self._owed.clear()

    @contextlib.contextmanager
    def precompute(self) -> Iterator[None]:
        """Charge work done before training (teacher samples, regression pairs): always measured."""
        with self._counting(self.count_flops) as measured:
            yield
        self.cost.flops += sum(measured)

    def charge(self, cost: Cost) -> None:
        """Charge a cost measured elsewhere (e.g. recorded beside a cache of teacher samples)."""
        self.cost = self.cost + cost

    @property
    def calls(self) -> list[Call]:
        """The network calls of the last iteration (for tests and the dry run's cost table)."""
        return [(r.network, r.images, r.trained, r.backward) for r in self._calls]

    def state_dict(self) -> dict:
        """What decides when to measure: checkpointed, so that a resumed run measures exactly the
        iterations an uninterrupted one measures (the counter's dispatch mode can change float
        round-off, e.g. which attention kernel runs, so where it runs must not depend on resumes)."""
        return {"flops_of_kind": dict(self._flops_of_kind), "owed": dict(self._owed),
                "last_kind": self._last_kind, "next_kind": dict(self._next_kind)}

    def load_state_dict(self, state: dict) -> None:
        self._flops_of_kind = dict(state["flops_of_kind"])
        self._owed = dict(state["owed"])
        self._last_kind = state["last_kind"]
        self._next_kind = dict(state["next_kind"])

    def take(self) -> Cost:
        """The cost charged since the last `take` (the trainer adds it up across processes)."""
        cost, self.cost = self.cost, Cost()
        return cost
