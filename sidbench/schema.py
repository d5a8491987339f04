"""Typed schemas of the `sidbench run` config, checked in the parent process before anything starts.

Each group is a dataclass: a field's annotation is its type (`int`, `float`, `str`, `bool`, `X | None`,
`list[X]` or a nested schema) and `setting(...)` states its allowed values. `validate_run_config`
walks the resolved config against them and raises one `ConfigError` (exit code 2) whose single line
names the setting, the bad value and what is allowed: `trainer.batch=-3: must be an integer >= 1`.
Keys a schema does not name are left alone, and keys it names but the config lacks are skipped.

A method's settings are one such dataclass, its class's `settings` (methods/base.py), whose fields
also hold each setting's default and a one-line `doc`: `sidbench.config` stores the defaults as
the `method/<name>` config (presets override them), and a classmethod `check(cfg)` on the class,
if it has one, checks the relations between settings (and with the rest of the config) here too.

No torch at import time: choices that live in torch-heavy modules are looked up when checking.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from types import UnionType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sidbench.config import ConfigError

Choices = Sequence[str] | Callable[[], Sequence[str]]


def setting(default: Any = MISSING, *, doc: str | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: Choices | None = None, pattern: str | None = None,
            exists: bool = False, length: int | None = None, allowed: str | None = None) -> Any:
    """A schema field: its `default` (a method's setting: a list or a nested settings class is made
    fresh for each instance; a string "${...}" is an interpolation, resolved when the config is
    composed) with its one-line `doc` (required with a default); bounds for numbers, `choices` (a
    sequence, or a function that returns one) or a full-match `pattern` for strings, `exists` for
    paths that must be on disk, `length` for lists of a fixed size (a pair); `allowed` replaces the
    generated description of what is allowed. Without a default: a field of a YAML group's schema."""
    if default is not MISSING and not (doc and doc.strip() and "\n" not in doc):
        raise TypeError("a setting with a default needs its one-line doc=")
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "pattern": pattern, "exists": exists,
            "length": length, "allowed": allowed}
    metadata = {k: v for k, v in meta.items() if v is not None and v is not False}  # keep bounds of 0
    return _field(default, metadata)


def _field(default: Any, metadata: Mapping[str, Any]) -> Any:
    if isinstance(default, type) and dataclasses.is_dataclass(default):  # a nested group of settings
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):  # mutable: a copy for each instance
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(base: type, name: str, default: Any, doc: str | None = None) -> Any:
    """Field `name` of settings class `base` with another default (and doc), its bounds kept: for a
    subclass that changes a default (SiDA's alpha, DMD's ttur)."""
    (f,) = [f for f in dataclasses.fields(base) if f.name == name]
    return _field(default, {**f.metadata, **({"doc": doc} if doc else {})})


def defaults(settings: type) -> dict[str, Any]:
    """The default of every setting of a settings class, as plain values (nested groups as dicts)."""
    return dataclasses.asdict(settings())


def docs(settings: type, prefix: str = "") -> dict[str, str]:
    """Dotted name -> one-line doc of every setting (nested groups included; None: not documented)."""
    hints = typing.get_type_hints(settings)
    out: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        base, _ = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(base):
            out |= docs(base, f"{prefix}{f.name}.")
        out[prefix + f.name] = f.metadata.get("doc")
    return out


# -- choices owned by other modules (imported when checking: some import torch) ----------------
def _budget_units() -> Sequence[str]:
    from sidbench.trainer.budget import UNITS

    return UNITS


def _lr_anneals() -> Sequence[str]:
    from sidbench.trainer.schedule import BUDGET_ANNEALING

    return BUDGET_ANNEALING


def _precisions() -> Sequence[str]:
    from sidbench.trainer.context import PRECISIONS

    return tuple(PRECISIONS)


def _optimizer_kernels() -> Sequence[str]:
    from sidbench.trainer.speed import OPTIMIZER_KERNELS

    return OPTIMIZER_KERNELS


