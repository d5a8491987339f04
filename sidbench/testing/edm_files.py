"""EDM-format pickles written without EDM's code: for tests of the safe loader and of released generators.

EDM's `torch_utils.persistence` pickles every network module as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, `meta` = {type: "class", version: 6,
module_src: <its module's source text>, class_name, state: <the module's __dict__>}; a
`torch.nn.ModuleDict` is pickled the ordinary way, tensors through torch's own reduce
(docs/edm.md#checkpoint-format). `write_edm_pickle` writes that structure for a network given by
its constructor and `state_dict`, under any class names (SiDA's files use their own). The module
source it writes would raise if anything ever executed it.
"""
from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: The module source written into every record: it must never run.
MODULE_SRC = "raise RuntimeError('the module source of an EDM pickle was executed')\n"


def _reconstruct_persistent_obj(meta):  # the name EDM's files call; only its module and name are pickled
    raise AssertionError("a loader called back into a module named by the file")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class _Persistent(nn.Module):
    """A module that pickles as EDM's persistence pickles one of class `class_name`."""

    def __init__(self, class_name: str, init_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._edm_class_name = class_name
        self._init_args = ()
        self._init_kwargs = dict(init_kwargs or {})


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if not isinstance(obj, _Persistent):
            return NotImplemented
        state = {k: v for k, v in obj.__dict__.items() if k != "_edm_class_name"}
        meta = {"type": "class", "version": 6, "module_src": MODULE_SRC, "class_name": obj._edm_class_name,
                "state": state}
        return (_reconstruct_persistent_obj, (meta,))


def edm_module_tree(constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], buffers: set[str],
                    *, precond_class: str | None = None, model_class: str | None = None) -> nn.Module:
    """The persistent module tree of an EDM network: the preconditioner (class `precond_class`,
    default the constructor's `precond`) with the constructor's other arguments, its `model`
    (class `model_class`, default `model_type`), `enc`/`dec` as ModuleDicts, and every tensor of
    `state_dict` as a parameter, or as a buffer when its key is in `buffers`."""
    kwargs = {k: v for k, v in constructor.items() if k != "precond"}
    top = _Persistent(precond_class or str(constructor["precond"]), kwargs)
    for key, tensor in state_dict.items():
        *parents, leaf = key.split(".")
        node: nn.Module = top
        for depth, name in enumerate(parents):
            if name not in node._modules:
                if depth == 0:
                    child: nn.Module = _Persistent(model_class or str(constructor.get("model_type", "SongUNet")))
                elif depth == 1 and name in ("enc", "dec"):
                    child = nn.ModuleDict()
                else:
                    child = _Persistent("Block")
                node.add_module(name, child)
            node = node._modules[name]
        if key in buffers:
            node.register_buffer(leaf, tensor.detach().clone())
        else:
            node.register_parameter(leaf, nn.Parameter(tensor.detach().clone(), requires_grad=False))
    return top


def write_edm_pickle(path: str | Path, net: nn.Module, constructor: Mapping[str, Any], *,
                     precond_class: str | None = None, model_class: str | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """Write `net` (built from `constructor`) as an EDM-format pickle: `dict(ema=<net>, **extra)`,
    as SiD's and EDM's training loops write their snapshots."""
    buffers = {k for k, _ in net.named_buffers()}
    tree = edm_module_tree(constructor, net.state_dict(), buffers, precond_class=precond_class, model_class=model_class)
    path = Path(path)
    stand_ins = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": types.ModuleType("torch_utils.persistence")}
    stand_ins["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    with modules_standing_in(stand_ins), open(path, "wb") as f:
        _Pickler(f, protocol=4).dump({"ema": tree, **(extra or {})})
    return path


@contextmanager
def modules_standing_in(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    """`modules` in `sys.modules` for the block's duration (pickle checks that a function it names
    can be found where it says); what those names held before is put back after."""
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
