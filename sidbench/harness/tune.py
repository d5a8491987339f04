"""`sidbench tune`: an Optuna study over a method's search space, each trial an ordinary `sidbench
run` at one budget, launched through Hydra's launchers as `sidbench bench` launches its cells.

The parent composes and validates the trials' shared run config and the search space first (a bad
setting or range is one line before anything starts), opens the study in its storage (SQLite beside
the MLflow store by default), and then, batch by batch, asks the seeded TPE sampler for `parallel`
trials, writes them to `<output_root>/tune/<study>/plan.json` and starts `python -m
sidbench.harness.trial --multirun trial=...`; each trial job runs its run and tells the study how it
ended (sidbench/harness/trial.py). The study ends with `best.yaml`, a preset of the best trial's
settings, and a table of the trials.

Why Optuna directly, not Hydra's Optuna sweeper: the sweeper asks and tells in its own process
around whole batches, so a trial's evaluations cannot reach a pruner while it trains, a study
killed mid-batch leaves its trials to be sampled again, and its launcher cannot resume a run from
its checkpoint. Here the study's state is in the storage: a killed study's RUNNING trials are run
again with the same settings, continuing their runs' checkpoints, and the same command again adds
trials to the same study.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from sidbench.config import ConfigError
from sidbench.errors import InputError
from sidbench.harness.bench import HYDRA_PREFIXES, budget_overrides, points_overrides, write_json_atomic
from sidbench.harness.objective import OBJECTIVES
from sidbench.search_space import Param, SearchSpace, parse_param, value_override

PRUNERS = ("none", "median")
PLAN_NAME = "plan.json"
BEST_NAME = "best.yaml"
#: what the study must keep to add trials: these stay as the study began (user attrs of the study)
IDENTITY = ("method", "dataset", "seed", "budget", "objective", "metric", "space", "run_overrides")


@dataclass
class TunePlan:
    study: str
    storage: str
    uri: str                      # the MLflow store of the trials' runs
    output_root: Path
    method: str
    dataset: str
    seed: int
    budget: str                   # "flops 2e+12", as the runs' budget tag reads
    metric: str
    objective: str
    pruner: str
    startup: int
    parallel: int
    trials: int
    total: int | None             # the study's finished trials to end with (instead of adding `trials`)
    space: SearchSpace
    base: list[str]               # run overrides every trial shares
    run_overrides: list[str]      # those the user gave (recorded with the study)
    command: str
    preset: str | None            # the dataset's preset of the method (best.yaml builds on it)
    specs: dict[str, dict] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """<output_root>/tune/<study>: the plan, logs, trial reports, Hydra's folders, best.yaml."""
        return self.output_root / "tune" / self.study

    def identity(self) -> dict[str, Any]:
        return {"method": self.method, "dataset": self.dataset, "seed": self.seed, "budget": self.budget,
                "objective": self.objective, "metric": self.metric,
                "space": {k: p.describe() + (f" when {p.when}" if p.when else "") for k, p in self.space.items()},
                "run_overrides": self.run_overrides}