def _compile_modes() -> Sequence[str]:
    from sidbench.trainer.speed import COMPILE_MODES

    return COMPILE_MODES


def _metric_names() -> Sequence[str]:
    """The registered metrics, plugins included (`sidbench.eval.METRICS`; naming them imports none)."""
    from sidbench.eval import METRICS

    return METRICS.names()


def _fid_modes() -> Sequence[str]:
    from sidbench.eval.fid import FID_MODES

    return FID_MODES


LABEL_MODES = ("cyclic", "uniform")  # sidbench.eval.images.draw_labels


# -- the groups ------------------------------------------------------------------------------------
@dataclass
class BudgetSchema:
    unit: str = setting(choices=_budget_units)
    value: float = setting(gt=0)


@dataclass
class LogPointsSchema:
    count: int = setting(ge=0)
    first: float = setting(gt=0, le=1)


@dataclass
class LrAnnealSchema:
    shape: str = setting(choices=_lr_anneals)
    start: float = setting(ge=0, lt=1)
    final: float = setting(ge=0, le=1)


@dataclass
class TrainerSchema:
    budget: BudgetSchema
    kimg: float | None = setting(gt=0)
    max_seconds: float | None = setting(gt=0)
    count_flops: bool = setting()
    batch: int = setting(ge=1)
    batch_gpu: int | None = setting(ge=1)
    precision: str = setting(choices=_precisions)
    tf32: bool = setting()
    cudnn_benchmark: bool = setting()
    flush_denormal: bool = setting()
    optimizer_kernel: str = setting(choices=_optimizer_kernels)
    compile: bool = setting()
    compile_mode: str = setting(choices=_compile_modes)
    channels_last: bool = setting()
    edm_fp16: bool = setting()
    lr_anneal: LrAnnealSchema
    ema_halflife_kimg: float = setting(ge=0)
    ema_rampup: float | None = setting(ge=0)
    ema_beta: float | None = setting(ge=0, lt=1)
    seed: int = setting()
    tick_kimg: float | None = setting(ge=0)  # intervals: 0 or null turns them off
    eval_every_kimg: float | None = setting(ge=0)
    eval_at_kimg: list[float] = setting(ge=0)
    eval_at_fraction: list[float] = setting(gt=0, le=1)
    eval_log_points: LogPointsSchema
    checkpoint_every_kimg: float | None = setting(ge=0)
    max_nonfinite: int = setting(ge=1)
    sample_grids: bool = setting()


@dataclass
class TeacherSchema:
    path: str | None = setting(exists=True, allowed="an existing file (an EDM .pkl or a sidbench .safetensors)")
    sampler_steps: int = setting(ge=1)


@dataclass
class ImagesSchema:
    path: str | None = setting(exists=True, allowed="an existing dataset zip or folder")


@dataclass
class DatasetSchema:
    name: str = setting()
    resolution: int = setting(ge=1)
    channels: int = setting(ge=1)
    label_dim: int = setting(ge=0)
    metric: str = setting(choices=_metric_names)
    eval_samples: int = setting(ge=1)
    final_samples: int = setting(ge=1)
    teacher: TeacherSchema
    images: ImagesSchema
    budget: BudgetSchema


@dataclass
class EvalSchema:
    enabled: bool = setting()
    metric: str = setting(choices=_metric_names)
    metrics: list[str] = setting(choices=_metric_names)
    final_metrics: list[str] = setting(choices=_metric_names)
    num_samples: int = setting(ge=1)
    final_samples: int = setting(ge=1)
    batch_size: int = setting(ge=1)
    label_mode: str = setting(choices=LABEL_MODES)
    seed: int = setting()
    fid_mode: str = setting(choices=_fid_modes)
    inception_path: str | None = setting(exists=True, allowed="an existing Inception-v3 TorchScript file")
    dinov2_path: str | None = setting(exists=True, allowed="an existing DINOv2 ViT-L/14 checkpoint (dinov2_vitl14_pretrain.pth)")
    vgg16_path: str | None = setting(exists=True, allowed="an existing VGG16 checkpoint (vgg16-397923af.pth)")


