"""`sidbench run`: validate the whole config here, then train in this process or relaunch the same
command under torchrun with one DDP process per core (CPU) or GPU."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from sidbench.cli import console
from sidbench.config import compose
from sidbench.schema import validate_run_config


def compose_run(overrides: list[str]) -> DictConfig:
    """The run's config. A resume composes the run's own overrides (kept in its folder) with the
    given ones on top, so `resume=<run dir>` alone continues the run it names."""
    cfg = compose(overrides)
    if cfg.get("resume") in (None, ""):
        return cfg
    from sidbench.run_folder import merge_overrides, resume_dir, stored_overrides

    stored = stored_overrides(resume_dir(cfg))
    return cfg if stored is None else compose(merge_overrides(stored, overrides))


def run_command(overrides: list[str]) -> int:
    """`sidbench run`: validate, then train here or relaunch under torchrun."""
    from sidbench.processes import die_with_parent

    die_with_parent()  # a DDP worker of ours, or the run of a bench cell: never outlive the launcher
    cfg = compose_run(overrides)
    validate_run_config(cfg)  # here, before torchrun: a bad setting is one line, not one traceback per rank
    if cfg.dry_run:
        from sidbench.run import dry_run

        print(dry_run(cfg))
        return 0
    from sidbench.distributed import launch_processes

    processes = launch_processes(cfg)
    if processes > 1:
        return relaunch_with_torchrun(processes, overrides)
    from sidbench.run import run

    result = run(cfg, overrides)
    if result.rank != 0:
        return 0
    console.print(f"done: {result.run_dir} ({result.progress.kimg:.1f} kimg, {result.progress.seconds:.0f} s) {result.summary()}")
    if result.mlflow_run_id:
        console.print(f"MLflow run {result.mlflow_run_id}; browse with `sidbench ui`")
    return 0


def relaunch_with_torchrun(processes: int, overrides: list[str]) -> int:
    """The same command under torchrun with `processes` DDP processes (a CPU's cores work as one
    DDP job; each process runs one thread). Errors are printed by the processes themselves."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from sidbench.processes import PARENT_ENV

    # One thread per process (torchrun would set it, with a banner); the processes print their own
    # errors, so torchrun's report of a failed child would only repeat them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")] + ["torch.distributed.elastic"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its modules' loggers carry levels of their own
    os.environ[PARENT_ENV] = str(os.getpid())  # the workers die with us, even if we are SIGKILLed
    sys.unraisablehook = ignore_rendezvous_timer_race(sys.unraisablehook)
    # torchrun's own log folder (its workers' error files) would stay in the temp folder after
    # every run; this one goes when the run ends, however it ends short of a SIGKILL.
    with tempfile.TemporaryDirectory(prefix="sidbench-torchrun-") as logs:
        args = get_args_parser().parse_args(
            ["--standalone", f"--nproc_per_node={processes}", f"--log-dir={logs}", "-m", "sidbench.cli", "run", *overrides])
        try:
            run(args)
        except ChildFailedError as e:
            return report_child_failure(e.failures)
        except SignalException as e:
            # Ctrl-C or a kill reached us: torchrun passed the signal on to the workers and waited
            # for them; rank 0 printed what can be resumed.
            return 128 + int(e.sigval)
    return 0


#: where torchrun's rendezvous keep-alive timer lives (its file, as a traceback names it)
RENDEZVOUS_UTILS = "torch/distributed/elastic/rendezvous/utils.py"


def ignore_rendezvous_timer_race(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """`hook` (a `sys.unraisablehook`), except for one harmless race of torchrun's: the rendezvous's
    keep-alive timer (torch/distributed/elastic/rendezvous/utils.py, `_PeriodicTimer`) is stopped by
    a `weakref.finalize` that sets its stop event and joins its thread; when the garbage collector
    happens to run on that very thread (a Ctrl-C ends the run while it ticks), the join raises
    "cannot join current thread" and Python prints a traceback, though the event is set and the
    thread ends. Any other unraisable exception goes to `hook`. Idempotent."""
    if getattr(hook, "_sidbench_rendezvous_race", False):
        return hook

    def filtered(unraisable: Any) -> None:
        tb, frames = unraisable.exc_traceback, []
        while tb is not None:
            frames.append(tb.tb_frame.f_code)
            tb = tb.tb_next
        race = (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "cannot join current thread"
                and any(c.co_name == "_stop_thread" and c.co_filename.replace(os.sep, "/").endswith(RENDEZVOUS_UTILS)
                        for c in frames))
        if not race:
            hook(unraisable)

    filtered._sidbench_rendezvous_race = True  # type: ignore[attr-defined]
    return filtered


def report_child_failure(failures: dict) -> int:  # rank -> torch's ProcessFailure
    """The exit code of a failed DDP run: that of its first failed process (torchrun then stops the
    others with SIGTERM). A process that exited with a code printed its own error (one line, or a
    traceback); one killed by a signal (the kernel's OOM killer, a segfault) printed nothing, so
    say which one died and how."""
    if not failures:
        return 1
    rank, first = min(failures.items(), key=lambda item: item[1].timestamp)
    if first.exitcode >= 0:
        return first.exitcode or 1
    console.print(f"[red]error:[/red] training process {rank} was killed by {first.signal_name()} without a Python "
                  "traceback (out of memory? see `dmesg`); resume with resume=<run dir>")
    return 128 - first.exitcode  # as a shell reports a signal
