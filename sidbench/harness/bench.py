"""`sidbench bench`: every (method, dataset, seed) cell as one ordinary `sidbench run`, all under one
budget and evaluated at the same fractions of it, launched as a Hydra multirun.

The parent composes and validates every cell's run config first (a bad setting is one line before
anything starts), writes the plan to `<output_root>/bench/<id>/plan.json`, leaves out the cells that
MLflow already holds as finished (tag `sidbench.bench` = the bench id, `sidbench.config_hash` = the
cell's hash), and starts `python -m sidbench.harness.cell --multirun cell=...` with the user's
`hydra...` overrides, so Hydra's launchers (basic, joblib, submitit) run the cells. A cell whose run
folder holds a checkpoint resumes from it. Each cell reports to `cells/<cell>.json`; the summary
reads those reports, so it works alike for cells run here, in joblib workers or on a cluster.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from sidbench.atomic import write_text_atomic
from sidbench.config import ConfigError

PLAN_NAME = "plan.json"
HYDRA_PREFIXES = ("hydra.", "hydra/", "+hydra", "~hydra")


@dataclass(frozen=True)
class Cell:
    key: str                 # "sid-digits-s0": the Hydra sweep value and the name of its files
    method: str
    dataset: str
    seed: int
    config_hash: str         # sidbench.tracking.settings_hash with the seed
    run_dir: str
    overrides: tuple[str, ...]


@dataclass
class Bench:
    id: str
    uri: str
    cells: list[Cell]
    output_root: Path

    @property
    def root(self) -> Path:
        """<output_root>/bench/<id>: the plan, logs, cell reports and Hydra's folders."""
        return self.output_root / "bench" / self.id

    def log_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.key}.log"

    def report_path(self, cell: Cell) -> Path:
        return self.root / "cells" / f"{cell.key}.json"


# -- the command line ----------------------------------------------------------------------------
def parse_args(args: list[str]) -> tuple[DictConfig, list[str], list[str]]:
    """(bench settings, run overrides for every cell, Hydra overrides) from `key=value` arguments.
    Bench keys are those of conf/bench.yaml; values are YAML, so `overrides.dmd2=[method.gan.enabled=true]`
    is a list of one override (quote an element that holds a comma or brackets)."""
    defaults = OmegaConf.load(str(files("sidbench.conf") / "bench.yaml"))
    bench_keys = set(defaults.keys())
    mine, run, hydra = [], [], []
    for a in args:
        key = a.partition("=")[0]
        if "=" not in a:
            raise ConfigError(f"{a!r} is not key=value; see `sidbench bench --help`")
        if key.startswith(HYDRA_PREFIXES):
            hydra.append(a)
        elif key.split(".")[0] in bench_keys:
            mine.append(a)
        else:
            run.append(a)
    OmegaConf.set_struct(defaults, True)  # a misspelt bench key is an error...
    OmegaConf.set_struct(defaults.overrides, False)  # ...but overrides.<method> takes any method
    try:
        settings = OmegaConf.merge(defaults, OmegaConf.from_dotlist(mine))
    except Exception as e:  # omegaconf's errors name the key; one line is enough
        raise ConfigError(f"bad bench setting: {str(e).splitlines()[0]}") from e
    return settings, run, hydra


