"""`sidbench ui`: a lean MLflow server that ends with its whole process tree, experiments marked as
model training, and (in headless Chromium) two runs compared in the UI."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sidbench.harness.ui import free_port, mark_experiments, runs_url, server_command, server_env, start_server, stop_server
from sidbench.tracking import EXPERIMENT_TAGS, MLflowTracker

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process trees are read from /proc (Linux)")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KIND = "mlflow.experimentKind"


# -- processes, from /proc ---------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie holds nothing and may never be reaped in a container without init)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# -- fast: the pieces ------------------------------------------------------------------------
def test_the_server_is_one_local_worker_without_the_job_queue() -> None:
    cmd = server_command("sqlite:////x/mlflow.db", 5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--workers") + 1] == "1" and cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////x/mlflow.db"
    assert server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free indeed
    assert runs_url("http://127.0.0.1:5123/", "7") == \
        "http://127.0.0.1:5123/#/experiments/7/runs?compareRunsMode=CHART&workflowType=machine_learning"


TREE = """
import signal, subprocess, sys, time
# a child that ignores SIGTERM (so stopping must escalate) and a grandchild under it
code = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
       "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
subprocess.Popen([sys.executable, "-c", code])
time.sleep(120)
"""


def test_stopping_the_server_ends_its_whole_process_group() -> None:
    proc = start_server([sys.executable, "-c", TREE])
    deadline = time.monotonic() + 30
    while len(tree := descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(tree) == 2, tree
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # a group of its own
    t0 = time.monotonic()
    stop_server(proc, grace=1.0)
    assert not wait_gone(tree | {proc.pid}, 5), "processes survived stop_server"
    assert time.monotonic() - t0 < 5


def test_the_server_gets_sigterm_when_its_supervisor_is_killed() -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sidbench.harness.ui import start_server; "
         "p = start_server([sys.executable, '-c', 'import time; time.sleep(120)']); print(p.pid, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    server = int(supervisor.stdout.readline())
    assert alive(server)
    supervisor.kill()
    supervisor.wait(10)
    assert not wait_gone({server}, 10), "the server outlived its SIGKILLed supervisor"


def test_experiments_are_marked_as_model_training(tmp_path: Path) -> None:
    assert EXPERIMENT_TAGS == {KIND: "custom_model_development"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    new = MLflowTracker(uri, "digits", tmp_path / "mlartifacts", run_name="a")
    assert client.get_experiment_by_name("digits").tags[KIND] == "custom_model_development"
    old_id = client.create_experiment("old")  # as sidbench made them before the tag
    assert KIND not in client.get_experiment(old_id).tags
    MLflowTracker(uri, "old", tmp_path / "mlartifacts", run_name="b")
    assert client.get_experiment(old_id).tags[KIND] == "custom_model_development"
    older_id = client.create_experiment("older")
    client.create_run(older_id)
    client.create_experiment("empty", tags={KIND: "genai_development"})  # a kind set on purpose stays
    shown = mark_experiments(uri)
    assert client.get_experiment(older_id).tags[KIND] == "custom_model_development"
    assert client.get_experiment_by_name("empty").tags[KIND] == "genai_development"
    assert client.get_experiment("0").tags[KIND] == "custom_model_development"  # Default: marked, not shown
    assert sorted(name for _, name in shown) == ["digits", "old", "older"]
    new.finish()


# -- slow: `sidbench ui` itself ----------------------------------------------------------------
@pytest.fixture(scope="module")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with experiment "digits" and two runs (method/seed tags, fd_pixel curves, kimg, flops)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for method, seed, scale in [("sid", 0, 1.0), ("dmd", 1, 1.7)]:
        tracker = MLflowTracker(uri, "digits", root / "mlartifacts", run_name=f"{method}-seed{seed}")
        tracker.set_tags({"method": method, "seed": str(seed)})
        for step in range(0, 50, 10):
            tracker.log_metrics({"eval/fd_pixel": scale * 8.0 / (1 + step), "kimg": step / 10,
                                 "compute/flops": step * 1e11}, step=step)
        tracker.finish()
    return root / "mlflow.db"


@pytest.fixture
def store(filled_store: Path, tmp_path: Path) -> str:
    """A private copy of the filled store (tests mark and add experiments)."""
    shutil.copy(filled_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


class UI:
    """`sidbench ui` as a subprocess: its standard output lines, collected as they come."""

    def __init__(self, uri: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.err_path = cwd / "ui.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "sidbench.cli", "ui", f"tracking.uri={uri}"], cwd=cwd,
                                     env=env, stdout=subprocess.PIPE, stderr=self.err_path.open("w"), text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def line(self, prefix: str, timeout: float = 150) -> str:
        deadline, exited = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if found := [ln for ln in self.lines if ln.startswith(prefix)]:
                return found[0].strip()
            if self.proc.poll() is not None:
                exited = exited or time.monotonic()
                if time.monotonic() - exited > 1:  # the reader had a second to catch up
                    break
            time.sleep(0.1)
        raise AssertionError(f"no `{prefix}` line; rc {self.proc.poll()}; stdout {self.lines}; "
                             f"stderr {self.err_path.read_text()[-3000:]}")

    def address(self) -> str:
        return self.line("ui ").split()[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def ui_process(tmp_path: Path):
    started: list[UI] = []

    def start(uri: str) -> UI:
        started.append(UI(uri, tmp_path))
        return started[-1]

    yield start
    for ui in started:  # a failed test must not leave a server behind
        ui.kill()


@pytest.mark.slow
def test_sigterm_to_sidbench_ui_ends_its_whole_process_tree(store: str, ui_process) -> None:
    client = MlflowClient(tracking_uri=store)
    legacy = client.create_experiment("legacy")  # an experiment from before the tags, with a run
    client.create_run(legacy, run_name="old-run")
    ui = ui_process(store)
    base = ui.address()
    with urllib.request.urlopen(base + "health", timeout=10) as r:
        assert r.status == 200
    assert ui.line("runs legacy ") == f"runs legacy {runs_url(base, legacy)}"
    assert ui.line("runs digits ").startswith("runs digits " + base)
    assert all(ln.startswith(("ui ", "runs ")) for ln in ui.lines), ui.lines  # MLflow's chatter goes to stderr
    tree = descendants(ui.proc.pid)
    commands = [cmdline(p) for p in tree]
    # mlflow server + uvicorn: no huey job queue, no uvicorn worker pool
    assert len(tree) == 2 and any(" mlflow server " in c for c in commands), commands
    assert not any("huey" in c or "_job_runner" in c for c in commands), commands
    assert client.get_experiment(legacy).tags[KIND] == "custom_model_development"

    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(30) == 0
    assert not wait_gone(tree, 5), [cmdline(p) for p in tree if alive(p)]


@pytest.mark.slow
def test_sidbench_ui_ends_when_the_server_dies_on_its_own(store: str, ui_process) -> None:
    ui = ui_process(store)
    ui.address()
    tree = descendants(ui.proc.pid)
    server = next(p for p in tree if " mlflow server " in cmdline(p))
    os.kill(server, signal.SIGKILL)  # uvicorn is left without its parent
    assert ui.proc.wait(30) == 128 + signal.SIGKILL
    assert not wait_gone(tree, 5), [cmdline(p) for p in tree if alive(p)]
    assert "exited on its own" in ui.err_path.read_text()


@pytest.mark.slow
def test_two_runs_compared_in_a_real_browser(store: str, ui_process, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    t0 = time.monotonic()
    ui = ui_process(store)
    url = ui.line("runs digits ").split()[2]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # assertions too (5 s by default): the UI is slow on a loaded machine
            page.goto(url)
            # The experiment opens on its runs (not the GenAI overview), in chart mode.
            runs = page.get_by_role("checkbox", name="Press Space to toggle row selection (unchecked)")
            expect(runs).to_have_count(2)
            for name in ("sid-seed0", "dmd-seed1"):
                expect(page.get_by_role("link", name=name)).to_be_visible()
            runs.first.check()
            runs.first.check()  # the first unchecked one: now the other run
            expect(page.get_by_role("checkbox", name="Press Space to toggle row selection (checked)")).to_have_count(2)
            charts = page.get_by_test_id("experiment-view-compare-runs-chart-area")
            card = charts.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="eval/fd_pixel")
            expect(card).to_have_count(1)
            expect(card.locator(".js-plotly-plot")).to_have_count(1)  # a drawn plot, not an empty card
            for name in ("sid-seed0", "dmd-seed1"):
                expect(card.get_by_text(f"{name} (eval/fd_pixel)")).to_be_visible()
            card.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "runs-chart.png"))
            page.get_by_role("button", name="Compare").click()
            expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
            for name in ("sid-seed0", "dmd-seed1"):
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            expect(page.get_by_role("link", name="eval/fd_pixel")).to_be_visible()  # its metric history, both runs
            page.screenshot(path=str(tmp_path / "compare-runs.png"))
        finally:
            browser.close()
    assert (tmp_path / "runs-chart.png").stat().st_size > 10_000
    tree = descendants(ui.proc.pid)
    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(30) == 0
    assert not wait_gone(tree, 5)
    print(f"browser test: {time.monotonic() - t0:.1f} s")
