"""Speed options of the trainer, applied to whatever networks and optimisers a method built, none of
which changes what an iteration computes beyond float round-off (docs/speed.md has the measurements
and the tolerances the tests hold them to):

- `trainer.optimizer_kernel`: `as_built` leaves each optimiser as the method built it (PyTorch
  picks its for-each kernels on CUDA, one tensor at a time on the CPU); `foreach` asks for the
  for-each kernels everywhere (the same numbers, bit for bit, as one tensor at a time); `fused`
  asks for the fused kernel where the optimiser has one (Adam, AdamW: one pass over the
  parameters instead of several; round-off differs in the last bit; RAdam on the CPU: its update
  made by Adam's fused kernel, `fused_radam`) and for-each elsewhere (RAdam on CUDA);
  `compiled` is `fused` where a fused kernel exists and elsewhere `torch.compile` of the for-each
  step (RAdam's update on CUDA generated as a few fused loops; the compile is paid once per process
  and reported in `compile_seconds`; a learning rate that changes between steps is handed to the
  compiled step as a tensor, so a schedule does not recompile it).
- `trainer.compile`: `torch.compile` of each network's UNet (the `model` inside EDM's
  preconditioning; the wrapper, where the compute counter's hooks sit, stays eager). The first
  calls of each shape compile; that time is reported apart (`compile_seconds`).
  `trainer.compile_mode` is torch.compile's `mode`: `reduce-overhead` and `max-autotune` also record
  CUDA graphs (one replay per network call instead of a launch per kernel; CUDA only, shapes
  static); the trainer then marks each iteration as a new step for them (`marks_cuda_graph_steps`).
- `trainer.channels_last`: the networks' 4-D weights in channels-last memory format (the
  convolutions then pick NHWC kernels).
- `trainer.edm_fp16`: half precision the way EDM's and SiD's published fp16 runs do it: every
  EDM network runs its UNet on float16 activations throughout (`use_fp16`; GroupNorm included,
  weights cast per layer, the preconditioning and the losses in float32), instead of autocast's
  per-operation choice (which keeps GroupNorm's outputs in float32). CUDA only: on the CPU the
  networks stay float32 (EDM's own rule). Use it with `trainer.precision=fp32` (no autocast).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from sidbench.trainer import fused_radam

OPTIMIZER_KERNELS = ("as_built", "foreach", "fused", "compiled")
#: torch.compile's modes (`trainer.compile_mode`); those in CUDA_GRAPH_MODES record CUDA graphs on CUDA
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: keyword arguments of `torch.compile` (tests trace with backend="aot_eager": inductor's C++
#: build of even the digits networks takes over a minute on a 2-core CPU)
COMPILE_OPTIONS: dict = {}


def set_optimizer_kernel(optimizers: Iterable[torch.optim.Optimizer], kernel: str) -> None:
    """Switch the optimisers' step kernel (idempotent; call again after `load_state_dict`, which
    restores the flags saved with the state)."""
    if kernel not in OPTIMIZER_KERNELS:
        raise ValueError(f"unknown optimizer kernel {kernel!r}; use one of {', '.join(OPTIMIZER_KERNELS)}")
    if kernel == "as_built":
        return
    for opt in optimizers:
        fusable = _has_fused_kernel(opt)
        for group in opt.param_groups:
            if kernel in ("fused", "compiled") and fusable:
                group["fused"], group["foreach"] = True, False
                # the fused kernel reads its step count from the parameter's device
                for p in group["params"]:
                    step = opt.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor) and step.device != p.device:
                        opt.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
            elif "foreach" in group:
                group["foreach"] = True
                if "fused" in group:
                    group["fused"] = False
        if kernel in ("fused", "compiled") and fused_radam.fuses(opt):
            if not getattr(opt, "_sidbench_fused_radam", False):
                _replace_step(opt, lambda closure=None, opt=opt: fused_radam.step_radam_fused(opt, closure))
                opt._sidbench_fused_radam = True  # type: ignore[attr-defined]
        elif compiles_step(opt, kernel):
            compile_step(opt)


def _has_fused_kernel(opt: torch.optim.Optimizer) -> bool:
    """Whether PyTorch's optimiser class has a fused kernel (Adam, AdamW, SGD, Adagrad)."""
    return all("fused" in g and not g.get("differentiable", False) for g in opt.param_groups)


def compiles_step(opt: torch.optim.Optimizer, kernel: str) -> bool:
    """Whether `kernel` compiles this optimiser's step: `compiled`, and no fused kernel makes its
    update (RAdam on CUDA)."""
    return kernel == "compiled" and not _has_fused_kernel(opt) and not fused_radam.fuses(opt)


