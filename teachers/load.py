"""From a dataset card's `teacher` entry to a loaded, frozen `Teacher`.

Three sources, one result: the weights shipped in this package (`builtin`), a local file
(`path`: an EDM pickle or our safetensors format), or an address (`url`) fetched once into the
cache. EDM pickles go through the safe loader: no code from a file is ever run.
"""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sidbench.errors import UserError
from sidbench.teachers.teacher import Teacher


class TeacherLoadError(UserError, RuntimeError):
    """A teacher file that cannot be used; the message names the file and the reason."""


def builtin_teacher_path(name: str, must_exist: bool = True) -> Path:
    path = Path(str(files("sidbench.teachers") / name / "teacher.safetensors"))
    if must_exist and not path.is_file():
        raise TeacherLoadError(f"no built-in teacher {name!r} at {path}; train it with `sidbench teacher train dataset={name}`")
    return path


def save_native_teacher(net: torch.nn.Module, constructor: dict[str, Any], path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Our own format: safetensors weights with the constructor and card info as JSON metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"constructor": json.dumps(constructor), "info": json.dumps(info or {})})
    return path


def load_native_teacher(path: str | Path, kind: str = "teacher") -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(constructor, state_dict, info) of a file written by `save_native_teacher`; `kind` names the
    file in errors ("teacher", "generator")."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise TeacherLoadError(f"{kind} file {path} is not a readable safetensors file ({e})") from e
    if "constructor" not in meta:
        raise TeacherLoadError(f"{kind} file {path} has no 'constructor' metadata; save it with save_native_teacher")
    return json.loads(meta["constructor"]), state, json.loads(meta.get("info", "{}"))


def _examples(keys: set[str], n: int = 3) -> str:
    shown = sorted(keys)
    return ", ".join(shown[:n]) + (f", ... ({len(shown)} in all)" if len(shown) > n else "")


def build_teacher_network(constructor: dict[str, Any], state: dict[str, torch.Tensor], path: str, kind: str = "teacher") -> torch.nn.Module:
    """The network of `constructor` with the file's weights, loaded strictly; a file that does not
    fit says which tensors are missing, extra, of another shape or of another kind of number (an
    integer tensor would be cast silently by `load_state_dict`), in one line."""
    from sidbench.teachers.networks import build_edm_network

    try:
        net = build_edm_network(constructor)
    except (ValueError, TypeError, KeyError) as e:
        raise TeacherLoadError(f"{kind} file {path}: cannot build the network {constructor.get('precond')}/"
                               f"{constructor.get('model_type')} from its constructor ({type(e).__name__}: {e})") from e
    expected = net.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    reshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = [f"missing in the file: {_examples(missing)}"] if missing else []
    problems += [f"not in the network: {_examples(unexpected)}"] if unexpected else []
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} shape mismatches, e.g. {k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}")
    retyped = sorted(k for k in set(expected) & set(state)
                     if expected[k].is_floating_point() != state[k].is_floating_point() or state[k].is_complex())
    if retyped:
        k = retyped[0]
        problems.append(f"{len(retyped)} dtype mismatches, e.g. {k}: file {str(state[k].dtype).removeprefix('torch.')} vs "
                        f"network {str(expected[k].dtype).removeprefix('torch.')}")
    if problems:
        raise TeacherLoadError(f"{kind} file {path} does not fit the network its constructor describes: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)
    return net


def load_teacher_file(path: str | Path, kind: str = "teacher") -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(network, constructor, info) from a `.safetensors` (ours) or `.pkl` (EDM) file; `kind` names
    the file in errors ("teacher", "generator")."""
    path = Path(path)
    if not path.is_file():
        raise TeacherLoadError(f"{kind} file {path} does not exist")
    if path.suffix == ".pkl":
        from sidbench.teachers.edm_pickle import load_edm_checkpoint

        ckpt = load_edm_checkpoint(path)
        return build_teacher_network(ckpt.constructor, ckpt.state_dict, str(path), kind), ckpt.constructor, {}
    constructor, state, info = load_native_teacher(path, kind)
    return build_teacher_network(constructor, state, str(path), kind), constructor, info


def load_state_dict_file(path: str | Path, constructor: dict[str, Any], kind: str = "generator") -> torch.nn.Module:
    """The network of `constructor` (EDM's form) with the weights of a `torch.save`d state dict
    (e.g. DMD2's `pytorch_model.bin`): read with `torch.load(weights_only=True)`, which rebuilds
    tensors and plain containers only and runs no code from the file; then loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise TeacherLoadError(f"{kind} file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickling errors: a damaged file, or one holding more than weights
        raise TeacherLoadError(f"{kind} file {path} is not a state dict of tensors ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise TeacherLoadError(f"{kind} file {path} is not a state dict of tensors (name -> tensor)")
    return build_teacher_network(dict(constructor), state, str(path), kind)


def resolve_teacher_path(cfg: DictConfig | dict[str, Any]) -> str:
    """The file a card's teacher entry points at, downloading it into the cache if needed."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.get("path"):
        return str(cfg.path)
    if cfg.get("builtin"):
        return str(builtin_teacher_path(cfg.builtin))
    if cfg.get("url"):
        from sidbench.download import cached_download

        return str(cached_download(cfg.url, sha256=cfg.get("sha256"), hint="set dataset.teacher.path=<a local copy>"))
    raise TeacherLoadError("the dataset card's teacher has no path, builtin or url; set dataset.teacher.path=<file>")


def load_teacher(cfg: DictConfig | dict[str, Any], device: torch.device | str = "cpu") -> Teacher:
    """Load, freeze and move the teacher described by a card's `teacher` entry."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    path = resolve_teacher_path(cfg)
    net, constructor, info = load_teacher_file(path)
    net = net.to(device).eval().requires_grad_(False)
    card_info = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("constructor",)}
    return Teacher(net=net, constructor=constructor, source=path, info={**card_info, **info})
