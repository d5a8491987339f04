"""`sidbench tune`: a study of ordinary runs, its preset, its compute, resume, parallel trials on
SQLite, bad search spaces, and the leaderboard's provenance columns."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sidbench.cli import main
from sidbench.harness.bench import points_overrides
from sidbench.harness.tune import parse_args, target_count

# Tiny trials: the 8x8 random teacher, batch 8, 8 iterations (0.064 kimg), checkpoints every 2
# iterations, the bench's evaluation points (7 evaluations with the start).
TINY = ["trainer.batch=8", "trainer.tick_kimg=0.008", "trainer.checkpoint_every_kimg=0.016", "eval.num_samples=64",
        "eval.final_samples=64", "eval.batch_size=64", "device=cpu", "processes=1", "threads=1", "trainer.sample_grids=false"]
BUDGET = ["budget.unit=kimg", "budget.value=0.064"]


def tune_args(teacher: Path, *extra: str) -> list[str]:
    return ["tune", "method=sid", "seed=0", "startup=2", *BUDGET, f"dataset.teacher.path={teacher}", *TINY, *extra]


def store(run_env: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")


def study_runs(run_env: Path, study: str) -> list:
    client = store(run_env)
    exp = client.get_experiment_by_name("digits")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`sidbench.tune` = '{study}'") if exp else []


def load(run_env: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{run_env / 'optuna.db'}")


# -- before anything starts ------------------------------------------------------------------------
def test_tune_keys_space_changes_run_and_hydra_overrides_are_told_apart() -> None:
    settings, space, run, hydra = parse_args(["method=dmd2", "trials=4", "budget.unit=flops", "budget.value=2e12",
                                              "space.method.lr=log(1e-5,1e-3)", "space.method.ttur=null",
                                              "method.gan.enabled=true", "dataset.teacher.path=x", "hydra/launcher=joblib"])
    assert settings.method == "dmd2" and settings.trials == 4 and settings.budget.value == 2e12
    assert space["method.lr"].describe() == "log(1e-05,0.001)" and space["method.ttur"] is None
    assert run == ["method.gan.enabled=true", "dataset.teacher.path=x"] and hydra == ["hydra/launcher=joblib"]


@pytest.mark.parametrize("args,fragment", [
    (["space.method.alpah=uniform(0.5,1.5)"], "space.method.alpah: method=sid has no setting method.alpah; did you mean method.alpha?"),
    (["space.method.alpha=uniform(1.5,0.5)"], "space.method.alpha=uniform(1.5,0.5): the range is empty"),
    (["space.method.lr=log(0,1e-3)"], "a log range needs low > 0"),
    (["space.method.lr=logg(1,2)"], "write one of uniform(a,b)"),
    (["space.trainer.batch=uniform(8,64)"], "trainer.batch is an integer setting"),
    (["space.method.alpha=null", "space.method.lr=null", "space.trainer.ema_rampup=null"], "declares no search space"),
    (["objective=best"], "objective=best: must be one of area, final"),
    (["trials=0"], "trials=0: must be an integer >= 1"),
    (["total=0"], "total=0: must be an integer >= 1"),
    (["study=a/b"], "study='a/b' must be a single folder name"),
    (["trainer.seed=3"], "give the study's trainer.seed as method=, dataset= or seed="),
    (["hydra/launcher=submitit_slurm"], "cannot write sqlite:"),
])
def test_bad_tune_settings_are_one_line_before_anything_starts(run_env: Path, capsys: pytest.CaptureFixture[str],
                                                               args: list[str], fragment: str) -> None:
    assert main(["tune", "budget.unit=kimg", "budget.value=1", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in " ".join(err.split()) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (run_env / "runs" / "tune").exists() and not (run_env / "runs" / "optuna.db").exists()


def test_the_same_command_adds_trials_and_a_study_stopped_short_first_reaches_its_target() -> None:
    study = optuna.create_study()
    p = SimpleNamespace(trials=3)
    assert target_count(study, p) == 3  # a new study: this command's trials
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    assert target_count(study, p) == 3  # stopped after 2 of 3: the same command finishes those 3
    study.tell(study.ask(), 1.0)
    assert target_count(study, p) == 6  # finished: the same command adds 3 more


def test_a_total_ends_the_study_at_that_many_trials_however_often_the_command_runs() -> None:
    """`total=N` (the committed study's scripts): run again after the study finished, nothing more runs."""
    study = optuna.create_study()
    p = SimpleNamespace(trials=12, total=3)
    assert target_count(study, p) == 3
    study.tell(study.ask(), 1.0)
    assert target_count(study, p) == 3  # stopped after 1 of 3: resumes to 3
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    assert target_count(study, p) == 3  # finished: adds none
    assert target_count(study, SimpleNamespace(trials=2, total=None)) == 5  # without total, the command adds its trials
    assert target_count(study, SimpleNamespace(trials=2, total=2)) == 3  # never below the 3 done


# -- studies ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_three_trial_study_writes_a_preset_whose_run_reproduces_the_best_trial_and_counts_its_compute(
        tiny_teacher: Path, run_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(tune_args(tiny_teacher, "trials=3", "study=s3")) == 0
    out = capsys.readouterr().err
    assert "study s3" in out and "best settings" in out
    study = load(run_env, "s3")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # three different draws
    best_path = run_env / "runs" / "tune" / "s3" / "best.yaml"
    text = best_path.read_text()
    best = yaml.safe_load(text)
    assert text.startswith("# @package _global_") and "trials: 3 (3 complete" in text
    assert best["settings_source"] == "tuned:s3" and best["defaults"] == ["sid_digits", "_self_"]
    assert set(best["method"]) == {"alpha", "lr"} and set(best["trainer"]) == {"ema_rampup"}

    # the study's tuning FLOPs are the sum of its runs' counted compute, as MLflow holds it
    runs = study_runs(run_env, "s3")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert math.isclose(best["tuning_flops"], sum(r.data.metrics["compute/flops"] for r in runs), rel_tol=1e-12)
    assert f"tuning FLOPs {best['tuning_flops']:.6g}" in text

    # a run that takes the preset reproduces the best trial: same settings hash, same final metric
    b = study.best_trial
    budget = ["trainer.budget.unit=kimg", "trainer.budget.value=0.064", "trainer.kimg=null",
              *points_overrides(OmegaConf.create({"at_fraction": [0.25, 0.5, 0.75], "log_count": 3, "log_first": 0.02}))]
    assert main(["run", f"preset_file={best_path}", "trainer.seed=0", *budget, f"dataset.teacher.path={tiny_teacher}", *TINY,
                 "run_name=repro"]) == 0
    lines = [json.loads(x) for x in (run_env / "runs" / "digits" / "repro" / "metrics.jsonl").read_text().splitlines()]
    final = [x["eval/fd_pixel"] for x in lines if "eval/fd_pixel" in x][-1]
    assert final == pytest.approx(b.user_attrs["final"], rel=1e-6)
    (repro,) = [r for r in store(run_env).search_runs([runs[0].info.experiment_id]) if r.info.run_name == "repro"]
    (trial_run,) = [r for r in runs if r.info.run_id == b.user_attrs["mlflow_run_id"]]
    assert repro.data.tags["sidbench.settings"] == trial_run.data.tags["sidbench.settings"]
    assert repro.data.params["settings_source"] == "tuned:s3"

    # the leaderboard: the tuned run is a row with its source and the study's compute; trials are not rows
    assert main(["leaderboard", "--out", str(run_env / "board")]) == 0
    board = pd.read_csv(run_env / "board" / "leaderboard.csv")
    assert list(board["settings_source"]) == ["tuned:s3"] and board["tuning_flops"][0] == pytest.approx(best["tuning_flops"])


@pytest.mark.slow
def test_a_study_killed_mid_trial_resumes_and_ends_with_its_trials(
        tiny_teacher: Path, run_env: Path, kill_env, monkeypatch: pytest.MonkeyPatch) -> None:
    args = tune_args(tiny_teacher, "trials=2", "study=k")
    # the registries look for plugins once per process: here, before the test plugin is named
    # (only the runs, in their own processes, load it)
    assert main([*args, "--dry-run"]) == 0
    for k, v in kill_env(5).items():  # every run SIGKILLs itself at iteration 5 (a checkpoint at 4)
        monkeypatch.setenv(k, v)
    assert main(args) == 1
    study = load(run_env, "k")
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    (killed,) = study_runs(run_env, "k")
    monkeypatch.delenv("SIDBENCH_TEST_KILL_AT")
    monkeypatch.setenv("SIDBENCH_PLUGINS", "")
    assert main(args) == 0
    study = load(run_env, "k")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # N trials, the killed one among them
    report = json.loads((run_env / "runs" / "tune" / "k" / "trials" / "t0000.json").read_text())
    assert report["resumed"] is True
    runs = {r.info.run_id: r for r in study_runs(run_env, "k")}
    assert len(runs) == 2 and killed.info.run_id in runs  # the killed trial continued its own MLflow run
    assert runs[killed.info.run_id].data.metrics["compute/passes"] == 11 * 64  # as uninterrupted (SiD: 11 passes/image)


@pytest.mark.slow
def test_two_parallel_trials_on_sqlite_lose_no_metric_line(tiny_teacher: Path, run_env: Path) -> None:
    args = tune_args(tiny_teacher, "trials=2", "parallel=2", "study=par", "hydra/launcher=joblib")
    assert main(args) == 0
    study = load(run_env, "par")
    runs = study_runs(run_env, "par")
    assert len(runs) == 2 and [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    client = store(run_env)
    for r in runs:
        lines = [json.loads(x) for x in (Path(r.data.tags["sidbench.run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        for key in sorted({k for line in lines for k in line}):
            local = sorted((round(line["kimg"] * 1000), line[key]) for line in lines if key in line)
            logged = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
            assert len(local) == len(logged), key
            for (s1, v1), (s2, v2) in zip(local, logged):
                assert s1 == s2 and math.isclose(v1, v2, rel_tol=1e-9, abs_tol=1e-12), key
        (t,) = [t for t in study.trials if t.user_attrs["mlflow_run_id"] == r.info.run_id]
        evals = [line["eval/fd_pixel"] for line in lines if "eval/fd_pixel" in line]
        assert [t.intermediate_values[i] for i in sorted(t.intermediate_values)] == evals  # the study's curve, whole
    logs = (run_env / "runs" / "tune" / "par" / "logs").glob("*.log")
    assert not any("database is locked" in p.read_text() for p in logs)


# -- the preset file, and the leaderboard's provenance ---------------------------------------------
def write_preset(path: Path, defaults: list[str] | None = None, **extra: object) -> Path:
    body = {**({"defaults": defaults} if defaults is not None else {}), "settings_source": "tuned:x", "tuning_flops": 3e12,
            "method": {"alpha": 0.9, "lr": 2e-4}, "trainer": {"ema_rampup": 0.3}, **extra}
    path.write_text("# @package _global_\n" + yaml.safe_dump(body))
    return path


def test_a_preset_file_comes_after_the_dataset_preset_and_before_the_command_line(tmp_path: Path) -> None:
    from sidbench.config import compose

    for f in (write_preset(tmp_path / "a.yaml", ["sid_digits", "_self_"]), write_preset(tmp_path / "b.yaml")):
        cfg = compose([f"preset_file={f}"])
        assert (cfg.method.alpha, cfg.method.lr, cfg.trainer.ema_rampup) == (0.9, 2e-4, 0.3)
        assert cfg.trainer.batch == 256 and cfg.method.dropout == 0.0  # the digits preset's, kept
        assert cfg.settings_source == "tuned:x" and cfg.tuning_flops == 3e12 and cfg.preset_file == str(f)
    cfg = compose([f"preset_file={f}", "trainer.ema_rampup=0.1"])
    assert cfg.trainer.ema_rampup == 0.1 and cfg.settings_source == "tuned:x"
    cfg = compose([f"preset_file={f}", "method.lr=1e-3"])  # a method setting changed by hand: no longer the tuned one
    assert cfg.method.lr == 1e-3 and cfg.settings_source == "derived"
    # the source is a label, not a setting: the hash of what the run computes ignores it
    from sidbench.tracking import settings_hash

    assert settings_hash(compose([f"preset_file={f}"])) == settings_hash(
        compose(["method.alpha=0.9", "method.lr=2e-4", "trainer.ema_rampup=0.3"]))


@pytest.mark.parametrize("overrides,fragment", [
    (["method=dmd2"], "builds on preset sid_digits, not this run's dmd2_digits"),
    (["preset=sid_cifar10"], "cannot both be given"),
])
def test_a_preset_file_for_another_run_is_one_line(tmp_path: Path, overrides: list[str], fragment: str) -> None:
    from sidbench.config import ConfigError, compose

    f = write_preset(tmp_path / "a.yaml", ["sid_digits", "_self_"])
    with pytest.raises(ConfigError, match=fragment):
        compose([f"preset_file={f}", *overrides])
    with pytest.raises(ConfigError, match="cannot read it"):
        compose([f"preset_file={tmp_path / 'missing.yaml'}"])


@pytest.mark.parametrize("method,settings,expected", [
    ("sid", {"alpah": 1.1}, "unknown setting 'method.alpah' .*method=sid declares no such setting; did you mean method.alpha\\?"),
    ("dmd", {"lr_gen": 1e-4}, "unknown setting 'method.lr_gen' .*did you mean method.lr_generator\\?"),
    # inside a declared group too, not only at the top
    ("dmd2", {"gan": {"generator_wieght": 0.1}}, "unknown setting 'method.gan.generator_wieght' .*method.gan.generator_weight"),
])
def test_a_method_setting_no_settings_class_declares_is_refused_in_one_line(
        tmp_path: Path, method: str, settings: dict, expected: str) -> None:
    """A preset merges what Hydra would refuse on the command line: a misspelt or renamed key in a
    preset file would otherwise change nothing, and the run would go on as if it had been set."""
    from sidbench.config import ConfigError, compose
    from sidbench.tracking import flatten

    f = write_preset(tmp_path / "a.yaml", [f"{method}_digits", "_self_"], method=settings)
    with pytest.raises(ConfigError, match=expected) as info:
        compose([f"method={method}", f"preset_file={f}"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=expected.split(" .*")[0]):  # the same key given with +
        compose([f"method={method}", "+" + next(f"{k}={v}" for k, v in flatten(settings, "method.").items())])


@pytest.mark.parametrize("method,dataset,source", [
    ("sid", "cifar10", "published"), ("sid", "digits", "derived"), ("dmd2", "imagenet64", "published"),
    ("dmd", "imagenet64", "derived"), ("consistency", "cifar10", "published"), ("progressive", "digits", "derived"),
])
def test_presets_say_where_their_settings_come_from(method: str, dataset: str, source: str) -> None:
    from sidbench.config import compose

    assert compose([f"method={method}", f"dataset={dataset}"]).settings_source == source


def test_a_bench_cell_takes_a_tuned_preset(tmp_path: Path, tiny_teacher: Path, run_env: Path) -> None:
    from sidbench.config import compose
    from sidbench.harness.bench import parse_args as bench_args
    from sidbench.harness.bench import plan

    f = write_preset(tmp_path / "best.yaml", ["sid_digits", "_self_"])
    settings, run, _ = bench_args(["methods=[sid,dmd2]", f"overrides.sid=[preset_file={f}]", *BUDGET,
                                   f"dataset.teacher.path={tiny_teacher}", *TINY])
    cells = {c.method: compose(list(c.overrides)) for c in plan(settings, run).cells}
    assert cells["sid"].settings_source == "tuned:x" and cells["sid"].method.alpha == 0.9
    assert cells["dmd2"].settings_source == "derived"


def test_rows_of_one_method_with_different_sources_are_side_by_side() -> None:
    from sidbench.harness.leaderboard import CURVE_COLUMNS, aggregate, run_summary

    def run(run_id: str, source: str, flops: float, seed: int) -> dict:
        info = {"run_id": run_id, "dataset": "digits", "method": "sid", "settings": "abc", "seed": seed, "metric": "fd_pixel",
                "nfe": "1", "teacher": "t", "teacher_metric": 0.1, "teacher_metric_source": "measured", "code_version": "x",
                "budget": "flops 4e+12", "bench": "b", "stopped_by": None, "run_dir": "", "settings_source": source,
                "tuning_flops": flops}
        return run_summary(info, pd.DataFrame(columns=CURVE_COLUMNS))

    board = aggregate(pd.DataFrame([run("a", "derived", 0.0, 0), run("b", "derived", 0.0, 1), run("c", "tuned:s", 2e13, 0)]))
    assert sorted(zip(board["settings_source"], board["n_seeds"], board["tuning_flops"])) == [
        ("derived", 2, 0.0), ("tuned:s", 1, 2e13)]
    assert list(board.columns[:6]) == ["source", "dataset", "method", "settings", "settings_source", "tuning_flops"]


# -- what a trial reads from its run ----------------------------------------------------------------
def lines_of(values: list[float], flops_per_line: float = 1e9) -> list[dict]:
    return [{"kimg": i * 0.01, "budget/fraction": i / max(len(values) - 1, 1), "eval/fd_pixel": v,
             "compute/flops": i * flops_per_line} for i, v in enumerate(values)]


def test_the_median_pruner_stops_a_trial_worse_than_the_others_at_an_evaluation_point() -> None:
    from sidbench.harness.trial import report_points

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    good = study.ask()
    assert not report_points(good, lines_of([3.0, 1.0, 0.5]), "fd_pixel", set())
    study.tell(good, 0.5)
    bad, reported = study.ask(), set()
    assert not report_points(bad, lines_of([3.0]), "fd_pixel", reported)  # the warm-up step: never pruned
    assert report_points(bad, lines_of([3.0, 2.0]), "fd_pixel", reported)  # 2.0 > the median 1.0 at step 1
    assert reported == {0, 1} and bad.storage.get_trial(bad._trial_id).intermediate_values == {0: 3.0, 1: 2.0}


def test_the_objectives_and_the_counted_compute(tmp_path: Path) -> None:
    import torch

    from sidbench.harness.leaderboard import log_metric_area
    from sidbench.harness.objective import counted_flops, evaluation_points, objective_value

    lines = lines_of([4.0, 2.0, 1.0])
    lines.append({**lines[-1], "eval/fd_pixel_final": 0.9})
    assert objective_value(lines, "fd_pixel", "final") == 0.9
    # (ln 4 + ln 2) / 2 * 0.5 + (ln 2 + ln 1) / 2 * 0.5: the leaderboard's log_area
    assert objective_value(lines, "fd_pixel", "area") == pytest.approx((math.log(4) + 2 * math.log(2)) / 4)
    assert objective_value(lines, "fd_pixel", "area") == log_metric_area(evaluation_points(lines, "fd_pixel"))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert counted_flops(tmp_path) == 2e9
    torch.save({"progress": {"flops": 2.5e9}}, tmp_path / "checkpoint.pt")  # a run stopped after its last line
    assert counted_flops(tmp_path) == 2.5e9