def _replace_step(opt: torch.optim.Optimizer, step: Callable) -> None:
    """Make `step` the optimiser's step, with what its own step keeps: the step hooks (through
    `Optimizer.profile_hook_step`, as PyTorch wraps every optimiser class's step) and an LR
    scheduler's record that the optimiser stepped, which would otherwise warn that `step` was
    overridden (and a scheduler made later does not wrap it again)."""
    hooked = torch.optim.Optimizer.profile_hook_step(lambda self, closure=None: step(closure))

    def replaced(closure=None):  # noqa: ANN001, ANN202 - torch.optim.Optimizer.step's signature
        opt._opt_called = True  # type: ignore[attr-defined]
        return hooked(opt, closure)

    replaced._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    opt.step = replaced  # type: ignore[method-assign]


def compile_step(opt: torch.optim.Optimizer) -> None:
    """Replace `opt.step` by `torch.compile` of it (once; idempotent). Each group's LR is passed to
    the compiled step as a tensor on its parameters' device, filled before each step and put back
    as a float after it (state dicts keep floats): a float LR is a constant to TorchDynamo, so every
    new value of a warm-up or anneal would compile the step again. Steps taken while the compute
    counter measures an iteration's FLOPs (the first of each kind) run eagerly: TorchDynamo does
    not trace under the counting dispatch mode."""
    if getattr(opt, "_sidbench_compiled_step", False):
        return
    compiled = torch.compile(opt.step, **COMPILE_OPTIONS)  # whatever `step` is now (a scheduler may wrap it)
    holders: dict[int, torch.Tensor] = {}

    def step(closure=None):  # noqa: ANN001, ANN202 - torch.optim.Optimizer.step's signature
        floats = [g["lr"] for g in opt.param_groups]
        for i, g in enumerate(opt.param_groups):
            if not isinstance(g["lr"], torch.Tensor):
                if i not in holders:
                    holders[i] = torch.zeros((), device=g["params"][0].device)
                g["lr"] = holders[i].fill_(float(g["lr"]))
        try:
            return compiled(closure) if closure is not None else compiled()
        finally:
            for g, lr in zip(opt.param_groups, floats):
                g["lr"] = lr

    if hasattr(opt.step, "_wrapped_by_lr_sched"):  # an LR scheduler's call tracking, kept (it runs inside)
        step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    opt.step = step  # type: ignore[method-assign]
    opt._sidbench_compiled_step = True  # type: ignore[attr-defined]


def require_compiler(device: torch.device) -> None:
    """Refuse, before training starts, a compile that cannot run: TorchInductor builds its CPU
    kernels with a C++ compiler, and without one the first compiled call fails mid-run."""
    if device.type != "cpu" or COMPILE_OPTIONS.get("backend", "inductor") != "inductor":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - inductor's InvalidCxxCompiler, or whatever its search raises
        from sidbench.config import ConfigError

        raise ConfigError(f"trainer.compile=true and trainer.optimizer_kernel=compiled need a C++ compiler on the CPU "
                          f"for TorchInductor, and none was found ({type(e).__name__}); install g++ or set CXX, "
                          f"or leave both off") from e


def _unet(net: torch.nn.Module) -> torch.nn.Module:
    """What to compile: EDM's UNet inside its preconditioning wrapper, else the network itself."""
    inner = getattr(net, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else net


def compile_networks(networks: Iterable[torch.nn.Module], mode: str = "default") -> int:
    """`torch.compile` each network's UNet in place, once, in torch.compile's `mode` (returns how
    many were newly compiled)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
    options = {**COMPILE_OPTIONS, **({"mode": mode} if mode != "default" else {})}
    done = 0
    for net in networks:
        target = _unet(net)
        if getattr(target, "_compiled_call_impl", None) is None:
            target.compile(**options)
            done += 1
    return done


def marks_cuda_graph_steps(compile_on: bool, mode: str, device: torch.device) -> bool:
    """Whether each iteration must begin with `torch.compiler.cudagraph_mark_step_begin()`: compiled
    networks recording CUDA graphs. A graph's outputs live in memory its next replay overwrites;
    marking the step tells torch that the previous iteration's outputs are no longer read."""
    return compile_on and mode in CUDA_GRAPH_MODES and device.type == "cuda"


def to_channels_last(networks: Iterable[torch.nn.Module]) -> None:
    for net in networks:
        net.to(memory_format=torch.channels_last)


def compile_seconds() -> float:
    """Seconds spent compiling so far in this process (TorchDynamo's frames, forward and backward
    graphs); 0 when nothing was compiled."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # pragma: no cover - a torch without dynamo
        return 0.0
    # the outermost timers only: one per compiled frame, and one per backward graph compiled lazily
    keys = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
    return float(sum(sum(compilation_time_metrics.get(k, [])) for k in keys))


def set_edm_fp16(networks: Iterable[torch.nn.Module], on: bool) -> None:
    """EDM's `use_fp16` on every network that has it (EDM's preconditioning wrappers)."""
    for net in networks:
        if hasattr(net, "use_fp16"):
            net.use_fp16 = on
