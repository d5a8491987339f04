"""Generators released by their authors, measured with sidbench's own protocol.

The catalogue (`sidbench/harness/published_generators.yaml`, one entry per file: name, dataset,
method, address, SHA-256, sampling recipe, the paper's FID for context) says what
`sidbench fid published=<name>` can score. The file is fetched once into the cache
(`sidbench.download.cached_download`, as `<name>.pkl` or `<name>.bin`), read without running code
from it (an EDM pickle by the restricted unpickler; a state dict by `torch.load(weights_only=True)`
into the catalogue's constructor) and sampled with the catalogue's recipe; an entry whose SHA-256 is not recorded yet is
used with a warning that prints the file's hash.

A measurement is recorded as a FINISHED MLflow run of its own in the dataset's experiment, tagged
`sidbench.kind=published_generator` with what identifies it (`name`, `method`, `dataset`,
`generator_dataset`, `url`, `sha256` of the file used, `metric`, `num_samples`, `nfe`, the eval
seed and label mode, and the metric's own settings, FID's `fid_mode` and `ref`, each a tag and all
together in `metric_settings`). Its values are the metrics `published_generator/<value>` (FID:
`published_generator/fid`; precision/recall: `.../precision` and `.../recall`): neither
`eval/<metric>` (a training run's curve) nor `teacher/<metric>`. The leaderboard shows these runs
as their own table ("released generator, measured here"), apart from training runs and from the
papers' figures.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: The `sidbench.kind` tag of a published generator's measurement run, and its metric prefix.
KIND = "published_generator"
METRIC_PREFIX = "published_generator/"
#: The catalogue file inside the package (tests point this at a catalogue of their own).
CATALOGUE = files("sidbench.harness") / "published_generators.yaml"
#: The file formats a released generator comes in: EDM's pickle (the network under `ema`, read by the
#: restricted unpickler, its constructor inside) or a `torch.save`d state dict (read with
#: `weights_only=True`; the catalogue gives its constructor).
FORMATS = {"edm_pickle": ".pkl", "state_dict": ".bin"}
#: What `paper_fid_of` may say the paper's figure is of.
PAPER_FID_OF = {"generator": "this generator's setting", "best_of_sida_sid2a": "best SiDA/SiD²A run on the dataset"}

_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CatalogueError(RuntimeError):
    """The catalogue file itself is malformed (a bug in the package, not in the user's input)."""


@dataclass(frozen=True)
class PublishedGenerator:
    """One released generator of the catalogue (see `sidbench/harness/published_generators.yaml`)."""

    name: str
    dataset: str
    method: str
    label: str
    url: str
    sha256: str | None
    sampling: dict[str, Any] = field(hash=False)
    alpha: float | None = None
    format: str = "edm_pickle"
    constructor: dict[str, Any] | None = field(default=None, hash=False)
    paper_fid: float | None = None
    paper_fid_of: str | None = None
    paper_source: str | None = None

    @property
    def nfe(self) -> int:
        return int(self.sampling["nfe"])

    @property
    def filename(self) -> str:
        """Its name in the cache: the catalogue name, since the authors' file names repeat
        (`network-snapshot-...pkl`, `pytorch_model.bin`) and do not say which dataset they are."""
        return f"{self.name}{FORMATS[self.format]}"

    def paper(self) -> str:
        """The paper's figure as one short text, e.g. `1.923 (arXiv:2404.04057)`."""
        if self.paper_fid is None:
            return ""
        scope = "" if self.paper_fid_of == "generator" else f", {PAPER_FID_OF.get(str(self.paper_fid_of), '')}"
        return f"{self.paper_fid:g} ({self.paper_source}{scope})"


def _entry(raw: Mapping[str, Any], where: str) -> PublishedGenerator:
    required = ("name", "dataset", "method", "label", "url", "sampling")
    missing = [k for k in required if not raw.get(k)]
    if missing:
        raise CatalogueError(f"{where}: entry {raw.get('name', '?')!r} lacks {', '.join(missing)}")
    known = {*required, "sha256", "alpha", "format", "constructor", "paper_fid", "paper_fid_of", "paper_source"}
    if set(raw) - known:
        raise CatalogueError(f"{where}: entry {raw['name']!r} has unknown keys {sorted(set(raw) - known)}")
    name, sha, sampling = str(raw["name"]), raw.get("sha256"), dict(raw["sampling"])
    if not _NAME.match(name):
        raise CatalogueError(f"{where}: {name!r} is not a name of lowercase letters, digits, '.' and '-'")
    if sha is not None and not _HEX64.match(str(sha)):
        raise CatalogueError(f"{where}: {name}: sha256 must be 64 lowercase hex digits or null, got {sha!r}")
    if "sampler" not in sampling or "nfe" not in sampling:
        raise CatalogueError(f"{where}: {name}: the sampling recipe needs a sampler and its nfe, got {sampling}")
    if not str(raw["url"]).startswith(("https://", "http://")):
        raise CatalogueError(f"{where}: {name}: the address must be http(s), got {raw['url']!r}")
    fmt = str(raw.get("format") or "edm_pickle")
    if fmt not in FORMATS:
        raise CatalogueError(f"{where}: {name}: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if (fmt == "state_dict") != bool(raw.get("constructor")):
        raise CatalogueError(f"{where}: {name}: a state_dict file needs its constructor, and only it has one")
    of = raw.get("paper_fid_of")
    if (raw.get("paper_fid") is None) != (of is None) or (of is not None and of not in PAPER_FID_OF):
        raise CatalogueError(f"{where}: {name}: paper_fid needs paper_fid_of, one of {sorted(PAPER_FID_OF)}")
    return PublishedGenerator(
        name=name, dataset=str(raw["dataset"]), method=str(raw["method"]), label=str(raw["label"]),
        url=str(raw["url"]), sha256=None if sha is None else str(sha), sampling=sampling,
        alpha=None if raw.get("alpha") is None else float(raw["alpha"]),
        format=fmt, constructor=dict(raw["constructor"]) if raw.get("constructor") else None,
        paper_fid=None if raw.get("paper_fid") is None else float(raw["paper_fid"]),
        paper_fid_of=None if of is None else str(of),
        paper_source=None if raw.get("paper_source") is None else str(raw["paper_source"]),
    )


def load_catalogue(path: str | os.PathLike | None = None) -> dict[str, PublishedGenerator]:
    """The catalogue's entries by name, in file order (default: the package's `CATALOGUE`)."""
    import yaml

    source = CATALOGUE if path is None else Path(path)
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    out: dict[str, PublishedGenerator] = {}
    for raw in data.get("generators") or []:
        entry = _entry(raw, str(source))
        if entry.name in out:
            raise CatalogueError(f"{source}: {entry.name!r} is listed twice")
        out[entry.name] = entry
    return out


def find_published(name: str) -> PublishedGenerator:
    """The catalogue entry `name`; a one-line error listing the names there are otherwise."""
    from sidbench.config import ConfigError

    catalogue = load_catalogue()
    if name not in catalogue:
        raise ConfigError(f"published={name}: no released generator of that name; choose one of "
                          f"{', '.join(catalogue)} (`sidbench list`)")
    return catalogue[name]


def fetch_published(entry: PublishedGenerator, *, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> Path:
    """The local copy of `entry`'s file: from the cache, else downloaded into it. Offline, one
    line names the file, its address and where to put a copy. Without a recorded SHA-256 the file
    is used with a one-line warning that prints its hash."""
    from sidbench.download import cached_download

    return cached_download(entry.url, entry.filename, sha256=entry.sha256, cache_dir=cache_dir, progress=progress,
                           warn_unverified=f"the `{entry.name}` entry of sidbench/harness/published_generators.yaml")


def record_published_metric(
    cfg: DictConfig,
    entry: PublishedGenerator,
    file: str | os.PathLike,
    *,
    metric: str,
    values: Mapping[str, float],
    num_samples: int,
    settings: Mapping[str, str] | None = None,
) -> str | None:
    """Record one measurement of a released generator as a FINISHED MLflow run in experiment
    `cfg.dataset.name` (the dataset it was scored against): `values` the metric's values by name
    (`{"fid": v}`; `{"precision": p, "recall": r}`), each logged as `published_generator/<name>`.
    `settings` are the metric's settings the values depend on (`Metric.measurement_settings`).
    Returns the run id, or None when `cfg.tracking.enabled` is false."""
    if not cfg.tracking.enabled:
        return None
    if not values or not all(math.isfinite(float(v)) for v in values.values()):
        raise ValueError(f"{metric} of {entry.name} is {dict(values)}: not recorded")
    from mlflow.entities import Metric

    from sidbench.download import sha256_file
    from sidbench.tracking import code_version, ensure_experiment, open_store, retry_locked, tracking_uri

    uri = tracking_uri(cfg)
    # The training runs' experiment and artifact folder (sidbench.tracking.start_tracker).
    exp_id = ensure_experiment(uri, str(cfg.dataset.name), Path(cfg.output_root) / "mlartifacts")
    tags = {"sidbench.kind": KIND, "name": entry.name, "method": entry.method, "label": entry.label,
            "dataset": str(cfg.dataset.name), "generator_dataset": entry.dataset, "url": entry.url,
            "sha256": sha256_file(file), "file": str(Path(file).resolve()), "metric": str(metric),
            "num_samples": str(int(num_samples)), "nfe": str(entry.nfe), "seed": str(cfg.eval.seed),
            "label_mode": str(cfg.eval.label_mode), "code_version": code_version()}
    tags |= {k: str(v) for k, v in (settings or {}).items()}
    # also as one tag, so that a reader (the leaderboard) tells them from the other tags unaided
    tags["metric_settings"] = "; ".join(f"{k}={v}" for k, v in sorted((settings or {}).items()))
    client = open_store(uri)
    run_id = retry_locked(lambda: client.create_run(exp_id, run_name=f"published-{entry.name}-{metric}",
                                                    tags=tags)).info.run_id
    try:
        now = int(time.time() * 1000)
        items = [Metric(METRIC_PREFIX + str(k), float(v), now, 0) for k, v in values.items()]
        retry_locked(lambda: client.log_batch(run_id, metrics=items))
    except BaseException:
        retry_locked(lambda: client.set_terminated(run_id, status="FAILED"))  # never read back
        raise
    retry_locked(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id
