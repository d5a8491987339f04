"""Two processes under torchrun (gloo, CPU) end where one process with the same global batch ends.

The step context seeds each micro-batch from (seed, iteration, update, global micro-batch index), so
2 processes x 1 micro-batch of 4 draw exactly the noise that 1 process x 2 micro-batches of 4 draws;
DDP averages the two processes' gradients where the single process accumulates its micro-batches.
Only rank 0 creates an MLflow run, scores the evaluations (both ranks make their images) and writes
checkpoints; both ranks share its run folder.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sidbench.teachers.load import load_teacher_file
from sidbench.testing.tiny import tiny_overrides

# Tolerance on the final weights, relative to each tensor's scale (max |w|, at least 1). The two
# runs add the same float32 gradient terms in a different order (DDP's all-reduce across ranks vs.
# accumulation of micro-batches in one process), so they may differ by round-off in the gradients.
# Adam turns a relative round-off of ~1e-7 in a gradient into a change of at most ~1e-7 * lr in the
# step, so after a few iterations the weights agree far below 1e-5 of their scale; a gradient that
# was not reduced across ranks (or noise drawn differently) moves them by ~lr = 1e-4 per step.
# (With 2 gloo ranks the sums are usually bitwise equal: a + b = b + a and the scalings are powers
# of two; the tolerance is there so the test does not depend on the backend's reduction order.)
RTOL_OF_SCALE = 1e-5
PLUGINS = Path(__file__).parent / "plugins"


def common_overrides(teacher: Path) -> list[str]:
    # 4 iterations of global batch 8 in micro-batches of 4; evaluation at iterations 0, 2 and 4
    # (of 64 images in batches of 16: each rank makes two, rank 0 scores them), a checkpoint at
    # iterations 2 and 4.
    return tiny_overrides(teacher, **{"trainer.kimg": 0.032, "trainer.batch": 8, "trainer.batch_gpu": 4,
                                      "trainer.eval_every_kimg": 0.016, "trainer.checkpoint_every_kimg": 0.016,
                                      "eval.batch_size": 16})


def launch(module_args: list[str], cwd: Path, nproc: int | None, timeout: float = 300, plugins: str = "",
           env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SIDBENCH_PLUGINS": plugins, **(env or {})}
    # torchrun's log folder inside the test's folder: by default it makes one in the temp folder and leaves it there
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 f"--log-dir={cwd / 'torchrun-logs'}"] if nproc else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "sidbench.cli", "run", *module_args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def counting_images(run_env: Path) -> tuple[Path, dict[str, str]]:
    """(folder, environment) for a run with tests/trainer/plugins/count_generated_images.py: each
    rank logs the sizes of the evaluation batches it generates to <folder>/rank<r>.txt."""
    made = run_env / "images-made"
    made.mkdir()
    return made, {"SIDBENCH_TEST_IMAGES_LOG": str(made), "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = max(1.0, float(a[key].abs().max()))
        diff = float((a[key].double() - b[key].double()).abs().max())
        assert diff <= RTOL_OF_SCALE * scale, f"{what}.{key}: max |difference| {diff:.3g} > {RTOL_OF_SCALE:g} x {scale:.3g}"


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_rank0_logs(tiny_teacher: Path, run_env: Path) -> None:
    common = common_overrides(tiny_teacher)
    # No run_name: the default holds a timestamp, which rank 0 decides and broadcasts. The end is
    # scored on 48 images (3 batches of 16), the curve on 64; each rank logs the batches it makes.
    made, env = counting_images(run_env)
    launch([*common, "eval.final_samples=48"], run_env, nproc=2, plugins="count_generated_images", env=env)
    # One process (tiny_overrides sets processes=1, so `sidbench run` starts no torchrun of its own).
    launch([*common, "run_name=single", "tracking.enabled=false", "eval.enabled=false"], run_env, nproc=None)

    runs = sorted(p for p in (run_env / "runs" / "digits").iterdir() if p.name != "single")
    assert len(runs) == 1, f"the two ranks wrote to different run folders: {runs}"
    ddp_dir = runs[0]
    ddp = torch.load(ddp_dir / "checkpoint.pt", weights_only=True)
    one = torch.load(run_env / "runs" / "digits" / "single" / "checkpoint.pt", weights_only=True)
    assert ddp["progress"]["images_seen"] == one["progress"]["images_seen"] == 32
    assert ddp["progress"]["iteration"] == one["progress"]["iteration"] == 4
    for net in ("generator", "fake_score"):
        assert_weights_close(ddp["networks"][net], one["networks"][net], net)
    assert_weights_close(ddp["ema"], one["ema"], "ema")
    # the weights did move (a run that trained nothing would pass the comparison too), by more
    # than the tolerance
    start = load_teacher_file(tiny_teacher)[0].state_dict()
    moved = max(float((ddp["networks"]["generator"][k] - v).abs().max()) for k, v in start.items())
    assert moved > 10 * RTOL_OF_SCALE

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiments = client.search_experiments()
    found = client.search_runs([e.experiment_id for e in experiments])
    assert len(found) == 1, f"expected one MLflow run (rank 0's), found {len(found)}"
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2"
    assert run.data.tags["sidbench.run_dir"] == str(ddp_dir.resolve())
    # one value per tick (iterations 2 and 4): nobody else logged into rank 0's run
    assert len(client.get_metric_history(run.info.run_id, "loss/generator")) == 2
    # only rank 0 holds the MLflow run id, so the checkpoint that carries it is rank 0's
    assert ddp["mlflow_run_id"] == run.info.run_id
    # rank 0 evaluated (the metric was logged) and wrote the final artifacts
    history = client.get_metric_history(run.info.run_id, "eval/fd_pixel")
    assert history
    assert (ddp_dir / "generator.safetensors").is_file()
    # Both ranks made the evaluations' images (4 batches of 16, two each), and rank 0 scored them:
    # the last one, at the end, is what one process scores with the saved EMA generator.
    from rich.console import Console

    from sidbench.cli.score import run_fid

    alone = run_fid(str(ddp_dir), [], num=64, batch=16, device="cpu", progress=False, console=Console(file=io.StringIO()))
    last = max(history, key=lambda m: m.step)
    assert alone.metric == "fd_pixel" and alone.value == pytest.approx(last.value, rel=1e-12)
    # The end's evaluation too: both ranks made its batches (0 and 2 on rank 0, 1 on rank 1), and
    # its value is what one process scores on the end's 48 images.
    curve = [16] * 2 * 3  # each rank's share of the 3 curve points (iterations 0, 2 and 4)
    assert (made / "rank0.txt").read_text().split() == [str(n) for n in [*curve, 16, 16]]
    assert (made / "rank1.txt").read_text().split() == [str(n) for n in [*curve, 16]]
    end = run_fid(str(ddp_dir), [], num=48, batch=16, device="cpu", progress=False, console=Console(file=io.StringIO()))
    final = client.get_metric_history(run.info.run_id, "eval/fd_pixel_final")
    assert len(final) == 1 and end.value == pytest.approx(final[0].value, rel=1e-12)


@pytest.mark.slow
def test_the_ends_own_metric_under_ddp_is_scored_on_the_last_evaluations_images(tiny_teacher: Path, run_env: Path) -> None:
    """`eval.final_metrics` at the curve's size: the end scores them on the last evaluation's images,
    which both ranks make again (every rank takes that branch, though only rank 0 holds metrics)."""
    made, env = counting_images(run_env)
    args = [*common_overrides(tiny_teacher), "trainer.kimg=0.016", "eval.final_metrics=[fd_digits]",
            "tracking.enabled=false", "run_name=ddp"]
    launch(args, run_env, nproc=2, plugins="count_generated_images", env=env)
    # 2 curve points (iterations 0 and 2) and the end, 4 batches of 16 each: 2 a rank each time
    for rank in (0, 1):
        assert (made / f"rank{rank}.txt").read_text().split() == ["16"] * 2 * 3
    lines = [json.loads(line) for line in (run_env / "runs" / "digits" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    final = [line for line in lines if "eval/fd_digits_final" in line]
    from rich.console import Console

    from sidbench.cli.score import run_fid

    alone = run_fid(str(run_env / "runs" / "digits" / "ddp"), ["eval.metric=fd_digits"], num=64, batch=16, device="cpu",
                    progress=False, console=Console(file=io.StringIO()))
    assert len(final) == 1 and alone.value == pytest.approx(final[0]["eval/fd_digits_final"], rel=1e-12)


@pytest.mark.slow
def test_staged_method_under_ddp_matches_one_process(tiny_teacher: Path, run_env: Path) -> None:
    """With a stage boundary (promotion, optimiser and EMA reset), an LR warm-up, gradient-norm
    clipping, a joint update of two networks and an average of the method's own."""
    common = [*common_overrides(tiny_teacher), "method=staged-toy", "method.stage_kimg=0.016",
              "tracking.enabled=false", "eval.enabled=false"]
    launch([*common, "run_name=ddp"], run_env, nproc=2, plugins="sidbench.testing.staged")
    launch([*common, "run_name=single"], run_env, nproc=None, plugins="sidbench.testing.staged")
    ddp, one = (torch.load(run_env / "runs" / "digits" / name / "checkpoint.pt", weights_only=True) for name in ("ddp", "single"))
    assert ddp["progress"]["stage"] == one["progress"]["stage"] == 1
    for net in ("generator", "aux"):
        assert_weights_close(ddp["networks"][net], one["networks"][net], net)
    assert_weights_close(ddp["frozen"]["teacher"], one["frozen"]["teacher"], "promoted teacher")
    assert_weights_close(ddp["averages"]["aux_average"], one["averages"]["aux_average"], "aux_average")
    assert_weights_close(ddp["ema"], one["ema"], "ema")
    assert ddp["schedulers"]["generator"]["last_epoch"] == one["schedulers"]["generator"]["last_epoch"] == 2
    assert ddp["progress"]["passes"] == one["progress"]["passes"] > 0
    assert ddp["progress"]["flops"] == pytest.approx(one["progress"]["flops"])