def _names(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    if isinstance(value, (list, ListConfig)):
        return [str(v) for v in value]
    raise ConfigError(f"{what}={value!r}: give a name or a list, e.g. {what}=[a,b]")


def _seeds(value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, (list, ListConfig)) and value and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    raise ConfigError(f"seeds={value!r}: give a count >= 1 (seeds 0..n-1) or a list of integers, e.g. seeds=[0,7]")


def _per_cell_overrides(overrides: DictConfig, methods: list[str], datasets: list[str]) -> dict[str, list[str]]:
    """`overrides.<method or dataset>`: run overrides of the cells of one method, or of one dataset
    (its images, say: `overrides.cifar10=[dataset.images.path=/data/cifar10.zip]`)."""
    out: dict[str, list[str]] = {}
    for name, value in (overrides or {}).items():
        if name not in methods and name not in datasets:
            raise ConfigError(f"overrides.{name}: {name!r} is not among the bench's methods ({', '.join(methods)}) "
                              f"or datasets ({', '.join(datasets)})")
        items = [value] if isinstance(value, str) else list(value)
        bad = [str(v) for v in items if "=" not in str(v)]
        if bad:
            raise ConfigError(f"overrides.{name}={bad[0]!r}: each element must be key=value, e.g. overrides.{name}=[method.lr=1e-5]")
        out[str(name)] = [str(v) for v in items]
    return out


def budget_overrides(budget: DictConfig) -> list[str]:
    """The bench's budget as run overrides; none: each dataset card's own, given explicitly, so that
    a preset's own length (SiD's digits main job) never reaches a comparison."""
    unit, value = budget.get("unit"), budget.get("value")
    if unit is None and value is None:
        return ["trainer.budget.unit=${dataset.budget.unit}", "trainer.budget.value=${dataset.budget.value}"]
    if unit is None or value is None:
        raise ConfigError(f"budget.unit={unit} budget.value={value}: give both (e.g. budget.unit=flops budget.value=2e12), or neither for each card's budget")
    return [f"trainer.budget.unit={unit}", f"trainer.budget.value={float(value)}"]


def points_overrides(points: DictConfig) -> list[str]:
    """The same evaluation points for every cell, as fractions of the budget: methods see images
    at different rates per FLOP, so evaluations every N kimg would not line up."""
    fractions = ",".join(str(float(f)) for f in points.at_fraction)
    return ["trainer.eval_every_kimg=null", "trainer.eval_at_kimg=[]", f"trainer.eval_at_fraction=[{fractions}]",
            f"trainer.eval_log_points.count={int(points.log_count)}", f"trainer.eval_log_points.first={float(points.log_first)}"]


def default_id(datasets: list[str], budget: DictConfig) -> str:
    where = f"{budget.unit}{float(budget.value):g}".replace("e+", "e") if budget.get("unit") else "card"
    return f"{'+'.join(datasets)}-{where}"


# -- planning --------------------------------------------------------------------------------------
def plan(settings: DictConfig, run_overrides: list[str]) -> Bench:
    """Compose and validate every cell's run config; the cells in the order they run."""
    from sidbench.config import compose
    from sidbench.run_folder import check_folder_name
    from sidbench.methods import METHODS
    from sidbench.schema import validate_run_config
    from sidbench.tracking import settings_hash, tracking_uri

    methods = _names(settings.methods, "methods") if settings.methods is not None else METHODS.names()
    datasets = _names(settings.datasets, "datasets")
    seeds = _seeds(settings.seeds)
    per_cell = _per_cell_overrides(settings.overrides, methods, datasets)
    budget = budget_overrides(settings.budget)
    bench_id = str(settings.id) if settings.id else default_id(datasets, settings.budget)
    check_folder_name(bench_id, "id")  # it names folders: checked before anything is written
    common = [*budget, *points_overrides(settings.points), "trainer.kimg=null", *run_overrides]

    base = compose(run_overrides)  # where the runs and the store are, as `sidbench run` would see it
    output_root = Path(str(base.output_root)).resolve()
    uri = tracking_uri(base)
    cells = []
    # seed by seed: a matrix stopped halfway has every method at its first seeds
    for dataset in datasets:
        for seed in seeds:
            for method in methods:
                overrides = [f"method={method}", f"dataset={dataset}", f"trainer.seed={seed}", *common,
                             *per_cell.get(dataset, []), *per_cell.get(method, [])]
                cfg = compose(overrides)
                try:
                    validate_run_config(cfg)
                except ConfigError as e:  # name the cell: the same setting may suit the others
                    raise ConfigError(f"cell {method}-{dataset}-s{seed}: {e} (or leave {method} out: methods=[...])") from None
                h = settings_hash(cfg, with_seed=True)
                run_name = f"bench-{bench_id}.{method}-s{seed}-{h[:8]}"  # one folder name (sidbench.run_folder)
                overrides += [f"output_root={output_root}", f"tracking.uri={uri}", f"run_name={run_name}",
                              f"+tracking.tags.sidbench.bench={bench_id}"]
                cells.append(Cell(f"{method}-{dataset}-s{seed}", method, dataset, seed, h,
                                  str(output_root / dataset / run_name), tuple(overrides)))
    return Bench(bench_id, uri, cells, output_root)


def write_json_atomic(path: Path, data: object) -> Path:
    """Write JSON whole or not at all: the launcher's jobs read the plan, the parent the reports."""
    return write_text_atomic(path, json.dumps(data, indent=1))


def write_plan(bench: Bench) -> Path:
    data = {"id": bench.id, "uri": bench.uri, "output_root": str(bench.output_root), "cells": [asdict(c) for c in bench.cells]}
    return write_json_atomic(bench.root / PLAN_NAME, data)


def read_plan(path: Path) -> Bench:
    data = json.loads(path.read_text())
    cells = [Cell(**{**c, "overrides": tuple(c["overrides"])}) for c in data["cells"]]
    return Bench(data["id"], data["uri"], cells, Path(data["output_root"]))


# -- what MLflow already holds ---------------------------------------------------------------------
def bench_runs(bench: Bench) -> dict[str, dict[str, str]]:
    """{config hash: {"run_id", "status"}} of the bench's runs in MLflow, a finished run preferred."""
    from sidbench.tracking import all_pages, open_store

    client = open_store(bench.uri)
    exps = [e for e in (client.get_experiment_by_name(d) for d in sorted({c.dataset for c in bench.cells})) if e is not None]
    if not exps:
        return {}
    runs = all_pages(client.search_runs, experiment_ids=[e.experiment_id for e in exps],
                     filter_string=f"tags.`sidbench.bench` = '{bench.id}'")
    found: dict[str, dict[str, str]] = {}
    for r in runs:
        h = r.data.tags.get("sidbench.config_hash")
        if h and (h not in found or r.info.status == "FINISHED"):
            found[h] = {"run_id": r.info.run_id, "status": r.info.status}
    return found


def cell_states(bench: Bench) -> dict[str, str]:
    """finished (in MLflow), resume (a checkpoint, not finished) or new, per cell key."""
    from sidbench.run_folder import CHECKPOINT_NAME

    runs = bench_runs(bench)
    states = {}
    for c in bench.cells:
        if runs.get(c.config_hash, {}).get("status") == "FINISHED":
            states[c.key] = "finished"
        elif (Path(c.run_dir) / CHECKPOINT_NAME).is_file():
            states[c.key] = "resume"
        else:
            states[c.key] = "new"
    return states


def prepare_store(bench: Bench) -> None:
    """Create the store's tables and the experiments here, once, before cells start in parallel:
    SQLite allows one writer, and two processes that create a fresh store at once can fail."""
    from sidbench.tracking import ensure_experiment

    for dataset in sorted({c.dataset for c in bench.cells}):
        ensure_experiment(bench.uri, dataset, bench.output_root / "mlartifacts")


def check_store_reach(bench: Bench, hydra_overrides: list[str]) -> None:
    """A cluster's cells run on other machines: a SQLite file here is not theirs to write."""
    launcher = next((o.partition("=")[2] for o in hydra_overrides if o.partition("=")[0].lstrip("+") == "hydra/launcher"), "")
    if launcher.endswith("_slurm") and bench.uri.startswith("sqlite:"):
        raise ConfigError(f"hydra/launcher={launcher} runs cells on other nodes, which cannot write {bench.uri}; start an "
                          "MLflow tracking server that every node reaches and set MLFLOW_TRACKING_URI=http://<host>:<port> (README: the benchmark)")


# -- launching and reporting -----------------------------------------------------------------------
def launch(bench: Bench, cells: list[Cell], hydra_overrides: list[str]) -> int:
    """Run `cells` as one Hydra multirun; returns Hydra's exit code (the cells report themselves)."""
    sweep_dir = bench.root / "hydra" / time.strftime("%Y%m%d-%H%M%S")
    cmd = [sys.executable, "-m", "sidbench.harness.cell", "--multirun", f"plan={bench.root / PLAN_NAME}",
           "cell=" + ",".join(c.key for c in cells), f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}",
           *hydra_overrides]
    return subprocess.call(cmd)


