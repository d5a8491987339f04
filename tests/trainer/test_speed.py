"""The trainer's speed options keep the result: the same losses and weights with and without each
(bit for bit where the kernels compute the same thing, within a stated round-off otherwise), and
the loop reads device values only at its decision points."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.run_folder import METRICS_NAME
from sidbench.teachers.load import load_teacher
from sidbench.testing.tiny import make_tiny_teacher, tiny_overrides
from sidbench.trainer import fused_radam, speed
from sidbench.trainer.context import configure_cpu_math
from sidbench.trainer.loop import Trainer
from sidbench.trainer.tally import DeviceTally

CPU = torch.device("cpu")
ITERATIONS = 3


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny.safetensors")


def run_iterations(teacher_file: Path, tmp_path: Path, method: str = "sid", *options: str,
                   iterations: int = ITERATIONS) -> tuple[list[dict], dict]:
    """(losses of each iteration, the generator's and the EMA's weights after them), on the tiny teacher
    (SiD at the rate its tolerances were measured at, 1e-4: a step's round-off scales with the rate)."""
    pinned = ["method.lr=1e-4"] if method == "sid" else []
    return iterate(compose([f"method={method}", "dataset=digits", *tiny_overrides(teacher_file), "trainer.batch_gpu=4", *pinned,
                            *options]), tmp_path, iterations)


def prepared_trainer(cfg: DictConfig, tmp_path: Path) -> Trainer:
    """A trainer of a composed config on the CPU, its method prepared as `Trainer.train` does
    first (e.g. consistency distillation's teacher samples)."""
    torch.manual_seed(0)
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    m = METHODS.get(str(cfg.method.name))(teacher, cfg.method, CPU, cfg)
    trainer = Trainer(cfg.trainer, m, tmp_path, CPU)
    with trainer.ctx.precompute():
        m.prepare(trainer.ctx)
    return trainer


def step_through(trainer: Trainer, iterations: int = ITERATIONS) -> list[dict]:
    """`iterations` of the trainer's iterations, counted as `Trainer.train` counts them; their losses."""
    p, losses = trainer.progress, []
    for _ in range(iterations):
        step_losses, _ = trainer.step()
        losses.append({k: float(v) for k, v in step_losses.items()})
        p.iteration += 1
        p.images_seen += int(trainer.cfg.batch)
    return losses


def iterate(cfg: DictConfig, tmp_path: Path, iterations: int = ITERATIONS) -> tuple[list[dict], dict]:
    """`run_iterations` of a composed config."""
    trainer = prepared_trainer(cfg, tmp_path)
    m, losses = trainer.method, step_through(trainer, iterations)
    trainer.counter.detach()
    weights = {f"g.{k}": v.detach().clone() for k, v in m.networks()[m.generator_name].state_dict().items()}
    weights |= {f"ema.{k}": v.detach().clone() for k, v in trainer.ema.module.state_dict().items()}
    return losses, weights


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.compile through graph capture (TorchDynamo + AOTAutograd) without inductor's code
    generation (minutes of C++ builds on a small CPU; the benchmarks and the GPU script measure
    inductor), from a fresh dynamo state, and back to one after the test."""
    monkeypatch.setattr(speed, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def radam_unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAdam as on CUDA, where Adam's fused kernel does not make its update (`fused_radam` is for the
    CPU): `compiled` compiles its for-each step there."""
    monkeypatch.setattr(fused_radam, "fuses", lambda opt: False)


@pytest.fixture(scope="module")
def baseline(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    return run_iterations(teacher_file, tmp_path_factory.mktemp("base"))


def test_foreach_optimizer_kernel_is_bit_identical(teacher_file: Path, tmp_path: Path, baseline) -> None:  # noqa: ANN001
    losses, weights = run_iterations(teacher_file, tmp_path, "sid", "trainer.optimizer_kernel=foreach")
    assert losses == baseline[0]
    assert all(torch.equal(weights[k], baseline[1][k]) for k in weights)


def test_fused_adam_matches_within_round_off(teacher_file: Path, tmp_path: Path, baseline) -> None:  # noqa: ANN001
    losses, weights = run_iterations(teacher_file, tmp_path, "sid", "trainer.optimizer_kernel=fused")
    # The fused kernel computes Adam's update in one pass, rounding in another order: last-bit
    # differences per step (measured: <= 2e-8 absolute after 5 steps of a 64x300 MLP).
    for a, b in zip(losses, baseline[0]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    for k in weights:
        torch.testing.assert_close(weights[k], baseline[1][k], rtol=1e-5, atol=1e-6)


def test_channels_last_matches_within_round_off(teacher_file: Path, tmp_path: Path, baseline) -> None:  # noqa: ANN001
    losses, weights = run_iterations(teacher_file, tmp_path, "sid", "trainer.channels_last=true")
    # NHWC convolutions sum in another order: float32 round-off, amplified a little by 3 iterations
    for a, b in zip(losses, baseline[0]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a)
    for k in weights:
        torch.testing.assert_close(weights[k], baseline[1][k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("precision", "fake_score_rel", "generator_rel", "generator_of_scale"),
                         [("bf16", 0.015, 0.25, 0.06), ("fp16", 0.005, 0.05, 0.005)])
def test_half_precision_keeps_sids_losses_within_its_round_off(precision: str, fake_score_rel: float, generator_rel: float,
                                                               generator_of_scale: float, tmp_path: Path) -> None:
    """Autocast on the shipped digits teacher (the tiny test teacher's outputs barely depend on its
    weights): SiD's losses over 3 iterations, against float32's. Measured on 2026-12-06 (AMD EPYC
    with AVX-512): the fake score's loss within 0.43% (bf16) and 0.10% (fp16); the generator's within
    10% and 1.6%: it is made of the difference of the teacher's and the fake score's outputs, nearly
    equal at the start, so their round-off does not cancel (docs/speed.md). Bounds: about 2.5x those.
    The generator's loss also nears zero (0.083 at the third iteration, after 0.59 and 0.91), where
    the same round-off is a larger fraction of it: on an AVX2-only AMD EPYC (2026-12-07) bf16 moved
    that third loss by 27% (0.022), fp16 by 1.2%. Round-off scales with the terms, not with their
    difference, so the generator's loss may also move by a fraction of its largest value over the
    run: measured there at most 2.4% (bf16) and 0.17% (fp16); bounds about 2.5-3x those."""
    def losses(option: str) -> list[dict[str, float]]:
        cfg = compose(["method=sid", "dataset=digits", "processes=1", "device=cpu", "trainer.batch=16", "trainer.batch_gpu=16",
                       f"trainer.precision={option}"])
        return iterate(cfg, tmp_path / option)[0]

    halves, fulls = losses(precision), losses("fp32")
    scale = max(abs(full["generator"]) for full in fulls)
    for half, full in zip(halves, fulls):
        assert half["fake_score"] == pytest.approx(full["fake_score"], rel=fake_score_rel)
        assert half["generator"] == pytest.approx(full["generator"], rel=generator_rel, abs=generator_of_scale * scale)
        assert half != full  # the networks did run in half precision


def flushing() -> bool:
    """Whether subnormals are flushed now (PyTorch has no getter for the switch)."""
    return (torch.tensor([1e-39]) * 1).item() == 0


@pytest.fixture
def flush_restored() -> object:
    before = flushing()
    yield
    configure_cpu_math(before)  # as the tests before left it, for the tests that follow


def test_flushed_subnormals_keep_the_result(teacher_file: Path, tmp_path: Path, flush_restored) -> None:  # noqa: ANN001
    # both sides set here: a `sidbench run` in an earlier test of this process leaves flushing on
    runs = {}
    for flush in (False, True):
        configure_cpu_math(flush)
        runs[flush] = run_iterations(teacher_file, tmp_path / str(flush), "sid")
    # only values below 1.2e-38 change; the tiny SiD run, like the digits runs of sid, dmd and dmd2
    # (docs/speed.md), has none that reach its losses or weights
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(runs[True][1][k], runs[False][1][k]) for k in runs[False][1])


@pytest.mark.parametrize("kernel", ["as_built", "fused"])
def test_flushing_makes_adams_subnormal_moments_zero_and_keeps_its_step(kernel: str, flush_restored) -> None:  # noqa: ANN001
    # A gradient of 1e-20 has a square of 1e-40, below float32's normal range: the case that made
    # DMD's AdamW step 5x slower on the CPU. Flushed, Adam's v is 0 and its denominator eps alone,
    # against sqrt(v) + eps = 1e-20 + 1e-8: the same step to float32 precision.
    results = {}
    for flush in (False, True):
        configure_cpu_math(flush)
        p = torch.nn.Parameter(torch.zeros(4))
        opt = torch.optim.Adam([p], lr=0.1)
        speed.set_optimizer_kernel([opt], kernel)
        p.grad = torch.full((4,), 1e-20)
        opt.step()
        # read here: once flushing is on, a comparison reads a subnormal input as zero too
        results[flush] = (p.detach().clone(), bool((opt.state[p]["exp_avg_sq"] > 0).all()))
    assert results[False][1] and not results[True][1]
    assert bool((results[False][0] < 0).all())  # a step of about -lr * 1e-12
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=0)


@pytest.mark.slow
def test_compiled_networks_match(teacher_file: Path, tmp_path: Path, baseline, traced) -> None:  # noqa: ANN001
    # every network's UNet, traced (the fixture)
    losses, weights = run_iterations(teacher_file, tmp_path, "sid", "trainer.compile=true")
    for a, b in zip(losses, baseline[0]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    for k in weights:
        torch.testing.assert_close(weights[k], baseline[1][k], rtol=1e-5, atol=1e-6)


def test_compile_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    assert speed.compile_networks([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], "reduce-overhead") == 2
    assert calls == [{**speed.COMPILE_OPTIONS, "mode": "reduce-overhead"}] * 2
    calls.clear()
    speed.compile_networks([torch.nn.Linear(2, 2)])  # torch.compile's own default: no mode passed
    assert calls == [dict(speed.COMPILE_OPTIONS)]
    with pytest.raises(ValueError, match="unknown compile mode 'turbo'; use one of default, reduce-overhead"):
        speed.compile_networks([torch.nn.Linear(2, 2)], "turbo")


@pytest.mark.parametrize(("compile_on", "mode", "device", "marks"), [
    (True, "reduce-overhead", "cuda", True), (True, "max-autotune", "cuda", True),
    (True, "default", "cuda", False), (True, "max-autotune-no-cudagraphs", "cuda", False),
    (False, "reduce-overhead", "cuda", False), (True, "reduce-overhead", "cpu", False)])
def test_cuda_graph_steps_are_marked_only_where_graphs_are_recorded(compile_on: bool, mode: str, device: str, marks: bool) -> None:
    assert speed.marks_cuda_graph_steps(compile_on, mode, torch.device(device)) is marks


def test_the_trainer_marks_every_iteration_as_a_graph_step(teacher_file: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose(["method=sid", "dataset=digits", *tiny_overrides(teacher_file), "trainer.batch_gpu=4"])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    trainer = Trainer(cfg.trainer, METHODS.get("sid")(teacher, cfg.method, CPU, cfg), tmp_path, CPU)
    assert not trainer.mark_graph_steps  # not compiled, and on the CPU
    marked: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marked.append(trainer.progress.iteration))
    trainer.mark_graph_steps = True  # as on CUDA with trainer.compile_mode=reduce-overhead
    for _ in range(3):
        trainer.step()
        trainer.progress.iteration += 1
    assert marked == [0, 1, 2]  # once per iteration
    trainer.counter.detach()


def test_unknown_optimizer_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer kernel"):
        speed.set_optimizer_kernel([], "turbo")


PRESET_NAMES = sorted({p.stem.split("_digits")[0] for p in (Path(__file__).parents[2] / "sidbench/conf/preset").glob("*_digits.yaml")})


@pytest.mark.parametrize("dataset", ["cifar10", "ffhq64", "imagenet64", "afhqv2-64", "cifar10-cond", "digits", "digits-cond"])
def test_fused_adam_is_the_default_except_for_the_documented_digits_curves(dataset: str) -> None:
    # The fused kernel is what won (docs/speed.md); the digits presets keep the kernel their
    # documented curves were measured with, so the README's numbers stay reproducible bit for bit.
    assert len(PRESET_NAMES) == 11
    for method in PRESET_NAMES:
        kernel = compose([f"method={method}", f"dataset={dataset}"]).trainer.optimizer_kernel
        assert kernel == ("as_built" if dataset.startswith("digits") else "fused"), (method, dataset)
    assert compose(["method=sid", "dataset=digits", "trainer.optimizer_kernel=fused"]).trainer.optimizer_kernel == "fused"


def test_the_trainer_steps_the_default_kernel(teacher_file: Path, tmp_path: Path) -> None:
    # a config without the digits presets' pin, as a plugin method's or a real dataset's run gets it
    cfg = compose(["method=sid", "dataset=digits", *tiny_overrides(teacher_file), "~preset"])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    trainer = Trainer(cfg.trainer, METHODS.get("sid")(teacher, cfg.method, CPU, cfg), tmp_path, CPU)
    groups = [g for opt in trainer.method.optimizers().values() for g in opt.param_groups]
    assert groups and all(g["fused"] and not g["foreach"] for g in groups)
    trainer.counter.detach()


def test_fused_kernel_survives_a_state_reload() -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    opt2 = torch.optim.Adam(net.parameters())
    speed.set_optimizer_kernel([opt2], "fused")
    opt2.load_state_dict(saved)  # restores the saved flags (fused=None)
    assert not opt2.param_groups[0]["fused"]
    speed.set_optimizer_kernel([opt2], "fused")  # what the trainer does after loading a state
    assert opt2.param_groups[0]["fused"] and not opt2.param_groups[0]["foreach"]
    opt2.step()
    radam = torch.optim.RAdam(net.parameters())  # its update by Adam's fused kernel on the CPU (test_fused_radam.py)
    speed.set_optimizer_kernel([radam], "fused")
    radam.load_state_dict(radam.state_dict())
    speed.set_optimizer_kernel([radam], "fused")
    assert radam._sidbench_fused_radam and radam.param_groups[0]["foreach"]  # for-each for its unrectified first steps


def test_fused_radam_trains_consistency_distillation_as_for_each_does(teacher_file: Path, tmp_path: Path) -> None:
    # 8 iterations: RAdam's update is rectified (and made by Adam's fused kernel) from the 6th
    few = "method.num_teacher_samples=16"
    eager = run_iterations(teacher_file, tmp_path / "eager", "consistency", few, "trainer.optimizer_kernel=foreach", iterations=8)
    fused = run_iterations(teacher_file, tmp_path / "fused", "consistency", few, "trainer.optimizer_kernel=fused", iterations=8)
    for a, b in zip(fused[0], eager[0]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    assert fused[1].keys() == eager[1].keys()
    for k in eager[1]:
        torch.testing.assert_close(fused[1][k], eager[1][k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(fused[1][k], eager[1][k]) for k in eager[1])  # another kernel: not bit for bit


def test_tally_means_match_host_sums_and_streak_counts_nonfinite() -> None:
    tally = DeviceTally(CPU)
    values = [1.5, float("nan"), 2.25, float("inf"), float("nan")]
    host = 0.0
    for i, v in enumerate(values):
        tally.add({"g": torch.tensor(v)}, {"dropped": float(i)})
        host += v
    r = tally.read(tick=True)
    assert r.streak == 2 and r.last_losses == {"loss/g": pytest.approx(float("nan"), nan_ok=True)}
    assert r.means["train/dropped"] == sum(float(torch.tensor(float(i))) for i in range(5)) / 5
    tally.add({"g": torch.tensor(0.1)}, {})
    r = tally.read(tick=True)
    assert r.streak == 0 and r.means == {"loss/g": float(torch.tensor(0.1, dtype=torch.float32).double())}


def test_a_value_logged_on_some_iterations_is_averaged_over_those() -> None:
    # DMD2 logs its generator's losses every ttur-th iteration only: their tick mean is theirs
    tally = DeviceTally(CPU)
    for i in range(5):
        tally.add({"fake_score": 1.0, **({"dm": 4.0} if i % 5 == 0 else {})}, {})
    assert tally.read(tick=True).means == {"loss/fake_score": 1.0, "loss/dm": 4.0}


def test_the_loop_reads_device_values_only_at_decision_points(teacher_file: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[bool] = []
    original = DeviceTally.read

    def counting(self: DeviceTally, tick: bool):  # noqa: ANN202
        reads.append(tick)
        return original(self, tick)

    monkeypatch.setattr(DeviceTally, "read", counting)
    # 16 iterations of batch 8, a tick every 8 iterations, max_nonfinite 5: reads after iterations
    # 5, 8 (tick), 10, 15 and 16 (tick, end): 5 reads, not 16
    cfg = compose(["method=sid", "dataset=digits", *tiny_overrides(teacher_file), "trainer.kimg=0.128", "trainer.tick_kimg=0.064",
                   "trainer.checkpoint_every_kimg=0", "trainer.eval_every_kimg=0", "trainer.max_nonfinite=5", "eval.enabled=false",
                   "trainer.sample_grids=false"])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    m = METHODS.get("sid")(teacher, cfg.method, CPU, cfg)
    Trainer(cfg.trainer, m, tmp_path, CPU).train()
    assert reads == [False, True, False, False, True]


def test_run_sets_the_cpu_switch_from_the_config(monkeypatch: pytest.MonkeyPatch, flush_restored) -> None:  # noqa: ANN001
    """`sidbench run` flushes subnormals unless `trainer.flush_denormal=false`, before anything is built."""
    import sidbench.run as run_module

    seen: list[bool] = []
    monkeypatch.setattr(run_module, "_run", lambda cfg, device, rank, world, overrides: seen.append(flushing()))
    threads = torch.get_num_threads()
    try:
        run_module.run(compose(["device=cpu"]))
        run_module.run(compose(["device=cpu", "trainer.flush_denormal=false"]))
    finally:
        torch.set_num_threads(threads)  # the digits preset sets one thread
    assert seen == [True, False]


#: RAdam compiled computes its bias corrections in float32 tensors (as PyTorch's capturable
#: RAdam does) where the eager step uses Python floats: 1 - 0.999^t keeps about 5 digits for small t,
#: so a step's size may differ by ~1e-5 of itself
COMPILED_RADAM = {"rtol": 1e-4, "atol": 1e-5}


def test_compiled_radam_step_matches_the_for_each_one(teacher_file: Path, tmp_path: Path, traced, radam_unfused) -> None:  # noqa: ANN001
    # RAdam (consistency distillation, ECT, sCD) has no fused kernel on CUDA; `compiled` compiles
    # its for-each step there (traced: the fixture): the same training up to that round-off.
    from torch._dynamo.utils import counters

    counters.clear()
    few = "method.num_teacher_samples=16"
    eager = run_iterations(teacher_file, tmp_path / "eager", "consistency", few, "trainer.optimizer_kernel=foreach")
    assert counters["stats"]["unique_graphs"] == 0
    compiled = run_iterations(teacher_file, tmp_path / "compiled", "consistency", few, "trainer.optimizer_kernel=compiled")
    for a, b in zip(compiled[0], eager[0]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=COMPILED_RADAM["rtol"], abs=COMPILED_RADAM["atol"]) for k in a)
    for k in eager[1]:
        torch.testing.assert_close(compiled[1][k], eager[1][k], **COMPILED_RADAM)
    assert counters["stats"]["unique_graphs"] == 1  # the generator's step, compiled once for all iterations


def test_a_changing_learning_rate_does_not_recompile_the_step(traced, radam_unfused) -> None:  # noqa: ANN001
    from torch._dynamo.utils import counters

    counters.clear()
    nets = [torch.nn.Linear(3, 2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.RAdam(n.parameters(), lr=0.1) for n in nets]
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)) for o in opts]
    speed.set_optimizer_kernel(opts[1:], "compiled")
    speed.set_optimizer_kernel(opts[1:], "compiled")  # again, as after a state reload: no second wrapper
    x = torch.randn(5, 3)
    for _ in range(10):  # past RAdam's five un-rectified steps, and past dynamo's 8 recompiles
        for net, opt, schedule in zip(nets, opts, schedules):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
            schedule.step()
    assert counters["stats"]["unique_graphs"] == 1
    assert isinstance(opts[1].param_groups[0]["lr"], float)  # a state dict saves the float
    assert opts[1].state_dict()["param_groups"][0]["lr"] == pytest.approx(1 / 11 * 0.1)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(b, a, **COMPILED_RADAM)


@pytest.mark.parametrize("kernel", ["fused", "compiled"])
def test_a_compiled_step_reports_its_compile_time(kernel: str, teacher_file: Path, tmp_path: Path, traced, radam_unfused) -> None:  # noqa: ANN001
    import json

    cfg = compose(["method=consistency", "dataset=digits", *tiny_overrides(teacher_file), "trainer.batch_gpu=4",
                   "method.num_teacher_samples=16", f"trainer.optimizer_kernel={kernel}"])
    trainer = prepared_trainer(cfg, tmp_path)
    step_through(trainer)  # the first two step eagerly: the compute counter measures them in a FLOP-counting mode, which dynamo skips
    trainer.log({})
    trainer.counter.detach()
    line = json.loads((tmp_path / METRICS_NAME).read_text().splitlines()[-1])
    if kernel == "compiled":
        assert line["compile_seconds"] > 0  # the RAdam step, traced on the third iteration
    else:
        assert "compile_seconds" not in line


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)


@pytest.mark.parametrize(("method", "option"), [("sid", "trainer.compile=true"), ("consistency", "trainer.optimizer_kernel=compiled")])
def test_a_compile_without_a_cpp_compiler_is_refused_before_training(method: str, option: str, teacher_file: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, no_compiler, radam_unfused) -> None:  # noqa: ANN001
    from sidbench.config import ConfigError

    cfg = compose([f"method={method}", "dataset=digits", *tiny_overrides(teacher_file), option, "method.num_teacher_samples=16"
                   if method == "consistency" else "trainer.batch_gpu=4"])
    with pytest.raises(ConfigError, match=r"need a C\+\+ compiler on the CPU for TorchInductor, and none was found \(RuntimeError\); install g\+\+ or set CXX"):
        prepared_trainer(cfg, tmp_path)
    monkeypatch.setattr(speed, "COMPILE_OPTIONS", {"backend": "aot_eager"})  # no code generation: nothing to refuse
    prepared_trainer(cfg, tmp_path / "traced").counter.detach()


@pytest.mark.parametrize("method", ["sid", "consistency"])
def test_compiled_kernels_that_compile_nothing_need_no_compiler(method: str, teacher_file: Path, tmp_path: Path, no_compiler) -> None:  # noqa: ANN001
    # on the CPU every built-in optimiser has a fused kernel (Adam's, or RAdam's update made by it)
    cfg = compose([f"method={method}", "dataset=digits", *tiny_overrides(teacher_file), "trainer.optimizer_kernel=compiled",
                   "method.num_teacher_samples=16" if method == "consistency" else "trainer.batch_gpu=4"])
    trainer = prepared_trainer(cfg, tmp_path)
    assert not trainer.compiles
    trainer.counter.detach()