@dataclass
class TrackingSchema:
    enabled: bool = setting()
    uri: str | None = setting()


@dataclass
class DataSchema:
    workers: int = setting(ge=0)
    prefetch: int = setting(ge=1)
    chunk: int = setting(ge=1)


@dataclass
class RunSchema:
    """The top level; `method` has its method's settings (`method_settings`) and `resume` its own check."""

    output_root: str = setting()
    run_name: str | None = setting()
    dry_run: bool = setting()
    device: str = setting(pattern=r"auto|cpu|cuda(:\d+)?", allowed="auto, cpu, cuda or cuda:N")
    threads: int | None = setting(ge=1)
    processes: int = setting(ge=1)
    tracking: TrackingSchema
    data: DataSchema
    dataset: DatasetSchema
    trainer: TrainerSchema
    eval: EvalSchema


def method_settings(name: str) -> type | None:
    """The settings class of method `name` (its class's `settings`; None: it has no settings). A
    built-in's comes from its lazy declaration: neither the method nor torch is imported for it."""
    from sidbench.methods import METHODS

    return METHODS.attribute(name, "settings")


# -- checking --------------------------------------------------------------------------------------
def validate_run_config(cfg: DictConfig) -> None:
    """Check the resolved `sidbench run` config; raise ConfigError (one line) on the first bad setting."""
    check(RunSchema, cfg)
    settings = method_settings(str(cfg.method.name))
    if settings is not None:
        check(settings, cfg.method, "method")
        relations = getattr(settings, "check", None)
        if relations is not None:
            relations(cfg)
    _check_real_images(cfg)
    _check_metrics(cfg)
    _check_device(str(cfg.device))
    _check_batch_split(cfg)
    _check_run_folder(cfg)


def _check_metrics(cfg: DictConfig) -> None:
    if cfg.eval.enabled:
        from sidbench.eval.factory import check_run_metrics

        check_run_metrics(cfg)


def _check_real_images(cfg: DictConfig) -> None:
    from sidbench.methods import METHODS

    images = cfg.dataset.get("images") or {}
    if METHODS.get(str(cfg.method.name)).uses_real_data(cfg.method) and not (images.get("path") or images.get("builtin")):
        raise ConfigError(f"method={cfg.method.name} trains on real images and dataset {cfg.dataset.name} has none: "
                          "set dataset.images.path=<EDM dataset zip or folder>")


