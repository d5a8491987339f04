"""The README's "Adding a metric" and "Adding a dataset" examples run as written: the metric's class
loaded through $SIDBENCH_PLUGINS evaluates a run and scores the teacher, and the dataset card in a
folder named by $SIDBENCH_CONFIG_PATH trains a run, each through the README's own commands (with
the tiny overrides of `sidbench.testing.tiny` appended, so that each takes seconds)."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidbench.testing.tiny import tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    return README.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """The `sidbench ...` lines of a section's bash block: (environment variables, arguments)."""
    (block,) = blocks(text, "bash")
    out = []
    for line in filter(None, (ln.strip() for ln in block.splitlines())):
        words = shlex.split(line, comments=True)
        at = words.index("sidbench")
        out.append((dict(w.split("=", 1) for w in words[:at]), words[at + 1:]))
    return out


def sidbench(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    # as the README says: run in the folder that holds the plugin and the configs, nothing else on the path
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIDBENCH_PLUGINS", "SIDBENCH_CONFIG_PATH")}
    done = subprocess.run([sys.executable, "-m", "sidbench.cli", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_readme_metric_evaluates_a_run_and_scores_the_teacher(tiny_teacher: Path, run_env: Path) -> None:
    text = section("Adding a metric")
    (code,) = blocks(text, "python")
    (run_env / "my_metric.py").write_text(code)
    (run_env_, run_args), (fid_env, fid_args) = commands(text)
    assert run_args[:2] == ["run", "eval.metric=mean_gap"] and fid_args[:2] == ["fid", "teacher"]

    sidbench([*run_args, *tiny_overrides(tiny_teacher), "run_name=metric"], run_env_, run_env)
    lines = [json.loads(ln) for ln in (run_env / "runs" / "digits" / "metric" / "metrics.jsonl").read_text().splitlines()]
    values = [ln["eval/mean_gap"] for ln in lines if "eval/mean_gap" in ln]
    assert len(values) >= 2 and all(math.isfinite(v) and 0 <= v <= 255 for v in values)
    assert not any(k.startswith("eval/fd_") for ln in lines for k in ln)  # the README's metric replaced the card's

    done = sidbench([*fid_args, f"dataset.teacher.path={tiny_teacher}", "dataset.teacher.sampler_steps=2", "--num", "32",
                     "--batch", "16", "device=cpu"], fid_env, run_env)
    name, value = done.stdout.strip().splitlines()[-1].split()
    assert name == "mean_gap" and 0 <= float(value) <= 255
    err = " ".join(done.stderr.split())
    assert "the mean pixel of the 1797 scikit-learn digits" in err and "recorded as the teacher's mean_gap" in err


@pytest.mark.slow
def test_readme_dataset_card_trains_a_run(tiny_teacher: Path, run_env: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.cli import main

    text = section("Adding a dataset")
    (card,) = blocks(text, "yaml")
    path = run_env / card.splitlines()[0].removeprefix("#").strip()  # the card's own first line names its file
    path.parent.mkdir(parents=True)
    path.write_text(card)
    name = yaml.safe_load(card)["name"]
    assert path.stem == name
    ((env, args),) = commands(text)
    assert args == ["run", f"dataset={name}"] and list(env) == ["SIDBENCH_CONFIG_PATH"]
    for key, value in env.items():  # in this process (run_env is the working directory): no plugin to keep apart
        monkeypatch.setenv(key, value)

    assert main([*args, *tiny_overrides(tiny_teacher), "run_name=card"]) == 0
    run_dir = run_env / "runs" / name / "card"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    # the card's own fields over the shipped digits card it extends
    assert cfg["dataset"]["name"] == name and cfg["dataset"]["eval_samples"] == 500
    assert cfg["dataset"]["budget"] == {"unit": "flops", "value": 2.0e12} and cfg["dataset"]["teacher"]["builtin"] == "digits"
    assert any("eval/fd_pixel" in json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines())
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}").get_experiment_by_name(name)
    assert exp is not None and exp.name == name

    capsys.readouterr()
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.startswith(f"│ {name} ") for line in listed.splitlines()), listed