# -- the command line ----------------------------------------------------------------------------
def parse_args(args: list[str]) -> tuple[DictConfig, dict[str, Param | None], list[str], list[str]]:
    """(tune settings, changes to the search space, run overrides for every trial, Hydra overrides)."""
    defaults = OmegaConf.load(str(files("sidbench.conf") / "tune.yaml"))
    keys = set(defaults.keys()) - {"space"}
    mine, space, run, hydra = [], {}, [], []
    for a in args:
        key, eq, value = a.partition("=")
        if not eq:
            raise ConfigError(f"{a!r} is not key=value; see `sidbench tune --help`")
        if key.startswith(HYDRA_PREFIXES):
            hydra.append(a)
        elif key.startswith("space."):
            space[key.removeprefix("space.")] = parse_param(key.removeprefix("space."), value)
        elif key in keys or (key.split(".")[0] in ("budget", "points") and "." in key):
            mine.append(a)  # method.lr, dataset.teacher.path, ... are run overrides
        else:
            run.append(a)
    OmegaConf.set_struct(defaults, True)
    try:
        settings = OmegaConf.merge(defaults, OmegaConf.from_dotlist(mine))
    except Exception as e:
        raise ConfigError(f"bad tune setting: {str(e).splitlines()[0]}") from e
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"objective={settings.objective}: must be one of {', '.join(OBJECTIVES)}")
    if settings.pruner not in PRUNERS:
        raise ConfigError(f"pruner={settings.pruner}: must be one of {', '.join(PRUNERS)}")
    if settings.total is not None and (not isinstance(settings.total, int) or isinstance(settings.total, bool)
                                       or settings.total < 1):
        raise ConfigError(f"total={settings.total}: must be an integer >= 1 (or null: add `trials`)")
    for key in ("trials", "parallel", "startup"):
        v = settings[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "startup" else 1):
            raise ConfigError(f"{key}={v}: must be an integer >= {0 if key == 'startup' else 1}")
    if not isinstance(settings.seed, int) or isinstance(settings.seed, bool):
        raise ConfigError(f"seed={settings.seed}: must be an integer")
    return settings, space, run, hydra


def default_study_name(method: str, dataset: str, budget: DictConfig, seed: int) -> str:
    where = f"{budget.unit}{float(budget.value):g}".replace("e+", "e") if budget.get("unit") else "card"
    return f"{method}-{dataset}-{where}-s{seed}"


def default_storage(uri: str, output_root: Path) -> str:
    """SQLite beside the MLflow store when that is a SQLite file, else under output_root."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    return f"sqlite:///{output_root / 'optuna.db'}"


# -- planning ------------------------------------------------------------------------------------
def plan(settings: DictConfig, changes: dict[str, Param | None], run_overrides: list[str], command: str) -> TunePlan:
    """Compose and validate the trials' shared config and the search space."""
    from sidbench.config import compose, group_files
    from sidbench.run_folder import check_folder_name
    from sidbench.schema import validate_run_config
    from sidbench.search_space import active, apply_changes, check_space, declared_space
    from sidbench.tracking import tracking_uri

    method, dataset, seed = str(settings.method), str(settings.dataset), int(settings.seed)
    for o in run_overrides:
        if o.partition("=")[0].lstrip("+~") in ("method", "dataset", "trainer.seed", "resume", "run_name"):
            raise ConfigError(f"{o}: give the study's {o.partition('=')[0]} as method=, dataset= or seed= (resume and "
                              "run_name are the study's own)")
    base = [f"method={method}", f"dataset={dataset}", f"trainer.seed={seed}", *budget_overrides(settings.budget),
            *points_overrides(settings.points), "trainer.kimg=null", *run_overrides]
    cfg = compose(base)
    validate_run_config(cfg)
    space = active(apply_changes(declared_space(method), changes), cfg)
    check_space(space, cfg)
    study = str(settings.study) if settings.study else default_study_name(method, dataset, settings.budget, seed)
    check_folder_name(study, "study")
    output_root = Path(str(cfg.output_root)).resolve()
    uri = tracking_uri(cfg)
    budget = cfg.trainer.budget
    preset = f"{method}_{dataset}"
    return TunePlan(study, str(settings.storage) if settings.storage else default_storage(uri, output_root), uri,
                    output_root, method, dataset, seed, f"{budget.unit} {float(budget.value):.4g}", str(cfg.eval.metric),
                    str(settings.objective), str(settings.pruner), int(settings.startup), int(settings.parallel),
                    int(settings.trials), None if settings.total is None else int(settings.total), space, base,
                    list(run_overrides), command,
                    preset if preset in group_files("preset") else None)


def check_storage_reach(p: TunePlan, hydra_overrides: list[str]) -> None:
    launcher = next((o.partition("=")[2] for o in hydra_overrides if o.partition("=")[0].lstrip("+") == "hydra/launcher"), "")
    if launcher.endswith("_slurm") and p.storage.startswith("sqlite:"):
        raise ConfigError(f"hydra/launcher={launcher} runs trials on other nodes, which cannot write {p.storage}; give "
                          "storage=<database URL every node reaches> (e.g. postgresql://... of the tracking server's database)")