def check(schema: type, node: Any, prefix: str = "") -> None:
    """Check the keys of `node` that `schema` (a dataclass) names; `prefix` is the node's dotted key."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{prefix}={_show(node)}: must be a group of settings")
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name in node:
            _check_value(hints[f.name], f.metadata, node[f.name], f"{prefix}.{f.name}" if prefix else f.name)


def _check_value(tp: Any, meta: typing.Mapping[str, Any], value: Any, key: str) -> None:
    base, optional = _split_optional(tp)
    if value is None and optional:
        return
    if dataclasses.is_dataclass(base):
        if value is None:
            raise ConfigError(f"{key}=null: must be a group of settings")
        check(base, value, key)
        return
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if (not isinstance(value, (ListConfig, list)) or not all(_scalar_ok(item, meta, v) for v in value)
                or meta.get("length") not in (None, len(value))):
            raise ConfigError(f"{key}={_show(value)}: must be {_describe(tp, meta)}")
        return
    if not _scalar_ok(base, meta, value):
        raise ConfigError(f"{key}={_show(value)}: must be {_describe(tp, meta)}")


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _choices(meta: typing.Mapping[str, Any]) -> Sequence[str] | None:
    choices = meta.get("choices")
    return choices() if callable(choices) else choices


def _scalar_ok(tp: Any, meta: typing.Mapping[str, Any], value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        # bool is an int to Python, and a number given as a string ("abc", '"3"') is no number
        if isinstance(value, bool) or not isinstance(value, int if tp is int else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        return all(bound is None or ok for bound, ok in (
            (meta.get("ge"), value >= meta.get("ge", 0)), (meta.get("gt"), value > meta.get("gt", 0)),
            (meta.get("le"), value <= meta.get("le", 0)), (meta.get("lt"), value < meta.get("lt", 0))))
    if tp is str:
        if not isinstance(value, str):
            return False
        choices = _choices(meta)
        if choices is not None and value not in choices:
            return False
        if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            return False
        return not meta.get("exists") or Path(value).expanduser().exists()
    raise TypeError(f"schema type {tp!r} is not supported")


def _describe(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """What is allowed, in words: 'an integer >= 1', 'null or a number in (0, 1]', 'one of a, b'."""
    base, optional = _split_optional(tp)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        items = _describe_scalar(item, meta, plural=True)
        length = meta.get("length")
        text = {None: f"a list of {items}", 2: f"a pair of {items}"}.get(length, f"a list of {length} {items}")
    else:
        text = _describe_scalar(base, meta)
    # a path that is not there: the user meant to give one, "null or" would not help
    return f"null or {text}" if optional and not meta.get("exists") else text


def _describe_scalar(tp: Any, meta: typing.Mapping[str, Any], plural: bool = False) -> str:
    if meta.get("allowed"):
        return meta["allowed"]
    if tp is bool:
        return "true or false"
    if tp is str:
        if meta.get("exists"):
            return "existing paths" if plural else "an existing path"
        choices = _choices(meta)
        return f"one of {', '.join(choices)}" if choices is not None else ("strings" if plural else "a string")
    noun = ("integers" if plural else "an integer") if tp is int else ("numbers" if plural else "a number")
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"{noun} in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{noun} {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{noun} {'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return noun


def _show(value: Any) -> str:
    """The value as the user would write it. Lists and odd strings are shown as Python literals,
    (['a', 1]): the CLI prints through rich, which would take a bare `[word]` for markup."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if re.fullmatch(r"[^\s\[\]'\"]+", value) else repr(value)
    return repr(value)


# -- checks across settings, and of the machine and the files they name ----------------------------
def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch  # only for CUDA devices: the other checks need no torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device={device}: this machine has no CUDA device (torch.cuda.is_available() is False); "
                          "use device=auto or device=cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"device={device}: this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}")


def _check_batch_split(cfg: DictConfig) -> None:
    """The global batch is split evenly among the processes (the trainer refuses otherwise, in
    every rank)."""
    if "WORLD_SIZE" in os.environ:  # inside torchrun: the processes that exist
        world = int(os.environ["WORLD_SIZE"])
    else:
        from sidbench.distributed import launch_processes  # the processes `sidbench run` would start

        world = launch_processes(cfg)
    batch = int(cfg.trainer.batch)
    if batch % world:
        raise ConfigError(f"trainer.batch={batch}: must be a multiple of the {world} processes (processes={cfg.processes}); "
                          f"use e.g. trainer.batch={batch + world - batch % world}")


def _check_run_folder(cfg: DictConfig) -> None:
    """The folder the run would use: a valid name; on resume a readable checkpoint; the settings of
    a run already there (`sidbench.run_folder.plan_start`); not held by another process."""
    from sidbench.run_folder import CHECKPOINT_NAME, check_creatable, check_not_in_use, named_dir, plan_start, resume_dir
    from sidbench.trainer.checkpoint import CheckpointError, load_checkpoint

    if cfg.get("resume") not in (None, ""):
        path = resume_dir(cfg)
        ckpt = path / CHECKPOINT_NAME
        if ckpt.is_file():
            try:
                load_checkpoint(ckpt, mmap=True)  # mapped, not read: cheap for checkpoints of any size
            except CheckpointError as e:
                raise ConfigError(f"resume={_show(str(cfg.resume))}: {' '.join(str(e).split())}") from e
    else:
        path = named_dir(cfg)
        if path is None:  # a new folder of the default name
            check_creatable(Path(str(cfg.output_root)))
            return
    plan_start(cfg, path)
    check_not_in_use(path)
