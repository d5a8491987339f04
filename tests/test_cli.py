"""The command line: exit codes, one-line errors, dry runs, list, an end-to-end run with MLflow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidbench.cli import main
from sidbench.run import NETWORKS_HEADER
from sidbench.testing.tiny import tiny_overrides


@pytest.mark.parametrize("args", [["run", "method=nope"], ["run", "dataset=nope"]])
def test_unknown_names_exit_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "choose one of" in err


@pytest.mark.parametrize("dataset", ["cifar10", "cifar10-cond", "imagenet64", "ffhq64", "afhqv2-64", "digits", "digits-cond"])
def test_dry_run_prints_config_and_constructors_without_loading(dataset: str, capsys: pytest.CaptureFixture[str],
                                                                 run_env: Path) -> None:
    assert main(["run", f"dataset={dataset}", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    config_part, rest = out.split(NETWORKS_HEADER + "\n")
    nets, budget = rest.strip().split("\n")
    changes = json.loads(nets)
    assert set(changes) == {"teacher", "generator", "fake_score"} and changes["teacher"] == {}
    assert config_part.count("model_type:") == 1  # the constructor is printed once
    assert f"name: {dataset}" in config_part and budget.startswith("# budget: ")
    assert not (run_env / "runs").exists() and not (run_env / "cache").exists()


def test_dry_run_asks_the_method_which_networks_it_builds(capsys: pytest.CaptureFixture[str], run_env: Path) -> None:
    import sidbench.testing.staged  # noqa: F401  (registers "staged-toy", whose plan has no fake score)

    def changes() -> dict:
        return json.loads(capsys.readouterr().out.split(NETWORKS_HEADER + "\n")[1].split("\n")[0])

    # SiD's students take the preset's dropout (CIFAR-10: 0.13, the teacher's own: no change)
    assert main(["run", "dataset=cifar10", "dry_run=true"]) == 0
    assert changes() == {"teacher": {}, "generator": {}, "fake_score": {}}
    assert main(["run", "dataset=ffhq64", "method.dropout=0.2", "dry_run=true"]) == 0
    assert changes() == {"teacher": {}, "generator": {"dropout": 0.2}, "fake_score": {"dropout": 0.2}}
    assert main(["run", "method=staged-toy", "dry_run=true"]) == 0
    assert set(changes()) == {"teacher", "generator"}
    assert main(["run", "dataset=cifar10", "trainer.kimg=100", "dry_run=true"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("# budget: 100 kimg")


def test_list_shows_methods_and_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("sid", "digits", "ffhq64", "imagenet64", "fd_pixel"):
        assert name in out


def test_help_of_each_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], ["run", "--help"], ["list", "--help"], ["teacher", "train", "--help"],
                 ["teacher", "measure", "--help"], ["teacher", "sample", "--help"], ["fid", "--help"], ["stats", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
    assert "dry_run" in capsys.readouterr().out


def test_missing_teacher_file_is_one_line(run_env: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # the digits default runs as 2 processes under torchrun: refused before it starts, exactly one
    # line, exit code 2 (a bad setting: sidbench/schema.py checks that a given teacher.path exists)
    assert main(["run", "dataset.teacher.path=/nonexistent/teacher.pkl", "device=cpu"]) == 2
    err = capfd.readouterr().err.strip()
    assert "/nonexistent/teacher.pkl" in err and err.count("\n") == 0


def test_run_end_to_end_logs_to_mlflow(tiny_teacher: Path, run_env: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert main(["run", *tiny_overrides(tiny_teacher), "run_name=e2e"]) == 0
    run_dir = run_env / "runs" / "digits" / "e2e"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "generator.safetensors").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "sid" and run.data.tags["dataset"] == "digits" and run.data.tags["seed"] == "0"
    assert "code_version" in run.data.tags and run.data.params["method.alpha"] == "1.2"
    for key in ("loss/fake_score", "loss/generator", "eval/fd_pixel", "teacher/fd_pixel", "compute/passes", "compute/teacher_passes", "compute/flops", "seconds", "kimg"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(run.info.run_id, "eval/fd_pixel")
    assert len(history) >= 2  # at the start and at least once more
    # 8 iterations x batch 8 x 11 passes per image (counted: see tests/methods/test_sid_method.py)
    assert run.data.metrics["compute/passes"] == 11 * 64 and run.data.metrics["compute/teacher_passes"] == 2 * 64
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples", "generator.safetensors"} <= artifacts
    # the same lines, readable without MLflow, beside the checkpoint
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    local = [(round(d["kimg"] * 1000), d["eval/fd_pixel"]) for d in lines if "eval/fd_pixel" in d]
    assert local == [(int(m.step), pytest.approx(m.value)) for m in history]
    assert lines[-1]["compute/passes"] == 11 * 64 and lines[-1]["compute/flops"] > 0


def test_offline_teacher_download_fails_at_once_with_one_line(run_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a closed port on this machine stands in for an unreachable address
    url = "http://127.0.0.1:9/edm-ffhq-64x64-uncond-vp.pkl"
    assert main(["run", "dataset=ffhq64", f"dataset.teacher.url={url}", "device=cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "edm-ffhq-64x64-uncond-vp.pkl" in err and url in err and str(run_env / "cache") in err
    assert not list((run_env / "runs").glob("ffhq64/*"))  # no run folder left behind


def test_conditional_digits_run_end_to_end(tiny_cond_teacher: Path, run_env: Path) -> None:
    assert main(["run", "dataset=digits-cond", *tiny_overrides(tiny_cond_teacher), "run_name=cond"]) == 0
    assert (run_env / "runs" / "digits-cond" / "cond" / "generator.safetensors").is_file()


def test_processes_launch_only_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidbench.distributed import launch_processes
    from sidbench.config import compose

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_processes(compose(["device=cpu"])) == 2  # the digits preset uses both cores
    assert launch_processes(compose(["device=cpu", "processes=1"])) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # already inside torchrun: run, don't launch again
    assert launch_processes(compose(["device=cpu"])) == 1


def test_the_last_line_compares_the_metric_with_the_teacher() -> None:
    from sidbench.run import RunResult
    from sidbench.trainer.progress import Progress

    measured = RunResult(Path("r"), Progress(), {"eval/fd_pixel": 0.186, "eval/seconds": 3.0}, None, teacher={"fd_pixel": 0.146})
    assert measured.summary() == "eval/fd_pixel 0.186 = 1.27x the teacher's 0.146"
    published = RunResult(Path("r"), Progress(), {"eval/fid_final": 2.2}, None, teacher={"fid_published": 1.97})
    assert published.summary() == "eval/fid_final 2.2 = 1.12x the teacher's published 1.97"
    assert RunResult(Path("r"), Progress(), {"eval/fid": 3.0}, None).summary() == "eval/fid 3"
    # An end scored on more images than the evaluations is divided by the teacher at that size only.
    both = {"fd_pixel": 0.146, "fd_pixel_final": 0.0928}
    assert RunResult(Path("r"), Progress(), {"eval/fd_pixel_final": 0.0997}, None, teacher=both).summary() == \
        "eval/fd_pixel_final 0.0997 = 1.07x the teacher's 0.0928"
    assert RunResult(Path("r"), Progress(), {"eval/fd_pixel_final": 0.0997}, None,
                     teacher={"fd_pixel": 0.146}).summary() == "eval/fd_pixel_final 0.0997"
