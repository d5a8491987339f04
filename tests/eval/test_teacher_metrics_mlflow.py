"""Teacher measurements are MLflow runs of the dataset's experiment, but never leaderboard rows.

(`sidbench fid teacher` recording them and runs logging them: tests/test_cli_eval.py.)
"""
from __future__ import annotations

from pathlib import Path

from sidbench.testing.tiny import tiny_overrides


def test_leaderboard_ignores_teacher_measurements(tiny_teacher: Path, run_env: Path) -> None:
    from mlflow.tracking import MlflowClient

    from sidbench.config import compose
    from sidbench.eval.teacher_metrics import record_teacher_metric
    from sidbench.harness.leaderboard import read_runs
    from sidbench.tracking import tracking_uri

    cfg = compose(tiny_overrides(tiny_teacher))
    measured = record_teacher_metric(cfg, tiny_teacher, metric="fd_pixel", value=0.2, num_samples=64, steps=18)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    assert client.get_run(measured).info.status == "FINISHED"  # so the status check alone would let it in
    # A finished training run beside it, with a curve of one evaluation.
    exp_id = client.get_experiment_by_name("digits").experiment_id
    trained = client.create_run(exp_id, tags={"method": "sid", "metric": "fd_pixel"}).info.run_id
    client.log_metric(trained, "eval/fd_pixel", 1.5, step=0)
    client.set_terminated(trained, status="FINISHED")

    infos, curve, skipped, _ = read_runs(client)
    assert [i["run_id"] for i in infos] == [trained] and skipped == []
    assert set(curve["run_id"]) == {trained}
