"""The leaderboard keeps released generators measured here in a table of their own: a store holding a
training run, a teacher's measurement and measurements of released generators gives one training
row, the released generators' rows apart, and the papers' figures apart from both. Expected values
are the literal inputs below."""
from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest

from sidbench.harness import leaderboard as lb

RELEASED_COLUMNS = ["source", "dataset", "name", "method", "nfe", "metric", "value", "num_samples", "seed",
                    "metric_settings", "generator_dataset", "address", "sha256", "code_version", "run_id"]
REF = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"


def _entry(name: str, url: str):
    from sidbench.eval.published_generators import PublishedGenerator

    return PublishedGenerator(name=name, dataset="cifar10", method=name.split("-")[0], label=name, url=url, sha256=None,
                              sampling={"sampler": "one_step", "sigma": 2.5, "nfe": 1})


def _training_run(client, exp_id: str, *, bench: str | None = None) -> str:
    from mlflow.entities import Metric

    run_id = client.create_run(exp_id, tags={"method": "sid", "dataset": "cifar10", "seed": "0", "metric": "fid",
                                             "sidbench.settings": "set-sid", "nfe": "1",
                                             **({"sidbench.bench": bench} if bench else {})}).info.run_id
    now = int(time.time() * 1000)
    line = {"budget/fraction": 1.0, "kimg": 1.0, "compute/flops": 1e9, "compute/passes": 1e4, "seconds": 10.0}
    client.log_batch(run_id, metrics=[Metric("eval/fid", 30.0, now, 0), *(Metric(k, 0.0, now, 0) for k in line),
                                      Metric("eval/fid", 3.0, now, 1000), *(Metric(k, v, now, 1000) for k, v in line.items())])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _teacher_measurement(client, exp_id: str) -> str:
    from mlflow.entities import Metric

    run_id = client.create_run(exp_id, tags={"sidbench.kind": "teacher_measurement", "metric": "fid",
                                             "num_samples": "50000", "steps": "18"}).info.run_id
    client.log_batch(run_id, metrics=[Metric("teacher/fid", 1.99, int(time.time() * 1000), 0)])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from sidbench.config import compose
    from sidbench.eval.published_generators import record_published_metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(["dataset=cifar10", f"tracking.uri={uri}", f"output_root={tmp_path / 'runs'}"])
    file_a, file_b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    file_a.write_bytes(b"a")  # sha256 ca978112...
    file_b.write_bytes(b"b")  # sha256 3e23e816...
    settings = {"fid_mode": "legacy_tensorflow", "ref": REF}
    sid = _entry("sid-cifar10", "https://example.org/sid.pkl")
    sida = _entry("sida-cifar10", "https://example.org/sida.pkl")
    ids = {"older": record_published_metric(cfg, sid, file_a, metric="fid", values={"fid": 2.5}, num_samples=50000, settings=settings)}
    time.sleep(0.01)  # distinct start times: the newer measurement must win
    ids["sid"] = record_published_metric(cfg, sid, file_a, metric="fid", values={"fid": 1.95}, num_samples=50000, settings=settings)
    ids["sid_10k"] = record_published_metric(cfg, sid, file_a, metric="fid", values={"fid": 2.2}, num_samples=10000, settings=settings)
    ids["sida"] = record_published_metric(cfg, sida, file_b, metric="fid", values={"fid": 1.6}, num_samples=50000, settings=settings)
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("cifar10").experiment_id
    ids["train"] = _training_run(client, exp_id, bench="b1")
    ids["teacher"] = _teacher_measurement(client, exp_id)
    # a measurement that failed while it was written is never shown
    failed = client.create_run(exp_id, tags={"sidbench.kind": "published_generator", "metric": "fid", "name": "x"}).info.run_id
    client.set_terminated(failed, status="FAILED")
    return {"uri": uri, "ids": ids, "tmp": tmp_path, "client": client}


def test_released_generators_are_a_table_of_their_own(store: dict) -> None:
    out = store["tmp"] / "out"
    board = lb.build_leaderboard(store["uri"], out)
    ids = store["ids"]
    # the training table: the one training run, neither measurement kind
    trained = pd.read_csv(out / "leaderboard.csv")
    assert list(trained["run_ids"]) == [ids["train"]] and list(trained["source"]) == ["measured"]
    infos, _, skipped, _ = lb.read_runs(store["client"])
    assert [i["run_id"] for i in infos] == [ids["train"]] and skipped == []
    # the released generators: their own CSV, the newest of each measurement, best first
    released = pd.read_csv(out / "leaderboard_published_generators.csv", dtype={"seed": str})
    assert out / "leaderboard_published_generators.csv" in board.paths
    assert list(released.columns) == RELEASED_COLUMNS
    rows = released[["name", "value", "num_samples", "run_id"]].values.tolist()
    assert rows == [["sida-cifar10", 1.6, 50000, ids["sida"]], ["sid-cifar10", 1.95, 50000, ids["sid"]],
                    ["sid-cifar10", 2.2, 10000, ids["sid_10k"]]]
    first = released.iloc[0]
    assert (first["source"], first["dataset"], first["method"], first["nfe"], first["metric"], first["address"]) == \
        ("released generator, measured here", "cifar10", "sida", 1, "fid", "https://example.org/sida.pkl")
    assert first["sha256"] == "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"  # of b"b"
    assert first["metric_settings"] == f"fid_mode=legacy_tensorflow; ref={REF}" and first["generator_dataset"] == "cifar10"
    # the papers' figures: their own CSV, none of these rows
    papers = pd.read_csv(out / "leaderboard_published.csv", dtype={"source": str})
    assert papers["source"].str.startswith("published (arXiv:").all()
    assert not set(papers["method"]) & set(released["name"])

    text = io.StringIO()
    from rich.console import Console

    lb.print_leaderboard(board, Console(file=text, width=250, color_system=None))
    printed = text.getvalue()
    assert "Released generators, measured here" in printed and "https://example.org/sida.pkl" in printed
    assert printed.index("Released generators") < printed.index("Published figures (from the papers")


def test_only_released_generators_still_make_a_leaderboard(tmp_path: Path) -> None:
    from sidbench.config import compose
    from sidbench.eval.published_generators import record_published_metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(["dataset=cifar10", f"tracking.uri={uri}", f"output_root={tmp_path / 'runs'}"])
    (tmp_path / "a.pkl").write_bytes(b"a")
    record_published_metric(cfg, _entry("sid-cifar10", "https://example.org/sid.pkl"), tmp_path / "a.pkl", metric="fid",
                            values={"fid": 1.9}, num_samples=50000, settings={"fid_mode": "legacy_tensorflow", "ref": REF})
    board = lb.build_leaderboard(uri, tmp_path / "out")
    assert board.measured.empty and list(board.released["name"]) == ["sid-cifar10"]
    assert (tmp_path / "out" / "leaderboard.csv").is_file() and not list((tmp_path / "out").glob("*.png"))


def test_a_bench_shows_the_released_generators_of_its_datasets(store: dict, tmp_path: Path) -> None:
    board = lb.build_leaderboard(store["uri"], tmp_path / "b1", bench="b1")
    assert list(board.measured["run_ids"]) == [store["ids"]["train"]]
    assert sorted(board.released["name"]) == ["sid-cifar10", "sid-cifar10", "sida-cifar10"]