@pytest.mark.slow
def test_resume_with_another_process_count_or_micro_batch(tiny_teacher: Path, run_env: Path, kill_env) -> None:  # noqa: ANN001
    """What the README says about resuming on other hardware: the same micro-batch size
    (`trainer.batch_gpu`) on another number of processes continues with the very same draws (the
    weights equal an uninterrupted run's up to reduction round-off); another micro-batch size
    continues the run, but from then on with other draws."""
    common = common_overrides(tiny_teacher)  # 4 iterations of global batch 8 in micro-batches of 4
    launch([*common, "run_name=full", "tracking.enabled=false"], run_env, nproc=None)
    full = torch.load(run_env / "runs" / "digits" / "full" / "checkpoint.pt", weights_only=True)
    for name, nproc, extra in (("two-processes", 2, []), ("other-micro-batch", None, ["trainer.batch_gpu=2"])):
        args = [*common, f"run_name={name}", "tracking.enabled=false"]
        killed = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", *args], cwd=run_env, env=kill_env(3),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert killed.returncode == -9, killed.stdout  # killed as iteration 3 starts: checkpoint after 2
        launch([*args, *extra, f"resume={run_env / 'runs' / 'digits' / name}"], run_env, nproc=nproc)
        resumed = torch.load(run_env / "runs" / "digits" / name / "checkpoint.pt", weights_only=True)
        assert resumed["progress"]["iteration"] == 4
        if not extra:
            for net in ("generator", "fake_score"):
                assert_weights_close(full["networks"][net], resumed["networks"][net], net)
        else:
            diff = max(float((full["networks"]["generator"][k] - v).abs().max()) for k, v in resumed["networks"]["generator"].items())
            assert diff > 10 * RTOL_OF_SCALE  # other draws after the resume


