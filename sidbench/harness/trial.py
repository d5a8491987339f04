"""One tuning trial as a Hydra job: `python -m sidbench.harness.trial --multirun plan=<plan.json> trial=3,4`.

`sidbench tune` starts this, as `sidbench bench` starts its cells (sidbench.harness.cell), so the
same launchers run trials (in this process, in joblib workers, as submitit jobs). Each job runs
its trial as an ordinary `sidbench run` in a child process (resumed from its checkpoint when
there is one), with its output in the study's `logs/t<number>.log`. While the run trains, the job
reads the evaluations from the run's metrics.jsonl and reports them to the Optuna trial (its
curve in the study; the median pruner, if on, may stop the run there). When the run ends the job
tells the study the trial's value, or that it was pruned or failed, with the compute it counted.
A run stopped by a signal (a killed study) leaves its trial RUNNING: the same command resumes it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sidbench.harness.bench import write_json_atomic
from sidbench.harness.objective import counted_flops, evaluation_points, final_value, objective_value, read_lines
from sidbench.processes import children_die_with_me, die_with_parent

ConfigStore.instance().store(name="sidbench_trial", node={"plan": "???", "trial": "???", "hydra": {"job": {"chdir": False}}})

#: seconds between two reads of the run's metrics.jsonl while it trains
POLL_SECONDS = 1.0
#: exit codes of a run stopped by a signal (SIGINT, SIGTERM: `TrainingInterrupted`; negative: killed)
INTERRUPTED = (130, 143)


def read_plan(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def open_storage(url: str) -> Any:
    """The Optuna storage, patient with SQLite's one writer (parallel trials write their curves)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def load_study(plan: dict[str, Any]) -> Any:
    import optuna

    pruner = optuna.pruners.MedianPruner(n_startup_trials=int(plan["startup"]), n_warmup_steps=1) \
        if plan["pruner"] == "median" else optuna.pruners.NopPruner()
    return optuna.load_study(study_name=plan["study"], storage=open_storage(plan["storage"]), pruner=pruner)


def report_points(trial: Any, lines: list[dict], metric: str, reported: set[int]) -> bool:
    """Report the evaluations not reported yet (step = the evaluation's index: every trial is
    evaluated at the same fractions of the budget); True when the pruner says stop."""
    points = evaluation_points(lines, metric)
    new = False
    for step, value in enumerate(points["value"]):
        if step not in reported:
            trial.report(float(value), step)
            reported.add(step)
            new = True
    return new and trial.should_prune()


def run_trial(plan_path: Path, number: int) -> dict[str, Any]:
    """Run trial `number` of the plan to its end and tell the study how it ended; its report."""
    import optuna
    from optuna.trial import TrialState

    from sidbench.run_folder import CHECKPOINT_NAME, recorded_run_id

    plan = read_plan(plan_path)
    spec = plan["trials"][str(number)]
    study = load_study(plan)
    trial = optuna.trial.Trial(study, int(spec["trial_id"]))
    run_dir = Path(spec["run_dir"])
    resumed = (run_dir / CHECKPOINT_NAME).is_file()
    args = [*spec["overrides"], *([f"resume={run_dir}"] if resumed else [])]
    root = Path(plan["root"])
    log = root / "logs" / f"t{number:04d}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    metric = plan["metric"]
    (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    reported = set(frozen.intermediate_values)  # a resumed trial's curve so far
    started = time.time()
    pruned = False
    with open(log, "a") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} sidbench run {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "sidbench.cli", "run", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=children_die_with_me({**os.environ, "PYTHONUNBUFFERED": "1"}))
        try:
            while proc.poll() is None:
                time.sleep(POLL_SECONDS)
                if not pruned and report_points(trial, read_lines(run_dir), metric, reported):
                    pruned = True
                    proc.send_signal(signal.SIGTERM)  # the run checkpoints this iteration and stops
            rc = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the run too: let it checkpoint and stop on its own
            try:
                proc.wait(timeout=120)
            except BaseException:
                proc.kill()
            raise
        except BaseException:
            proc.kill()
            raise
    lines = read_lines(run_dir)
    if not pruned and rc == 0:
        report_points(trial, lines, metric, reported)  # the last points, for the study's curves
    flops = counted_flops(run_dir, lines)
    value = objective_value(lines, metric, plan["objective"])
    attrs = {"run_dir": str(run_dir), "flops": flops, "seconds": time.time() - started, "returncode": rc,
             "final": final_value(lines, metric), "log_area": objective_value(lines, metric, "area"),
             "mlflow_run_id": recorded_run_id(run_dir) or "", "log": str(log)}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if pruned:
        state = TrialState.PRUNED
    elif rc == 0 and value == value:  # not NaN
        state = TrialState.COMPLETE
    elif rc < 0 or rc in INTERRUPTED:
        state = None  # stopped from outside: left RUNNING, the same command resumes it
    else:
        state = TrialState.FAIL
    if state is not None:
        study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
    report = {"number": number, "status": state.name.lower() if state is not None else "interrupted", "value": value,
              "resumed": resumed, **attrs}
    write_json_atomic(root / "trials" / f"t{number:04d}.json", report)
    return report


@hydra.main(config_path=None, config_name="sidbench_trial", version_base=None)
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_trial(Path(str(cfg.plan)), int(cfg.trial))


if __name__ == "__main__":
    die_with_parent()  # a killed `sidbench tune` takes its trials (and their runs) with it
    main()