def trial_spec(p: TunePlan, number: int, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's run: overrides (the shared ones, its settings, where it goes), folder, hash."""
    from sidbench.config import compose
    from sidbench.schema import validate_run_config
    from sidbench.tracking import settings_hash

    settings = [value_override(k, params[k]) for k in p.space if k in params]
    cfg = compose([*p.base, *settings])
    validate_run_config(cfg)
    h = settings_hash(cfg, with_seed=True)
    run_name = f"tune-{p.study}.t{number:04d}-{h[:8]}"
    overrides = [*p.base, *settings, f"output_root={p.output_root}", f"tracking.uri={p.uri}", f"run_name={run_name}",
                 f"+tracking.tags.sidbench.tune={p.study}", f"+tracking.tags.sidbench.trial={number}"]
    return {"trial_id": trial_id, "number": number, "params": params, "settings": settings, "overrides": overrides,
            "run_dir": str(p.output_root / p.dataset / run_name), "config_hash": h}


def write_plan(p: TunePlan) -> Path:
    data = {"study": p.study, "storage": p.storage, "root": str(p.root), "metric": p.metric, "objective": p.objective,
            "pruner": p.pruner, "startup": p.startup, "trials": p.specs}
    return write_json_atomic(p.root / PLAN_NAME, data)


# -- the study -----------------------------------------------------------------------------------
def open_study(p: TunePlan) -> Any:
    """The study (created on first use) after checking that it is this study: the same method,
    dataset, budget, seed, objective, space and run overrides, or one line naming the difference."""
    import optuna

    from sidbench.harness.trial import open_storage

    if p.storage.startswith("sqlite:///"):
        Path(p.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(study_name=p.study, storage=open_storage(p.storage), direction="minimize",
                                    load_if_exists=True)
    except Exception as e:  # SQLAlchemy's errors: a URL without a driver, a server out of reach
        raise InputError(f"storage={p.storage}: cannot open the study ({' '.join(str(e).split())[:300]})") from None
    mine = p.identity()
    held = study.user_attrs.get("sidbench")
    if held is None:
        study.set_user_attr("sidbench", mine)
    else:
        for key in IDENTITY:
            if held.get(key) != mine[key]:
                raise ConfigError(f"study {p.study} in {p.storage} was run with {key}={held.get(key)}, not {mine[key]}; "
                                  "give another study= for other settings")
    return study


def trial_counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s.name.lower(): sum(x == s for x in states) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                                   TrialState.RUNNING)}


def finished(study: Any) -> int:
    c = trial_counts(study)
    return c["complete"] + c["pruned"] + c["fail"]


def sampler_seed(seed: int, number: int) -> int:
    """A seed per trial: trial n's draw depends on the study's seed, n and the results before it,
    not on how many commands ran the study."""
    return (seed * 1_000_003 + number) % 2**32


def ask(study: Any, p: TunePlan) -> Any:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dist = {}
    for key, q in p.space.items():
        if q.kind == "choice":
            dist[key] = CategoricalDistribution(list(q.choices))
        elif q.kind in ("int", "intlog"):
            dist[key] = IntDistribution(int(q.low), int(q.high), log=q.log)
        else:
            dist[key] = FloatDistribution(q.low, q.high, log=q.log)
    number = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(p.seed, number), n_startup_trials=p.startup)
    return study.ask(dist)


def target_count(study: Any, p: TunePlan) -> int:
    """How many finished trials this command ends with: with `total`, that many (never fewer than are
    done: a finished study runs nothing more, so a script can be run again); otherwise a study stopped
    short of the target its last command set gets there first, then this command adds `trials`."""
    done = finished(study)
    if getattr(p, "total", None) is not None:
        target = max(int(p.total), done)
        study.set_user_attr("sidbench_target", target)
        return target
    target = study.user_attrs.get("sidbench_target")
    if target is None or done >= int(target):
        target = done + p.trials
        study.set_user_attr("sidbench_target", target)
    return int(target)


