"""`sidbench bench`: the matrix through Hydra's launchers, equal budgets, skip, resume and failures."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sidbench.cli import main
from sidbench.config import ConfigError
from sidbench.harness.bench import budget_overrides, parse_args, plan

# Tiny cells: 8x8 random teacher, batch 8, a line per iteration (tick = one batch), checkpoints
# every 2 iterations; the bench adds its budget and evaluation points.
def cell_overrides(teacher: Path) -> list[str]:
    return [f"dataset.teacher.path={teacher}", "trainer.batch=8", "trainer.tick_kimg=0.008",
            "trainer.checkpoint_every_kimg=0.016", "eval.num_samples=64", "eval.final_samples=64", "eval.batch_size=64",
            "device=cpu", "processes=1", "threads=1", "trainer.sample_grids=false"]


def bench_runs(run_env: Path, bench: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`sidbench.bench` = '{bench}'") if exp else []


def history(run_env: Path, run_id: str, key: str) -> list:
    return MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}").get_metric_history(run_id, key)


# -- the command line, before anything runs -----------------------------------------------------
def test_bench_keys_run_overrides_and_hydra_overrides_are_told_apart() -> None:
    settings, run, hydra = parse_args(["methods=[sid,dmd2]", "seeds=3", "budget.unit=flops", "budget.value=2e12",
                                       "overrides.dmd2=[method.gan=true,method.lr=1e-5]", "trainer.batch=64",
                                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert list(settings.methods) == ["sid", "dmd2"] and settings.seeds == 3
    assert list(settings.overrides.dmd2) == ["method.gan=true", "method.lr=1e-5"]
    assert run == ["trainer.batch=64"] and hydra == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert budget_overrides(settings.budget) == ["trainer.budget.unit=flops", "trainer.budget.value=2000000000000.0"]


def test_cells_carry_the_budget_the_evaluation_points_and_per_method_overrides(tiny_teacher: Path, run_env: Path) -> None:
    settings, run, _ = parse_args(["methods=[sid,dmd2]", "seeds=[0,7]", "budget.unit=passes", "budget.value=1000",
                                   "overrides.dmd2=[method.lr=3e-6]", "overrides.digits=[eval.num_samples=96]",
                                   *cell_overrides(tiny_teacher)])
    bench = plan(settings, run)
    assert bench.id == "digits-passes1000"
    assert [c.key for c in bench.cells] == ["sid-digits-s0", "dmd2-digits-s0", "sid-digits-s7", "dmd2-digits-s7"]
    from sidbench.config import compose

    cfgs = {c.key: compose(list(c.overrides)) for c in bench.cells}
    for cfg in cfgs.values():
        assert cfg.trainer.budget.unit == "passes" and cfg.trainer.budget.value == 1000 and cfg.trainer.kimg is None
        assert list(cfg.trainer.eval_at_fraction) == [0.25, 0.5, 0.75] and cfg.trainer.eval_every_kimg is None
        assert cfg.tracking.tags.sidbench.bench == "digits-passes1000"
    assert cfgs["dmd2-digits-s0"].method.lr == 3e-6 and cfgs["sid-digits-s0"].method.lr != 3e-6
    assert cfgs["sid-digits-s7"].trainer.seed == 7
    assert {cfg.eval.num_samples for cfg in cfgs.values()} == {96}  # a dataset's overrides reach all its cells
    # one hash per cell; the same settings with another seed share sidbench.settings, not the cell hash
    assert len({c.config_hash for c in bench.cells}) == 4


def test_without_a_budget_every_cell_gets_its_cards_even_where_a_preset_sets_its_own(run_env: Path) -> None:
    # SiD's digits preset is the main job and runs longer (4.4e13 FLOPs) than the card's budget;
    # a bench compares at the card's budget, which every cell gets explicitly
    from sidbench.config import compose

    assert compose(["method=sid", "dataset=digits"]).trainer.budget.value == 4.4e13
    card = compose(["dataset=digits"]).dataset.budget
    settings, run, _ = parse_args(["methods=[sid,dmd2]", "datasets=[digits,digits-cond]"])
    bench = plan(settings, run)
    assert bench.id == "digits+digits-cond-card"
    budgets = {c.key: compose(list(c.overrides)).trainer.budget for c in bench.cells}
    assert budgets["sid-digits-s0"] == budgets["dmd2-digits-s0"] == card
    cond = compose(["dataset=digits-cond"]).dataset.budget
    assert cond != card and budgets["sid-digits-cond-s0"] == budgets["dmd2-digits-cond-s0"] == cond


@pytest.mark.parametrize("args,fragment", [
    (["seeds=0"], "seeds=0: give a count >= 1"),
    (["budget.unit=flops"], "give both"),
    (["methods=[sid]", "overrides.dmd=[method.lr=1]"], "'dmd' is not among the bench's methods (sid) or datasets (digits)"),
    (["methods=[sid]", "overrides.sid=[lr]"], "each element must be key=value"),
    (["methods=[nosuch]"], "unknown method 'nosuch'"),
    (["methods=[sid]", "trainer.batch=-4"], "cell sid-digits-s0: trainer.batch=-4: must be an integer >= 1"),
    (["methods=[sid,sida]", "datasets=[cifar10]"], "cell sida-cifar10-s0: method=sida trains on real images"),
    (["seedz=3"], "unknown setting 'seedz'"),
    (["methods=[sid]", "hydra/launcher=submitit_slurm"], "cannot write sqlite:"),
])
def test_bad_bench_settings_are_one_line_before_anything_starts(run_env: Path, capsys: pytest.CaptureFixture[str],
                                                                args: list[str], fragment: str) -> None:
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in " ".join(err.split()) and "Traceback" not in err
    assert not (run_env / "runs" / "bench").exists()  # nothing was planned or started


# -- running the matrix ----------------------------------------------------------------------------
@pytest.mark.slow
def test_every_method_gets_the_same_budget_finished_cells_are_skipped_and_a_failing_cell_is_reported(
        tiny_teacher: Path, run_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = run_env / "broken.safetensors"
    broken.write_bytes(tiny_teacher.read_bytes()[:1000])  # a truncated teacher: loads fail at run time
    args = ["bench", "methods=[sid,dmd2,dmd]", "id=t", "budget.unit=passes", "budget.value=700",
            "overrides.dmd=[dataset.teacher.path=" + str(broken) + "]", *cell_overrides(tiny_teacher)]
    assert main(args) == 1
    out = " ".join(capsys.readouterr().err.split())
    assert "1 of 3 cells failed" in out and "dmd-digits-s0" in out
    log = run_env / "runs" / "bench" / "t" / "logs" / "dmd-digits-s0.log"
    assert str(broken) in log.read_text()  # the failing run's own one-line error is in its log

    runs = {r.data.tags["method"]: r for r in bench_runs(run_env, "t")}
    assert set(runs) == {"sid", "dmd2"} and all(r.info.status == "FINISHED" for r in runs.values())
    per_iteration = {}
    for method, r in runs.items():
        passes = history(run_env, r.info.run_id, "compute/passes")
        last, before = passes[-1].value, passes[-2].value  # a line per iteration: the last one's cost
        per_iteration[method] = last - before
        assert 700 <= last < 700 + (last - before), (method, last, last - before)
    assert per_iteration["sid"] != per_iteration["dmd2"]  # methods of different cost per iteration

    # again: the finished cells are not rerun (their logs get no new command line), the failed one is
    sid_log = run_env / "runs" / "bench" / "t" / "logs" / "sid-digits-s0.log"
    lines_before = sid_log.read_text().count("# ")
    assert main(args) == 1
    out = " ".join(capsys.readouterr().err.split())
    assert "2 finished, 0 to resume, 1 new" in out
    assert sid_log.read_text().count("# ") == lines_before
    assert log.read_text().count("sidbench run ") == 2
    assert len(bench_runs(run_env, "t")) == 2


@pytest.mark.slow
def test_a_killed_cell_resumes_from_its_checkpoint_into_the_same_mlflow_run(
        tiny_teacher: Path, run_env: Path, kill_env, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "methods=[sid]", "id=k", "budget.unit=kimg", "budget.value=0.064", *cell_overrides(tiny_teacher)]
    # the registries look for plugins once per process: here, before the test plugin is named (only
    # the cells' runs, in their own processes, load it; alone, this test would otherwise not find it)
    assert main([*args, "--dry-run"]) == 0
    for k, v in kill_env(5).items():  # the cell's run SIGKILLs itself at iteration 5 (checkpoint at 4)
        monkeypatch.setenv(k, v)
    assert main(args) == 1
    report = run_env / "runs" / "bench" / "k" / "cells" / "sid-digits-s0.json"
    assert json.loads(report.read_text())["returncode"] == -9
    (killed,) = bench_runs(run_env, "k")
    assert killed.info.status == "RUNNING"
    monkeypatch.delenv("SIDBENCH_TEST_KILL_AT")
    monkeypatch.setenv("SIDBENCH_PLUGINS", "")
    assert main(args) == 0
    out = " ".join(capsys.readouterr().err.split())
    assert "1 to resume" in out and json.loads(report.read_text())["resumed"] is True
    (run,) = bench_runs(run_env, "k")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    # 8 iterations in all, as uninterrupted: 11 passes per image (SiD), 64 images
    assert run.data.metrics["compute/passes"] == 11 * 64
    steps = [m.step for m in history(run_env, run.info.run_id, "compute/passes")]
    assert steps == sorted(steps) and steps[-1] == 64


def _same_lines_in_mlflow(run_env: Path, run) -> None:  # noqa: ANN001 - an MLflow Run
    lines = [json.loads(x) for x in (Path(run.data.tags["sidbench.run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    for key in sorted({k for line in lines for k in line}):
        local = [(round(line["kimg"] * 1000), line[key]) for line in lines if key in line]
        logged = [(m.step, m.value) for m in history(run_env, run.info.run_id, key)]
        assert len(logged) == len(local), key
        for (s1, v1), (s2, v2) in zip(sorted(local), sorted(logged)):
            assert s1 == s2 and math.isclose(v1, v2, rel_tol=1e-9, abs_tol=1e-12), key


@pytest.mark.slow
def test_parallel_cells_on_the_default_sqlite_store_lose_nothing(tiny_teacher: Path, run_env: Path) -> None:
    args = ["bench", "methods=[sid,dmd2]", "seeds=2", "id=par", "budget.unit=kimg", "budget.value=0.064",
            *cell_overrides(tiny_teacher), "trainer.sample_grids=true", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]
    assert main(args) == 0
    runs = bench_runs(run_env, "par")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    for r in runs:
        _same_lines_in_mlflow(run_env, r)
        assert {"method", "seed", "sidbench.config_hash", "sidbench.settings", "nfe", "headline"} <= set(r.data.tags)
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "generator.safetensors", "samples"} <= artifacts
        assert len(client.list_artifacts(r.info.run_id, "samples")) == len(history(run_env, r.info.run_id, "eval/fd_pixel"))
    logs = (run_env / "runs" / "bench" / "par" / "logs").glob("*.log")
    assert not any("database is locked" in p.read_text() for p in logs)

    # the bench's leaderboard: one row per method, both seeds in it
    import pandas as pd

    assert main(["leaderboard", "--bench", "par", "--out", str(run_env / "results")]) == 0
    board = pd.read_csv(run_env / "results" / "leaderboard.csv")
    assert sorted(board["method"]) == ["dmd2", "sid"] and list(board["n_seeds"]) == [2, 2]
    assert (run_env / "results" / "digits-fd_pixel-curves.png").stat().st_size > 0


@pytest.mark.slow
def test_the_submitit_launcher_runs_a_two_cell_matrix(tiny_teacher: Path, run_env: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is the `slurm` extra")
    args = ["bench", "methods=[sid]", "seeds=2", "id=sub", "budget.unit=kimg", "budget.value=0.032",
            *cell_overrides(tiny_teacher), "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    assert main(args) == 0
    runs = bench_runs(run_env, "sub")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"] and all(r.info.status == "FINISHED" for r in runs)
    assert list((run_env / "runs" / "bench" / "sub" / "hydra").glob("*/.submitit"))  # it went through submitit


def test_bench_yaml_documents_every_key_it_accepts() -> None:
    from importlib.resources import files

    keys = set(OmegaConf.load(str(files("sidbench.conf") / "bench.yaml")).keys())
    assert keys == {"methods", "datasets", "seeds", "id", "budget", "points", "overrides"}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_args(["methods"])


@pytest.mark.parametrize("method", ["sid", "dmd", "dmd2", "progressive", "consistency"])
def test_seeds_of_one_setting_share_its_hash_and_differ_in_the_cell_hash(method: str) -> None:
    # progressive and consistency derive method.teacher_sample_seed from trainer.seed: a seed too
    from sidbench.config import compose
    from sidbench.tracking import settings_hash

    cfgs = [compose([f"method={method}", f"trainer.seed={s}"]) for s in (0, 1)]
    assert settings_hash(cfgs[0]) == settings_hash(cfgs[1])
    assert settings_hash(cfgs[0], with_seed=True) != settings_hash(cfgs[1], with_seed=True)
    other = compose([f"method={method}", "trainer.seed=0", "trainer.batch=64"])
    assert settings_hash(other) != settings_hash(cfgs[0])
