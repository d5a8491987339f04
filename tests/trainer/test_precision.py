"""SiD iterations in the trainer at each `trainer.precision` on the CPU: the losses are finite, the
weights and optimiser states stay float32, and bf16/fp16 really run the networks in that dtype."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.teachers.networks.layers import Conv2d
from sidbench.tracking import NullTracker
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer

CPU = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RecordingTracker(NullTracker):
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append(dict(metrics))


def conv_output_dtypes(nets: dict[str, torch.nn.Module]) -> dict[str, set[torch.dtype]]:
    """Per network, the dtypes its convolutions produced (forward hooks; they see autocast's choice)."""
    seen: dict[str, set[torch.dtype]] = {k: set() for k in nets}
    for name, net in nets.items():
        for m in net.modules():
            if isinstance(m, Conv2d):
                m.register_forward_hook(lambda mod, args, out, name=name: seen[name].add(out.dtype))
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_sid_iterations_at_precision(precision: str, tiny_teacher: Path, tmp_path: Path) -> None:
    # CPU autocast takes float16 as well as bfloat16 in torch >= 2.3 (convolutions and matmuls run
    # in half precision through oneDNN), so fp16 is tested here rather than skipped.
    torch.manual_seed(0)
    cfg = compose(["dataset=digits", f"dataset.teacher.path={tiny_teacher}", "method.dropout=0.1", "method.augment_p=0.5"])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    sid = METHODS.get("sid")(teacher, cfg.method, CPU, cfg)
    nets = {**sid.networks(), "teacher": teacher.net}
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in sid.networks().items()}
    seen = conv_output_dtypes(nets)
    tracker = RecordingTracker()
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.024, "batch": 8, "batch_gpu": 4, "precision": precision,
                                                "tick_kimg": 0.008, "eval_every_kimg": 0, "checkpoint_every_kimg": 0})
    trainer = Trainer(trainer_cfg, sid, tmp_path, CPU, tracker=tracker)
    progress = trainer.train()
    assert progress.iteration == 3

    losses = [m for m in tracker.metrics if "loss/generator" in m]
    assert len(losses) == 3
    for m in losses:
        assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss/generator", "loss/fake_score")), m

    # The weights, their gradients, Adam's moments and the EMA copy stay float32: autocast casts
    # per operation and its casts' backward hands float32 gradients to the float32 weights.
    for name, net in sid.networks().items():
        assert all(p.dtype == torch.float32 for p in net.parameters()), name
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters()), name
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), f"{name} did not train"
    for opt in sid.optimizers().values():
        for state in opt.state.values():
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.ema.module.parameters())
    assert all(torch.isfinite(p).all() for net in sid.networks().values() for p in net.parameters())

    # Every network (the frozen teacher too) ran its convolutions in the chosen dtype, and only in it.
    assert seen == {k: {DTYPES[precision]} for k in nets}


def test_static_loss_scale_needs_no_unscaling() -> None:
    """SiD scales the generator loss by a constant (100) and never unscales: Adam's step is the same
    for gradients scaled by s when its eps is scaled by s too (SiD's fp16 runs: s = 100, eps 1e-6,
    i.e. eps 1e-8 on the unscaled gradient). Hence no GradScaler: see sidbench.trainer.context."""
    results = []
    for scale, eps in ((1.0, 1e-8), (100.0, 1e-6)):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=eps)
        ctx = StepContext({"g": net}, {"g": opt}, CPU, batch=4)
        for it in range(5):
            ctx.iteration = it
            ctx.update("g", lambda n: (((net(torch.randn(n, 1, 8, 8)) - 0.5) ** 2).sum() * 1e-3, {}), loss_scale=scale)
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_fp32_runs_compute_without_tf32_as_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sidbench run` sets the CUDA math switches from the config before anything is built:
    TF32 off by default (PyTorch would allow it in cuDNN convolutions), cuDNN autotuning on."""
    import sidbench.run as run_module

    seen: list[tuple[bool, bool, bool]] = []
    monkeypatch.setattr(run_module, "_run", lambda cfg, device, rank, world, overrides: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)))
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
             torch.get_num_threads())
    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
        run_module.run(compose(["device=cpu"]))
        run_module.run(compose(["device=cpu", "trainer.tf32=true", "trainer.cudnn_benchmark=false"]))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved[:3]
        torch.set_num_threads(saved[3])  # the digits preset sets one thread
    assert seen == [(False, False, True), (True, True, False)]


@pytest.mark.parametrize("native", [True, False])
def test_half_precision_on_a_cpu_without_its_kernels_warns_once_and_runs(native: bool, tiny_teacher: Path, run_env: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Where oneDNN has no bf16/fp16 kernels (an AVX2-only CPU) autocast still gives the right
    numbers, 10-80x slower: `sidbench run` says so in one line once the run can start, and trains;
    fp32, a CPU with the kernels and a CUDA device say nothing. (A run refused before it starts
    keeps its one line of error: tests/test_cli.py, the offline teacher download in fp16.)"""
    import sidbench.trainer.context as context
    from sidbench.cli import main
    from sidbench.testing.tiny import tiny_overrides

    asked: list[str] = []
    monkeypatch.setattr(context, "cpu_has_native", lambda precision: asked.append(precision) or native)
    for precision in ("bf16", "fp32"):
        overrides = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.016, "tracking.enabled": "false"})
        assert main(["run", *overrides, f"trainer.precision={precision}", f"run_name={precision}"]) == 0
        assert (run_env / "runs" / "digits" / precision / "generator.safetensors").is_file()  # a warning, never a refusal
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: trainer.precision")]
    assert asked == ["bf16"]  # fp32 has nothing to ask
    if native:
        assert warnings == []
    else:
        assert warnings == ["warning: trainer.precision=bf16 has no native kernels on this CPU (they need AVX-512 or "
                            "Arm's BF16 extension), so its convolutions run 10-80x slower than in fp32; set "
                            "trainer.precision=fp32 for a CPU run"]
    assert context.emulated_precision_warning("fp16", torch.device("cuda")) is None
