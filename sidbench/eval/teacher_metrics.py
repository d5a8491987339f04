"""The teacher's own measured metric, kept in MLflow so every run on a dataset can show it as a reference line.

Measuring a teacher (50,000 Heun samples at 35 or 79 network evaluations each) costs far more
than one evaluation of a one-step generator, so it is done once, by
`sidbench fid teacher dataset=<d>`, and recorded as an MLflow run of its own in the dataset's
experiment, the store that already holds the training runs (`sidbench.tracking.tracking_uri`).
A run looks its teacher up there (`sidbench.run.reference_metrics`) and logs the value as
`teacher/<metric>`. With `tracking.enabled=false` nothing is recorded and nothing looked up.

A measurement run is tagged `sidbench.kind=teacher_measurement` (the leaderboard skips such runs)
and with what changes the number: the teacher file (`teacher_sha256`, so a renamed or moved copy
still matches and a different file never does), `metric`, `num_samples`, the Heun `steps`, and the
metric's own settings (`Metric.measurement_settings`: FID's `fid_mode` and `ref`; none for the
digits metrics). Its value is the metric `teacher/<metric>`, the key training
runs log the reference line under, so MLflow's charts put the two side by side; not
`eval/<metric>`, which means a generator's evaluation point to the leaderboard and the charts.
Measurements are never overwritten: the newest matching run wins, and deleting it in MLflow
brings the one before back. Caches in the former JSON file (`<cache>/teacher-metrics.json`) are
ignored.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: The `sidbench.kind` tag of a measurement run.
MEASUREMENT_KIND = "teacher_measurement"

_sha_memo: dict[tuple[str, int, int], str] = {}


def teacher_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a teacher file (remembered per process while its size and mtime stay the same)."""
    from sidbench.download import sha256_file

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = sha256_file(p)
    return _sha_memo[key]


def record_teacher_metric(
    cfg: DictConfig,
    teacher_file: str | os.PathLike,
    *,
    metric: str,
    value: float,
    num_samples: int,
    steps: int,
    settings: Mapping[str, str] | None = None,
) -> str | None:
    """Record one measurement of a teacher as a FINISHED MLflow run in experiment `cfg.dataset.name`.

    `settings` are the metric's settings the value depends on, kept as tags (FID's
    `{"fid_mode": ..., "ref": ...}`, from `Metric.measurement_settings`; none for metrics that carry
    their own reference, as the digits ones do). Returns the run id, or None when
    `cfg.tracking.enabled` is false.
    """
    if not cfg.tracking.enabled:
        return None
    from mlflow.entities import Metric
    from sidbench.tracking import code_version, ensure_experiment, open_store, retry_locked, tracking_uri

    uri = tracking_uri(cfg)
    # The same experiment and artifact folder as the training runs (sidbench.tracking.start_tracker).
    exp_id = ensure_experiment(uri, str(cfg.dataset.name), Path(cfg.output_root) / "mlartifacts")
    tags = {"sidbench.kind": MEASUREMENT_KIND, "teacher_sha256": teacher_fingerprint(teacher_file),
            "metric": str(metric), "num_samples": str(int(num_samples)), "steps": str(int(steps)),
            "teacher": str(Path(teacher_file).resolve()), "dataset": str(cfg.dataset.name), "seed": str(cfg.eval.seed),
            "code_version": code_version()}
    tags |= {k: str(v) for k, v in (settings or {}).items()}
    client = open_store(uri)
    # The file's name, not the card's: `dataset.teacher.path=` may point at another teacher.
    name = f"teacher-{Path(teacher_file).stem}-{metric}"
    run_id = retry_locked(lambda: client.create_run(exp_id, run_name=name, tags=tags)).info.run_id
    try:
        item = Metric(f"teacher/{metric}", float(value), int(time.time() * 1000), 0)
        retry_locked(lambda: client.log_batch(run_id, metrics=[item]))
    except BaseException:
        retry_locked(lambda: client.set_terminated(run_id, status="FAILED"))  # never looked up
        raise
    retry_locked(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id


def lookup_teacher_metrics(
    cfg: DictConfig,
    teacher_file: str | os.PathLike,
    *,
    metric: str,
    num_samples: Iterable[int],
    steps: int,
    settings: Mapping[str, str] | None = None,
) -> dict[int, dict[str, Any]]:
    """The newest measurement run of this teacher and setting at each of `num_samples` that has
    one, as its tags plus `run_id` and `value`; empty if none or `cfg.tracking.enabled` is false.

    `settings` must match the measurement's (see `record_teacher_metric`). FIDs on other counts
    are never returned, since FID depends on the number of images; the caller picks among counts.
    One search of the store and one hash of the teacher file serve every count.
    """
    if not cfg.tracking.enabled:
        return {}
    from sidbench.tracking import all_pages, open_store, retry_locked, tracking_uri

    client = open_store(tracking_uri(cfg))
    exp = retry_locked(lambda: client.get_experiment_by_name(str(cfg.dataset.name)))
    if exp is None:
        return {}
    # The store narrows to this metric and sampler; the rest is compared here, so that a `ref`
    # (a path or address) is never quoted into a filter, and the file is hashed only when some
    # measurement could match it (hashing reads the whole file, hundreds of MB for an EDM teacher).
    filt = (f"tags.`sidbench.kind` = '{MEASUREMENT_KIND}' AND tags.metric = '{metric}' "
            f"AND tags.steps = '{int(steps)}' AND attributes.status = 'FINISHED'")
    runs = all_pages(client.search_runs, experiment_ids=[exp.experiment_id], filter_string=filt,
                     order_by=["attributes.start_time DESC"])
    if not runs:
        return {}
    try:
        sha = teacher_fingerprint(teacher_file)
    except OSError:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for n in dict.fromkeys(int(n) for n in num_samples):
        want = {"teacher_sha256": sha, "num_samples": str(n), **{k: str(v) for k, v in (settings or {}).items()}}
        for run in runs:  # newest first
            value = run.data.metrics.get(f"teacher/{metric}")
            if value is not None and all(run.data.tags.get(k) == v for k, v in want.items()):
                found[n] = {**run.data.tags, "run_id": run.info.run_id, "value": float(value)}
                break
    return found