def launch(p: TunePlan, numbers: list[int], hydra_overrides: list[str]) -> int:
    from sidbench.processes import children_die_with_me

    sweep_dir = p.root / "hydra" / time.strftime("%Y%m%d-%H%M%S")
    hydra = list(hydra_overrides)
    if any(o.partition("=")[2] == "joblib" for o in hydra if o.partition("=")[0].lstrip("+") == "hydra/launcher") \
            and not any(o.startswith("hydra.launcher.n_jobs=") for o in hydra):
        hydra.append(f"hydra.launcher.n_jobs={p.parallel}")
    cmd = [sys.executable, "-m", "sidbench.harness.trial", "--multirun", f"plan={p.root / PLAN_NAME}",
           "trial=" + ",".join(map(str, numbers)), f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}", *hydra]
    return subprocess.call(cmd, env=children_die_with_me())


def prepare_store(p: TunePlan) -> None:
    """The MLflow experiment made here, once, before trials start in parallel (SQLite's one writer)."""
    from sidbench.tracking import ensure_experiment

    ensure_experiment(p.uri, p.dataset, p.output_root / "mlartifacts")


def spec_of(study: Any, p: TunePlan, trial: Any) -> dict[str, Any] | None:
    """A trial's spec: the one planned before (kept in the plan), else made from its parameters.
    None when the run refuses the drawn settings (a relation between them, say): the trial is told
    failed, with the one-line reason, and costs nothing."""
    import optuna
    from optuna.trial import TrialState

    old = p.specs.get(str(trial.number))
    if old is not None:
        return old
    try:
        spec = trial_spec(p, trial.number, trial._trial_id, dict(trial.params))
    except ConfigError as e:
        live = optuna.trial.Trial(study, trial._trial_id)
        live.set_user_attr("error", str(e))
        live.set_user_attr("flops", 0.0)
        study.tell(trial.number, state=TrialState.FAIL)
        return None
    optuna.trial.Trial(study, trial._trial_id).set_user_attr("run_dir", spec["run_dir"])
    return spec


def run_tune(args: list[str], console: Console, dry_run: bool = False) -> int:
    """The whole command. Exit code 1 when trials were interrupted (the same command resumes them)."""
    from filelock import FileLock, Timeout
    from optuna.trial import TrialState

    settings, changes, run_overrides, hydra_overrides = parse_args(args)
    p = plan(settings, changes, run_overrides, "sidbench tune " + " ".join(args))
    check_storage_reach(p, hydra_overrides)
    space = ", ".join(f"{k} {q.describe()}" for k, q in p.space.items())
    if dry_run:
        console.print(f"study {p.study} ({p.storage}): {p.trials} trials of method={p.method} on {p.dataset} at "
                      f"{p.budget}, objective {p.objective} of {p.metric}; space: {space}", highlight=False)
        return 0
    p.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(p.root / "study.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f"another `sidbench tune` is running study {p.study} ({p.root / 'study.lock'}); wait for it "
                         "or give another study=") from None
    try:
        study = open_study(p)
        old = p.root / PLAN_NAME
        if old.is_file():
            p.specs = json.loads(old.read_text()).get("trials", {})
        target = target_count(study, p)
        console.print(f"study {p.study}: {finished(study)} of {target} trials done; storage {p.storage}, MLflow {p.uri}; "
                      f"space: {space}", highlight=False)
        prepare_store(p)
        interrupted: list[int] = []
        while True:
            # trials a killed command left RUNNING first (with their settings: their runs resume)
            stale = list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            batch = [s for s in (spec_of(study, p, t) for t in stale[: p.parallel]) if s is not None]
            done, new = finished(study), 0
            while len(batch) < p.parallel and done + len(stale) + new < target:
                spec = spec_of(study, p, ask(study, p))
                new += 1
                if spec is not None:
                    batch.append(spec)
            if not batch:
                if done + len(stale) + new < target or any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
                    continue  # trials whose settings the run refused were told failed: ask again
                break
            for spec in batch:
                p.specs[str(spec["number"])] = spec
            write_plan(p)
            since = time.time()
            rc = launch(p, [s["number"] for s in batch], hydra_overrides)
            running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            left = [s["number"] for s in batch if s["number"] in running]
            if left:
                interrupted = left
                if rc != 0 and not any((p.root / "trials" / f"t{n:04d}.json").is_file()
                                       and (p.root / "trials" / f"t{n:04d}.json").stat().st_mtime >= since for n in left):
                    console.print(f"[red]error:[/red] Hydra's launcher exited with {rc} before trial(s) "
                                  f"{', '.join(map(str, left))} reported (see its output above)")
                break
        table = trials_table(study, p)
        console.print(table)
        best = write_best(study, p)
        if best is not None:
            console.print(f"best settings: {best} (`sidbench run preset_file={best}`)", highlight=False)
        if interrupted:
            console.print(f"[red]trial(s) {', '.join(map(str, interrupted))} interrupted[/red]; their logs are in "
                          f"{p.root / 'logs'}; the same command resumes them")
            return 1
        return 0
    finally:
        lock.release()


