"""Runs never mix, never escape their folder and never report a number they did not measure:
names, reuse, restarts, locks, interrupts, dead launchers and failing stores, each as a user meets
them (subprocesses where signals or processes are involved)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from sidbench.config import ConfigError, compose
from sidbench.run_folder import changed_settings, check_folder_name, default_settings, merge_overrides, plan_start
from sidbench.testing.tiny import tiny_overrides

PLUGINS = str(Path(__file__).parent / "trainer" / "plugins")


def _default_sigint() -> None:
    # A background job of a non-interactive shell (`.ci/run &`) starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the Ctrl-C tests must not depend on that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sidbench(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sidbench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_default_sigint)


def plugin_env(module: str, **extra: str) -> dict[str, str]:
    return {"SIDBENCH_PLUGINS": module, "PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]), **extra}


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def mlflow_runs(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def live(pattern: str) -> list[int]:
    """Live processes whose command line holds `pattern` (zombies left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if pattern in cmd and state != "Z":
                out.append(int(entry.name))
    return out


# -- names and settings ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../x", "/abs/path", "..", ".", "a/b", "a b", "x,y", "'q'", ""])
def test_a_run_name_is_one_folder_name(name: str) -> None:
    with pytest.raises(ConfigError, match="single folder name"):
        check_folder_name(name, "run_name")


def test_ordinary_names_pass() -> None:
    for name in ("dup", "sid-2026.12.05_a", "bench-x.sid-s0-0123abcd"):
        assert check_folder_name(name, "run_name") == name


def test_only_settings_that_do_not_change_the_computation_may_change_on_resume() -> None:
    stored = OmegaConf.to_container(compose([]), resolve=True)
    resumed = compose(["trainer.kimg=400", "device=cpu", "processes=1", "trainer.batch_gpu=64", "eval.batch_size=10",
                       "run_name=x", "tracking.enabled=false"])
    assert changed_settings(stored, resumed) == []
    changed = compose(["trainer.seed=1", "method.alpha=1.0"])
    assert changed_settings(stored, changed) == ["method.alpha 1.2 -> 1.0", "trainer.seed 0 -> 1"]


def test_a_setting_added_since_a_run_started_resumes_at_its_default(tmp_path: Path) -> None:
    cfg = compose(["method=dmd2", "run_name=old"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["trainer"]["compile_mode"]  # as written before the setting existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert plan_start(cfg, tmp_path).kind == "restart"  # no checkpoint yet: the same run starts again
    other = compose(["method=dmd2", "run_name=old", "trainer.compile=true", "trainer.compile_mode=reduce-overhead"])
    with pytest.raises(ConfigError, match=r"trainer.compile False -> True; trainer.compile_mode \(none\) -> reduce-overhead"):
        plan_start(other, tmp_path)
    renamed = compose(["method=dmd2", "run_name=old", "dataset.name=my-digits"])  # a card named unlike its file
    assert default_settings(renamed) == {}


def test_a_run_made_before_a_setting_was_renamed_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = compose(["method=dmd2", "run_name=old"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    stored["method"]["lr_warmup"] = stored["method"].pop("warmup_iterations")  # as written before the rename
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError, match=r"run_name=\S+: the run in .* was made by an older sidbench "
                                          r"\(method.lr_warmup is now method.warmup_iterations\); resume it with"):
        plan_start(cfg, tmp_path)
    stored["method"]["warmup_iterations"] = stored["method"].pop("lr_warmup")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert plan_start(cfg, tmp_path).kind == "restart"  # today's names: the same settings, no checkpoint


def test_a_run_from_before_a_preset_changed_is_told_how_to_continue_as_it_started(tmp_path: Path) -> None:
    # SiD's digits preset of 2026-12-06 (batch 128, lr 1e-4, ramp-up 0.15, no LR decay): a run it
    # started is refused by today's preset, and the refusal gives the overrides that continue it
    before = ["trainer.batch=128", "method.lr=1e-4", "trainer.ema_rampup=0.15", "trainer.lr_anneal.shape=none",
              "trainer.lr_anneal.start=0.5", "trainer.lr_anneal.final=0.1", "dataset.description='a card, renamed'"]
    stored = OmegaConf.to_container(compose(["run_name=old", *before]), resolve=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError) as refused:
        plan_start(compose(["run_name=old"]), tmp_path)
    message = str(refused.value)
    assert "\n" not in message and message.endswith("to continue it as it started, or choose another run_name")
    restore = shlex.split(message.split("; add ", 1)[1].split(" to continue", 1)[0])  # as a shell reads it
    assert "trainer.batch=128" in restore and "method.lr=0.0001" in restore and "dataset.description='a card, renamed'" in restore
    assert plan_start(compose(["run_name=old", *restore]), tmp_path).kind == "restart"  # the same settings again


@pytest.mark.parametrize(("value", "override"), [
    (None, "null"), (True, "true"), (3, "3"), (2.8e-4, "0.00028"), ([0.9, 0.99], "[0.9,0.99]"), ("cosine", "cosine"),
    ("1e-4", "'1e-4'"), ("null", "'null'"), ("it's", "'it\\'s'")])
def test_restoring_overrides_keep_each_values_type(value: object, override: str) -> None:
    from sidbench.search_space import value_override  # the overrides a tuning study's trials get, too

    assert value_override("k", value) == f"k={override}"


def test_a_continued_run_adds_to_and_overrides_its_first_command_line() -> None:
    assert merge_overrides(["method=dmd2", "trainer.kimg=10", "+tracking.tags.a=1"], ["trainer.kimg=20", "resume=r"]) == \
        ["method=dmd2", "+tracking.tags.a=1", "trainer.kimg=20", "resume=r"]


@pytest.mark.parametrize("bench_id", ["..", "a,b", "q'x", "a/b"])
def test_bench_id_is_checked_before_anything_is_written(bench_id: str, run_env: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.cli import main

    assert main(["bench", "methods=[sid]", f"id={bench_id}"]) == 2
    assert "single folder name" in one_line(capsys.readouterr().err)
    assert not (run_env / "runs").exists()


def test_output_root_naming_a_file_is_one_line(run_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.cli import main

    (run_env / "afile").write_text("x")
    assert main(["run", "output_root=afile", "processes=1"]) == 2
    assert "afile is a file, not a folder" in one_line(capsys.readouterr().err)


# -- generator and teacher files --------------------------------------------------------------------
def test_a_generator_file_of_integer_tensors_is_refused_with_its_name(tiny_teacher: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sidbench.eval.generators import load_generator
    from sidbench.teachers.load import TeacherLoadError

    with safe_open(str(tiny_teacher), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "generator.safetensors"
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(bad), metadata=meta)
    with pytest.raises(TeacherLoadError) as e:
        load_generator(bad)
    message = str(e.value)
    assert message.startswith(f"generator file {bad} does not fit") and "dtype mismatches" in message
    assert "file int32 vs network float32" in message and "\n" not in message


# -- the store --------------------------------------------------------------------------------------
def _open_and_log(uri: str, barrier, results) -> None:  # noqa: ANN001 - multiprocessing objects
    from sidbench.tracking import MLflowTracker

    barrier.wait()
    try:
        tracker = MLflowTracker(uri, "digits", Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
        tracker.log_metrics({"x": 1.0}, step=0)
        tracker.finish()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}")


def test_parallel_first_use_of_a_new_store_works(tmp_path: Path) -> None:
    # four processes create and migrate one fresh SQLite store at the same moment
    ctx = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_and_log, args=(uri, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert sorted(results.get(timeout=5) for _ in procs) == ["ok"] * 4
    assert len(mlflow_runs(tmp_path / "fresh")) == 4


def test_a_store_that_cannot_be_created_is_one_line(tiny_teacher: Path, run_env: Path) -> None:
    proc = sidbench(["run", *tiny_overrides(tiny_teacher)], run_env, {"MLFLOW_TRACKING_URI": "sqlite:////proc/none/mlflow.db"})
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert "the MLflow store sqlite:////proc/none/mlflow.db cannot be created" in line and "tracking.uri" in line


def test_ui_port_in_use_is_named(run_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from sidbench.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"--port {port}: 127.0.0.1:{port} is in use" in line


# -- runs as a user starts, reuses, kills and interrupts them ----------------------------------------
@pytest.mark.slow
def test_a_run_name_is_never_reused_for_other_settings(tiny_teacher: Path, run_env: Path) -> None:
    common = ["run", *tiny_overrides(tiny_teacher), "run_name=dup"]
    assert sidbench(common, run_env).returncode == 0
    before = (run_env / "runs" / "digits" / "dup" / "config.yaml").read_text()
    proc = sidbench([*common, "trainer.seed=1"], run_env)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "run_name=dup: the run in runs/digits/dup has other settings (trainer.seed 0 -> 1)" in line
    assert (run_env / "runs" / "digits" / "dup" / "config.yaml").read_text() == before
    assert [r.data.tags["seed"] for r in mlflow_runs(run_env)] == ["0"]  # no second MLflow run
    headline = mlflow_runs(run_env)[0].data.tags["headline"]
    again = sidbench(common, run_env)  # the same settings: the finished run, left as it is
    assert again.returncode == 0 and "already reached its budget" in again.stderr
    assert "eval/fd_pixel" in again.stderr  # the last evaluation's value, as measured
    (run,) = mlflow_runs(run_env)
    assert run.info.status == "FINISHED" and run.data.tags["headline"] == headline and "fd_pixel" in headline


@pytest.mark.slow
def test_resume_with_the_folder_alone_continues_the_run_it_names(tiny_teacher: Path, run_env: Path) -> None:
    # started as dmd2 with 8 iterations; `resume=<dir> trainer.kimg=...` alone extends it as dmd2
    first = sidbench(["run", *tiny_overrides(tiny_teacher), "method=dmd2", "run_name=ext"], run_env)
    assert first.returncode == 0, first.stderr
    proc = sidbench(["run", "resume=runs/digits/ext", "trainer.kimg=0.096"], run_env)
    assert proc.returncode == 0, proc.stderr
    assert "resumed runs/digits/ext at 0.1 kimg" in proc.stderr
    lines = [json.loads(line) for line in (run_env / "runs" / "digits" / "ext" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kimg"] == pytest.approx(0.096)
    runs = mlflow_runs(run_env)
    assert len(runs) == 1 and runs[0].data.tags["method"] == "dmd2" and runs[0].info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_again_with_clean_records(tiny_teacher: Path, run_env: Path) -> None:
    common = ["run", *tiny_overrides(tiny_teacher, **{"trainer.checkpoint_every_kimg": 0.064}), "run_name=k"]
    killed = sidbench(common, run_env, plugin_env("kill_at_iteration", SIDBENCH_TEST_KILL_AT="3"))
    assert killed.returncode == -signal.SIGKILL
    folder = run_env / "runs" / "digits" / "k"
    abandoned = json.loads((folder / "run.json").read_text())["mlflow_run_id"]
    killed_lines = (folder / "metrics.jsonl").read_text()
    assert not (folder / "checkpoint.pt").exists() and killed_lines
    again = sidbench(common, run_env)
    assert again.returncode == 0, again.stderr
    assert (folder / "metrics.jsonl.1").read_text() == killed_lines  # kept aside, not mixed in
    kimgs = [json.loads(line)["kimg"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert kimgs[0] == 0 and kimgs == sorted(kimgs)  # one attempt's lines, from the start
    status = {r.info.run_id: r.info.status for r in mlflow_runs(run_env)}
    assert status.pop(abandoned) == "KILLED" and list(status.values()) == ["FINISHED"]


@pytest.mark.slow
def test_a_second_run_in_a_held_folder_gets_one_line(tiny_teacher: Path, run_env: Path) -> None:
    args = ["run", *tiny_overrides(tiny_teacher, **{"trainer.kimg": 50}), "run_name=held", "tracking.enabled=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "sidbench.cli", *args], cwd=run_env, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_env / "runs" / "digits" / "held" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metrics.exists()
        second = sidbench(args, run_env)
        assert second.returncode == 1
        assert "runs/digits/held is in use by another sidbench run" in one_line(second.stderr)
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_ctrl_c_on_two_processes_checkpoints_says_one_line_and_exits_130(tiny_teacher: Path, run_env: Path, run_temp) -> None:  # noqa: ANN001
    # Ctrl-C reaches `sidbench run` (torchrun's launcher), which passes it to both workers
    args = ["run", *tiny_overrides(tiny_teacher, **{"trainer.kimg": 50, "trainer.checkpoint_every_kimg": 25}),
            "processes=2", "run_name=int", "tracking.enabled=false"]
    proc = sidbench(args, run_env, plugin_env("signal_at_iteration", SIDBENCH_TEST_SIGNAL_AT="3",
                                              SIDBENCH_TEST_SIGNAL_TO="launcher", **run_temp.env))
    assert proc.returncode == 130, proc.stderr
    assert run_temp.left() == []  # torchrun's log folder went with the run
    line = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and proc.stderr.count("stopped by SIGINT") == 1
    assert line.startswith("stopped by SIGINT at ") and "resume with resume=runs/digits/int" in line
    progress = torch.load(run_env / "runs" / "digits" / "int" / "checkpoint.pt", weights_only=True)["progress"]
    assert progress["iteration"] >= 4  # the iteration under way was finished and saved
    assert live("run_name=int") == []
    resumed = sidbench(["run", "resume=runs/digits/int", "trainer.kimg=0.096", "processes=1"], run_env)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_an_interrupt_before_training_says_there_is_nothing_to_resume(tiny_teacher: Path, run_env: Path) -> None:
    proc = sidbench(["run", *tiny_overrides(tiny_teacher), "run_name=early"], run_env,
                    plugin_env("signal_at_iteration", SIDBENCH_TEST_SIGNAL_AT="load"))
    assert proc.returncode == 130
    assert "nothing to resume" in one_line(proc.stderr)
    assert [r.info.status for r in mlflow_runs(run_env)] in ([], ["KILLED"])


@pytest.mark.slow
def test_killing_the_launcher_takes_its_workers_along(tiny_teacher: Path, run_env: Path, run_temp) -> None:  # noqa: ANN001
    args = [sys.executable, "-m", "sidbench.cli", "run", *tiny_overrides(tiny_teacher, **{"trainer.kimg": 50}),
            "processes=2", "run_name=orphans", "tracking.enabled=false"]
    # a SIGKILLed launcher cannot remove its torchrun log folder: keep it in the test's temp folder
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **run_temp.env}
    proc = subprocess.Popen(args, cwd=run_env, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_env / "runs" / "digits" / "orphans" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(live("run_name=orphans")) == 3  # the launcher and its two workers
    os.killpg(proc.pid, signal.SIGKILL)  # a bench's kill of its process group: the workers are not in it
    proc.wait()
    deadline = time.monotonic() + 10
    while live("run_name=orphans") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live("run_name=orphans") == []


@pytest.mark.slow
def test_a_store_that_fails_mid_run_is_one_line_and_keeps_the_checkpoint(tiny_teacher: Path, run_env: Path) -> None:
    proc = sidbench(["run", *tiny_overrides(tiny_teacher), "run_name=ro"], run_env,
                    plugin_env("store_fails_at_iteration", SIDBENCH_TEST_STORE_FAILS_AT="5"))
    assert proc.returncode == 1
    errors = [s for s in proc.stderr.splitlines() if s.startswith("error:")]  # the progress bar is on stderr too
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert "attempt to write a readonly database" in line
    assert "the last checkpoint is runs/digits/ro/checkpoint.pt: resume with resume=runs/digits/ro" in line
    assert "Traceback" not in proc.stderr
    assert (run_env / "runs" / "digits" / "ro" / "checkpoint.pt").is_file()
    assert yaml.safe_load((run_env / "runs" / "digits" / "ro" / "overrides.yaml").read_text())[-1] == "run_name=ro"
