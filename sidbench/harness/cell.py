"""One bench cell as a Hydra job: `python -m sidbench.harness.cell --multirun plan=<plan.json> cell=a,b`.

`sidbench bench` starts this; whichever Hydra launcher runs the jobs (in this process, in joblib
workers, as submitit jobs on this machine or on Slurm), each job runs its cell as an ordinary
`sidbench run` in a child process, resumed from the cell's checkpoint when there is one, with its
output in the bench's `logs/<cell>.log`, and writes `cells/<cell>.json`. A cell that fails is
reported, never raised: the other cells go on.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sidbench.harness.bench import Cell, read_plan, write_json_atomic
from sidbench.processes import children_die_with_me

# The job's config is the plan's path and the cell's key; Hydra must not change the working
# directory, or relative paths in the user's overrides would move.
ConfigStore.instance().store(name="sidbench_cell", node={"plan": "???", "cell": "???", "hydra": {"job": {"chdir": False}}})


def run_cell(plan_path: Path, key: str) -> dict:
    """Run the cell `key` of the plan to its end; its report (also written to cells/<key>.json)."""
    from sidbench.run_folder import CHECKPOINT_NAME

    bench = read_plan(plan_path)
    cell: Cell = next(c for c in bench.cells if c.key == key)
    resumed = (Path(cell.run_dir) / CHECKPOINT_NAME).is_file()
    args = [*cell.overrides, *([f"resume={cell.run_dir}"] if resumed else [])]
    log = bench.log_path(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "a") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} sidbench run {' '.join(args)}\n")
        f.flush()
        # the run dies with this job (a killed launcher must not leave it training); a run begun
        # again after a kill before its first checkpoint starts with clean records (sidbench.run_folder)
        rc = subprocess.call([sys.executable, "-m", "sidbench.cli", "run", *args], stdout=f, stderr=subprocess.STDOUT,
                             env=children_die_with_me({**os.environ, "PYTHONUNBUFFERED": "1"}))
    report = {"key": key, "status": "finished" if rc == 0 else "failed", "returncode": rc, "resumed": resumed,
              "run_dir": cell.run_dir, "log": str(log), "started": started, "seconds": time.time() - started}
    write_json_atomic(bench.report_path(cell), report)
    return report


@hydra.main(config_path=None, config_name="sidbench_cell", version_base=None)
def main(cfg: DictConfig) -> dict:
    return run_cell(Path(str(cfg.plan)), str(cfg.cell))


if __name__ == "__main__":
    main()