# -- the results: a table and the best trial's preset ------------------------------------------------
def tuning_flops(study: Any) -> float:
    """The compute of every finished trial (complete, pruned, failed), as their runs counted it."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return float(sum(float(t.user_attrs.get("flops", 0.0)) for t in study.get_trials(deepcopy=False, states=done)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def trials_table(study: Any, p: TunePlan) -> Table:
    best = _best(study)
    table = Table("trial", "state", *p.space, p.objective, f"{p.metric} final", "FLOPs", "seconds", "MLflow run",
                  title=f"study {p.study}: method={p.method} on {p.dataset} at {p.budget} (objective: {p.objective}, lower "
                        "is better)", caption=f"tuning FLOPs {tuning_flops(study):.4g}")
    for t in study.get_trials(deepcopy=False):
        mark = " *" if best is not None and t.number == best.number else ""
        table.add_row(f"{t.number}{mark}", t.state.name.lower(), *(_fmt(t.params.get(k)) for k in p.space), _fmt(t.value),
                      _fmt(t.user_attrs.get("final")), _fmt(t.user_attrs.get("flops")), _fmt(t.user_attrs.get("seconds")),
                      str(t.user_attrs.get("mlflow_run_id", ""))[:12])
    return table


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _nested(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def write_best(study: Any, p: TunePlan) -> Path | None:
    """`<root>/best.yaml`: the best trial's settings as a preset (the dataset's preset first, then
    the study's fixed method settings, then the tuned ones), its header saying where they came
    from. None when no trial completed."""
    import yaml

    best = _best(study)
    if best is None:
        return None
    from optuna.trial import TrialState

    c = trial_counts(study)
    fixed = {o.partition("=")[0].lstrip("+"): yaml.safe_load(o.partition("=")[2]) for o in p.run_overrides
             if o.partition("=")[0].lstrip("+").startswith("method.")}
    body: dict[str, Any] = {}
    if p.preset is not None:
        body["defaults"] = [p.preset, "_self_"]
    flops = tuning_flops(study)
    body["settings_source"] = f"tuned:{p.study}"
    body["tuning_flops"] = flops
    body.update(_merge(_nested(fixed), _nested(dict(best.params))))
    seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in study.get_trials(deepcopy=False)
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    header = [
        "# @package _global_",
        f"# sidbench tune: the best settings of study {p.study} (storage {p.storage})",
        f"# trials: {finished(study)} ({c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed); "
        f"tuning FLOPs {flops:.6g}; trial time {seconds:.0f} s",
        f"# best: trial {best.number}, {p.objective} {best.value:.6g}, {p.metric} final {best.user_attrs.get('final', float('nan')):.6g} "
        f"(MLflow run {best.user_attrs.get('mlflow_run_id', '')}), at {p.budget}, seed {p.seed}",
        f"# method={p.method} dataset={p.dataset}; space: " + ", ".join(f"{k} {q.describe()}" for k, q in p.space.items()),
        f"# command: {p.command}",
        "# Use: sidbench run method=... dataset=... preset_file=<this file> (docs/tuning.md)",
    ]
    path = p.root / BEST_NAME
    from sidbench.atomic import write_text_atomic

    write_text_atomic(path, "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