@pytest.mark.slow
def test_a_process_killed_without_a_traceback_is_reported_with_its_signal(tiny_teacher: Path, run_env: Path, kill_env, run_temp) -> None:  # noqa: ANN001
    # `sidbench run processes=2` starts torchrun itself; both ranks SIGKILL themselves at iteration 2
    # (tests/trainer/plugins/kill_at_iteration.py), as the kernel's OOM killer would: no traceback.
    proc = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", *common_overrides(tiny_teacher), "processes=2",
                           "run_name=killed", "tracking.enabled=false"],
                          cwd=run_env, env={**kill_env(2), **run_temp.env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + 9, proc.stderr
    assert run_temp.left() == []  # torchrun's log folder (where a worker's error file would go) went with the run
    assert re.search(r"training process [01] was killed by SIGKILL without a Python traceback", " ".join(proc.stderr.split()))
    assert "Traceback" not in proc.stderr


def test_failed_processes_keep_their_own_exit_code() -> None:
    from types import SimpleNamespace

    from sidbench.cli.run import report_child_failure

    said = SimpleNamespace(exitcode=2, signal_name=lambda: "", timestamp=1)  # a bad setting: it printed one line
    stopped = SimpleNamespace(exitcode=-15, signal_name=lambda: "SIGTERM", timestamp=2)  # by torchrun, after
    assert report_child_failure({0: stopped, 1: said}) == 2


def _unraisable_from(filename: str, function: str, message: str):  # noqa: ANN202
    """An unraisable exception as Python hands it to `sys.unraisablehook`, raised by `function` in
    a module whose file is `filename` (compiled under that name, as torch's module would be)."""
    from types import SimpleNamespace

    namespace: dict = {}
    exec(compile(f"def {function}():\n    raise RuntimeError({message!r})\n", filename, "exec"), namespace)  # noqa: S102
    try:
        namespace[function]()
    except RuntimeError as e:
        return SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=e.__traceback__, err_msg=None, object=None)
    raise AssertionError("not raised")


def test_only_torchruns_rendezvous_timer_race_is_kept_quiet() -> None:
    # torch's keep-alive timer, collected on its own thread at a Ctrl-C, fails to join itself:
    # harmless, and kept out of the one line the launcher prints; anything else is reported
    from sidbench.cli.run import ignore_rendezvous_timer_race

    seen: list = []
    hook = ignore_rendezvous_timer_race(seen.append)
    assert ignore_rendezvous_timer_race(hook) is hook  # once, however often the launcher installs it
    torch_file = os.path.join("venv", "torch", "distributed", "elastic", "rendezvous", "utils.py")
    race = _unraisable_from(torch_file, "_stop_thread", "cannot join current thread")
    hook(race)
    assert seen == []
    others = [_unraisable_from(torch_file, "_stop_thread", "something else"),
              _unraisable_from(os.path.join("mine", "utils.py"), "_stop_thread", "cannot join current thread"),
              _unraisable_from(torch_file, "_run", "cannot join current thread")]
    for unraisable in others:
        hook(unraisable)
    assert seen == others