def reports(bench: Bench, since: float) -> dict[str, dict]:
    """The cells' reports written after `since` (this launch), by cell key."""
    out = {}
    for c in bench.cells:
        p = bench.report_path(c)
        if p.is_file():
            r = json.loads(p.read_text())
            if r.get("started", 0) >= since:
                out[c.key] = r
    return out


def summary_table(bench: Bench, states: dict[str, str], done: dict[str, dict]) -> tuple[Table, list[str]]:
    """The table shown at the end, and the keys of the cells that failed or never reported."""
    runs = bench_runs(bench)
    table = Table("cell", "status", "MLflow run", "log", title=f"bench {bench.id} (logs under {bench.root})")
    failed = []
    for c in bench.cells:
        run_id = runs.get(c.config_hash, {}).get("run_id", "")
        if states[c.key] == "finished":
            status = "finished before (skipped)"
        elif c.key not in done:
            status = "[red]did not report[/red]"
            failed.append(c.key)
        elif done[c.key]["status"] == "finished":
            status = "finished (resumed)" if done[c.key].get("resumed") else "finished"
        else:
            status = f"[red]failed (exit {done[c.key]['returncode']})[/red]"
            failed.append(c.key)
        log = bench.log_path(c)
        table.add_row(c.key, status, run_id[:12], str(log.relative_to(bench.root)) if log.is_file() else "")
    return table, failed


