"""The teacher's own measured metric, cached so every run on a dataset can show it as a reference line.

Measuring a teacher (50,000 Heun samples at 35 or 79 network evaluations each) costs far more
than one evaluation of a one-step generator, so it is done once, by
`sidbench fid teacher dataset=<d>`, and recorded in `<cache>/teacher-metrics.json`
(`$SIDBENCH_CACHE`, see `sidbench.download.default_cache_dir`). A run looks its teacher up there
(`sidbench.run.reference_metrics`) and logs the value as `teacher/<metric>`.

A record holds one measurement; what identifies it is what changes the number: the teacher file
(its SHA-256, so a renamed or moved copy still matches and a different file never does), the
metric, the FID mode, the reference statistics, the number of images and the Heun steps. A new
measurement with the same identity replaces the old one. The file is JSON and may be edited or
deleted by hand; an unreadable file is reported and treated as empty, never fatal to a run.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEACHER_METRICS_FILENAME = "teacher-metrics.json"
FORMAT = 1

#: The fields that identify a measurement (two records agreeing on all of them are the same one).
KEY_FIELDS = ("teacher_sha256", "metric", "mode", "ref", "num_samples", "steps")

_sha_memo: dict[tuple[str, int, int], str] = {}


def teacher_metrics_path(cache_dir: str | os.PathLike | None = None) -> Path:
    from sidbench.download import default_cache_dir

    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / TEACHER_METRICS_FILENAME


def teacher_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a teacher file (remembered per process while its size and mtime stay the same)."""
    from sidbench.download import sha256_file

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = sha256_file(p)
    return _sha_memo[key]


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["entries"]
        if not isinstance(entries, list):
            raise TypeError("'entries' is not a list")
        return [e for e in entries if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable teacher metrics cache %s (%s)", path, err)
        return []


def load_records(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every record in the cache (an empty list when there is none or it cannot be read)."""
    return _read(teacher_metrics_path(cache_dir))


def _key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(f) for f in KEY_FIELDS)


def record_teacher_metric(
    teacher_file: str | os.PathLike,
    *,
    metric: str,
    value: float,
    num_samples: int,
    steps: int,
    mode: str | None = None,
    ref: str | None = None,
    dataset: str | None = None,
    teacher_name: str | None = None,
    seed: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Store one measurement of a teacher (replacing an earlier one with the same identity).

    `mode` is the FID mode (None for metrics without modes); `ref` the reference statistics the
    value was measured against (None when the metric carries its own, as the digits ones do).
    The file is rewritten through a temporary file and a rename. Returns its path.
    """
    path = teacher_metrics_path(cache_dir)
    record = {
        "teacher_sha256": teacher_fingerprint(teacher_file),
        "metric": str(metric),
        "mode": None if mode is None else str(mode),
        "ref": None if ref is None else str(ref),
        "num_samples": int(num_samples),
        "steps": int(steps),
        "value": float(value),
        "dataset": dataset,
        "teacher_name": teacher_name,
        "teacher_file": str(Path(teacher_file).resolve()),
        "seed": seed,
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    entries = [e for e in _read(path) if _key(e) != _key(record)]
    entries.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"format": FORMAT, "entries": entries}, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def lookup_teacher_metric(
    teacher_file: str | os.PathLike,
    *,
    metric: str,
    num_samples: int | Iterable[int],
    steps: int,
    mode: str | None = None,
    ref: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """The cached record of this teacher and setting, or None.

    `num_samples` may be several counts in order of preference (e.g. the run's evaluation size,
    then its final size): the first count with a record wins. FIDs on other counts are never
    returned, since FID depends on the number of images.
    """
    entries = load_records(cache_dir)
    if not entries:
        return None
    try:
        sha = teacher_fingerprint(teacher_file)
    except OSError:
        return None
    counts = [num_samples] if isinstance(num_samples, int) else list(num_samples)
    for n in counts:
        want = (sha, str(metric), None if mode is None else str(mode), None if ref is None else str(ref), int(n), int(steps))
        for e in reversed(entries):
            if _key(e) == want and isinstance(e.get("value"), (int, float)):
                return e
    return None
