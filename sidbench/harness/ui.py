"""`sidbench ui`: the MLflow UI on the run store, started lean and stopped with everything it started.

MLflow's server is a process tree (`mlflow server` -> uvicorn, plus a huey job queue of ~8
consumers and their workers when job execution is on). Stopping only the `mlflow` process leaves
the rest running, so the tree gets its own session (= process group) and is always ended as a group:
on SIGINT/SIGTERM to `sidbench ui`, when the server dies on its own, and (Linux) when `sidbench ui`
itself is killed. The job queue is not started at all (`server_env`), and `sidbench ui` execs a
small supervisor (`exec_serve`) so that it does not hold torch in memory while the UI runs.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlencode

from sidbench.processes import death_signal_setup

HOST = "127.0.0.1"

# MLflow 3.17's UI takes the mode of an experiment's pages from its "GenAI | Model training" switch:
# the `workflowType` query parameter, else the browser's localStorage, default "genai" (an overview
# of traces and token usage). It reads the `mlflow.experimentKind` tag (sidbench.tracking.
# EXPERIMENT_TAGS) only where that switch is off (MLflow 3 UIs before it), so the addresses we print
# carry the parameter.
WORKFLOW_TYPE = "machine_learning"


def check_port(port: int, host: str = HOST) -> None:
    """One line if `port` on `host` is taken (MLflow's server would only report that it exited)."""
    from sidbench.errors import InputError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"--port {port}: {host}:{port} is in use by another program ({e.strerror}); choose "
                             "another port, or leave --port out for a free one") from None


def free_port(host: str = HOST) -> int:
    """A port that nothing listens on now (the OS picks it; MLflow binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(uri: str, port: int, host: str = HOST) -> list[str]:
    """`mlflow server` with one uvicorn worker: one user, one browser; each extra worker is another
    ~250 MB process that imports all of MLflow."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: without the GenAI job queue (MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    read in mlflow/server/__init__.py `_run_server`; it starts the huey consumers that run LLM
    judges and trace rollups, nothing a training run's pages use) and without usage telemetry.
    Values already set in the environment win, so either can be turned back on."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def _child_setup() -> Callable[[], None]:
    """Runs in the child between fork and exec: unblock the signals `serve` blocks around the
    fork, and (Linux) ask for SIGTERM when `sidbench ui` dies, so that even a SIGKILLed `sidbench ui`
    takes the server along (`mlflow server` forwards SIGTERM to uvicorn). Everything the child
    calls is prepared here, in the parent: the child must not import or allocate."""
    die_with_parent = death_signal_setup(signal.SIGTERM)

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        die_with_parent()

    return setup


def start_server(command: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start `command` as the leader of a new session, so that its whole tree can be signalled at
    once (and Ctrl-C in a terminal reaches only `sidbench ui`, which then stops the tree)."""
    return subprocess.Popen(command, env=dict(env) if env is not None else None,
                            start_new_session=True, preexec_fn=_child_setup(),
                            stdout=2)  # MLflow's output to our stderr: our stdout holds only the addresses


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (zombies excluded: they hold no memory and a container
    without an init may never reap them)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no /proc (macOS): signal 0 says whether any member is left
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> int | None:
    """End the server's whole process group: SIGTERM (uvicorn shuts down cleanly), then SIGKILL for
    whatever is left after `grace` seconds. Returns the leader's exit status."""
    pgid = proc.pid  # the session leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_members(pgid):
            return proc.returncode
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float = 180.0) -> bool:
    """True once the server answers `url`health; False if it exits first or `timeout` passes
    (a cold start imports all of MLflow: 10-60 s on a small, busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in chart (comparison) mode: one chart per metric, all visible runs
    overlaid; selecting runs there and pressing Compare opens `#/compare-runs?runs=[...]`. The route
    and `compareRunsMode` (TABLE, CHART, ...) are those of MLflow 3.17's UI (server/js/build:
    getExperimentPageTabRoute(id, "runs")); the bare `#/experiments/<id>` redirects to the overview
    of the current workflow type and drops the mode."""
    query = urlencode({"compareRunsMode": "CHART", "workflowType": WORKFLOW_TYPE})
    return f"{base}#/experiments/{experiment_id}/runs?{query}"


def mark_experiments(uri: str) -> list[tuple[str, str]]:
    """Give every active experiment of the store that lacks them the tags that mark it as model
    training (stores filled before sidbench set them). Returns (id, name) of those with runs: the
    Default experiment that MLflow makes in every store is usually empty."""
    from mlflow.entities import ViewType

    from sidbench.tracking import add_experiment_tags, all_pages, open_store

    client = open_store(uri)
    with_runs = []
    for exp in all_pages(client.search_experiments, view_type=ViewType.ACTIVE_ONLY):
        add_experiment_tags(client, exp)
        if client.search_runs([exp.experiment_id], max_results=1):
            with_runs.append((exp.experiment_id, exp.name))
    return with_runs


def exec_serve(uri: str, port: int | None, experiments: list[tuple[str, str]]) -> int:
    """Become `python -m sidbench.harness.ui ...`: the same pid (signals and `$!` still reach it),
    without the ~800 MB of torch and MLflow that composing the config and marking the experiments
    imported, which would otherwise sit idle for the whole UI session. POSIX only, like the process
    groups and signal masks of `serve`."""
    argv = [sys.executable, "-m", "sidbench.harness.ui", uri, "--experiments", json.dumps(experiments)]
    if port:
        argv += ["--port", str(port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    raise AssertionError("unreachable")


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve(uri: str, port: int | None = None, experiments: Sequence[tuple[str, str]] = (), host: str = HOST) -> int:
    """Run the MLflow UI on `uri` until SIGINT/SIGTERM or until it dies. Standard output gets its
    address (`ui <address>`), then `runs <name> <address>` per experiment in `experiments`; all else
    (MLflow's own output included) goes to standard error. Returns the exit status: 0 when stopped."""
    port = port or free_port(host)
    base = f"http://{host}:{port}/"
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    proc = None
    try:
        _say(f"starting the MLflow UI for {uri}")
        # SIGINT/SIGTERM wait across the fork, so that a stop request cannot land between the
        # server's birth and the moment `proc` holds its handle (the child unblocks them).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        try:
            proc = start_server(server_command(uri, port, host), server_env())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if not wait_until_up(proc, base):
            _say(f"error: the MLflow UI did not start on {base} (exit status {proc.poll()})")
            return 1
        print(f"ui {base}", flush=True)
        for exp_id, name in experiments:
            print(f"runs {name} {runs_url(base, exp_id)}", flush=True)
        _say("Ctrl-C stops it")
        status = proc.wait()
        _say(f"error: the MLflow UI exited on its own (exit status {status})")
        return 128 - status if status < 0 else status or 1  # killed by signal N: 128+N, as a shell says
    except _Stop:
        return 0
    finally:
        # Ignore further stop requests while stopping: a second Ctrl-C must not leave half a tree.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        try:
            if proc is not None:
                stop_server(proc)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """`python -m sidbench.harness.ui URI [--port N] [--experiments JSON]`, what `sidbench ui` execs."""
    import argparse

    parser = argparse.ArgumentParser(prog="sidbench ui")
    parser.add_argument("uri")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--experiments", default="[]", help="JSON list of [id, name]")
    args = parser.parse_args(argv)
    return serve(args.uri, args.port, [tuple(e) for e in json.loads(args.experiments)])


if __name__ == "__main__":
    sys.exit(main())