def run_bench(args: list[str], console: Console, dry_run: bool = False) -> int:
    """The whole command: plan, skip what is finished, launch the rest, summarise. Exit code 1
    when a cell failed (the others still ran)."""
    settings, run_overrides, hydra_overrides = parse_args(args)
    bench = plan(settings, run_overrides)
    check_store_reach(bench, hydra_overrides)
    states = cell_states(bench)
    todo = [c for c in bench.cells if states[c.key] != "finished"]
    counts = {s: sum(v == s for v in states.values()) for s in ("finished", "resume", "new")}
    console.print(f"bench {bench.id}: {len(bench.cells)} cells ({counts['finished']} finished, {counts['resume']} to resume, "
                  f"{counts['new']} new) in {bench.root}; MLflow {bench.uri}")
    if dry_run:
        table = Table("cell", "state", "run folder", title="cells")
        for c in bench.cells:
            table.add_row(c.key, states[c.key], c.run_dir)
        console.print(table)
        return 0
    write_plan(bench)
    if todo:
        prepare_store(bench)
        since = time.time()
        rc = launch(bench, todo, hydra_overrides)
        done = reports(bench, since)
        if rc != 0 and not done:
            console.print(f"[red]error:[/red] Hydra's launcher exited with {rc} before any cell ran (see its output above)")
            return 1
    else:
        done = {}
    table, failed = summary_table(bench, states, done)
    console.print(table)
    if failed:
        console.print(f"[red]{len(failed)} of {len(bench.cells)} cells failed[/red]: {', '.join(failed)}; "
                      f"their logs are in {bench.root / 'logs'}; the same command reruns only them")
        return 1
    console.print(f"all {len(bench.cells)} cells finished; `sidbench leaderboard --bench {bench.id}` builds the table")
    return 0
