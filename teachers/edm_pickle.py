"""Safe loading of EDM's pickle checkpoints (the ``.pkl`` files of NVlabs/edm, and SiD's generators).

A checkpoint is a pickle of ``dict(ema=<EDMPrecond>, loss_fn=..., augment_pipe=...,
dataset_kwargs=...)`` in which every network module was pickled by EDM's
``torch_utils.persistence``: it is rebuilt by calling
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` carries the full
source text of the module that defined the class. The reference loader executes that text, so
loading a file from the internet runs whatever code it holds.

This module never executes it and never imports a module a file names. A restricted unpickler
answers only the handful of globals a genuine file refers to (docs/edm.md#safe-loading), each with
an inert stand-in or a guarded torch/numpy function:

=============================================================  ==========================================
global in the file                                             what this loader gives instead
=============================================================  ==========================================
``torch_utils.persistence._reconstruct_persistent_obj``        :class:`PersistentRecord` (class name, init
                                                               args/kwargs, state; the source is kept as
                                                               text, never run)
``torch.nn.modules.container.ModuleDict``                      :class:`ModuleDictRecord`
``torch.storage._load_from_bytes``                             ``torch.load(..., weights_only=True)``
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``   torch's functions, arguments checked
``collections.OrderedDict``                                    ``collections.OrderedDict``
``numpy.dtype``, ``numpy[._]core.multiarray.scalar``           numeric dtypes only; scalars become Python
                                                               ``int``/``float``/``bool``/``complex``
``dnnlib.util.EasyDict``                                       a plain ``dict`` subclass
=============================================================  ==========================================

Any other global is refused with :class:`UnsafeCheckpointError` before anything it names is
touched. (ModuleDict is pickled with protocol 4's ``NEWOBJ``, which names only the class; the
``copyreg._reconstructor`` / ``builtins.object`` pair of protocols 0 and 1 does not occur in these
files and is refused like any other global.)

Public API: :func:`load_edm_checkpoint` (constructor arguments + ``state_dict``, no network code
needed); ``sidbench.teachers.load.load_teacher_file`` builds the network from them.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sidbench.errors import UserError

__all__ = [
    "EDMCheckpointError",
    "UnsafeCheckpointError",
    "EDMCheckpoint",
    "PersistentRecord",
    "ModuleDictRecord",
    "ALLOWED_GLOBALS",
    "EDM_PERSISTENCE_VERSION",
    "load_edm_checkpoint",
]

EDM_PERSISTENCE_VERSION = 6  # `_version` of EDM's torch_utils/persistence.py

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("collections", "OrderedDict"),
        ("torch.nn.modules.container", "ModuleDict"),
        ("torch.storage", "_load_from_bytes"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("dnnlib.util", "EasyDict"),
    }
)

# Positional constructor arguments of EDM's preconditioners, in order (used only if a file was
# written by code that passed them positionally; EDM's own training script passes keywords).
_PRECOND_POSITIONAL = {
    "EDMPrecond": ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                   "sigma_data", "model_type"),
    "VPPrecond": ("img_resolution", "img_channels", "label_dim", "use_fp16", "beta_d", "beta_min", "M",
                  "epsilon_t", "model_type"),
}

# SiDA's code (the `sida` branch of mingyuanzhou/SiD, sida_training/sida_networks.py) pickles its
# networks, its released generators included, under classes of its own: EDM's constructor arguments
# (positional order too), module tree and weights, with a forward that can also return the encoder's
# output; in its default mode the output is EDM's. Such a file reads as the EDM class it extends.
# Preconditioner -> (EDM's class, the model_type it means when none is given: SiDA's defaults to its
# SongUNet variant, where EDMPrecond's is DhariwalUNet); model_type -> EDM's.
_PRECOND_ALIASES = {"EDMPrecond_EncoderDecoder": ("EDMPrecond", "SongUNet")}
_MODEL_ALIASES = {"SongUNet_EncoderDecoder": "SongUNet", "DhariwalUNet_EncoderDecoder": "DhariwalUNet"}


# ----------------------------------------------------------------------------------------------
# Errors


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class EDMCheckpointError(UserError, RuntimeError):
    """A checkpoint could not be loaded. The message is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = _one_line(reason, limit=600)
        super().__init__(f"cannot load EDM checkpoint {self.path}: {self.reason}")

    def __reduce__(self):  # so the error crosses process boundaries (e.g. multiprocessing)
        return type(self), (self.path, self.reason)


class UnsafeCheckpointError(EDMCheckpointError):
    """The file asks for something a genuine EDM checkpoint never needs. Nothing was executed."""

    def __init__(self, path: str | os.PathLike | None, what: str):
        self.path = None if path is None else Path(path)
        self.what = _one_line(what)
        self.reason = self.what
        RuntimeError.__init__(
            self,
            f"refusing to load {self.path}: {self.what}; this is not how a genuine EDM checkpoint is "
            f"built, and nothing from the file was executed",
        )


# ----------------------------------------------------------------------------------------------
# Inert stand-ins


class _Refused(Exception):
    """Raised by a stand-in that does not know the file; reported as UnsafeCheckpointError."""


class _Sealed(type):
    """Metaclass of the stand-in types a file can name: their attributes cannot be changed from a
    pickle (a ``BUILD`` opcode aimed at the class object itself)."""

    def __setattr__(cls, name, value):
        raise TypeError(f"{cls.__name__} is read-only")

    def __delattr__(cls, name):
        raise TypeError(f"{cls.__name__} is read-only")


class _Record(metaclass=_Sealed):
    """Common part of the inert stand-ins for pickled modules: a class name and a state dict."""

    __slots__ = ("class_name", "state")

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args", ())
        return tuple(args) if isinstance(args, (tuple, list)) else ()

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs", {})
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    @property
    def modules(self) -> dict[str, Any]:
        mods = self.state.get("_modules", {})
        return mods if isinstance(mods, dict) else {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.class_name}: {len(self.state)} state entries>"


class PersistentRecord(_Record):
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` stands for, kept inert.

    ``module`` is always ``None``: the file does not say which module the class came from, only its
    source text, which is kept (``module_src``, never executed) for inspection.
    """

    __slots__ = ("module_src", "version")
    module = None

    def __init__(self, class_name: str, module_src: str, state: dict, version: int):
        object.__setattr__(self, "class_name", class_name)
        object.__setattr__(self, "module_src", module_src)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "version", version)

    @property
    def module_src_sha256(self) -> str:
        return hashlib.sha256(self.module_src.encode("utf-8", "surrogatepass")).hexdigest()

    def __setstate__(self, state):  # genuine files never BUILD a reconstructed object
        raise _Refused("it changes the state of a persistent object after rebuilding it")


class ModuleDictRecord(_Record):
    """Inert stand-in for a pickled ``torch.nn.ModuleDict`` (made by ``NEWOBJ`` + ``BUILD``)."""

    __slots__ = ()
    module = "torch.nn.modules.container"

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise _Refused("it builds a ModuleDict with arguments")
        self = super().__new__(cls)
        object.__setattr__(self, "class_name", "ModuleDict")
        object.__setattr__(self, "state", {})
        return self

    def __setstate__(self, state):
        if not isinstance(self, ModuleDictRecord) or not isinstance(state, dict) or self.state \
                or not all(isinstance(k, str) for k in state):
            raise _Refused("it gives a ModuleDict a malformed state")
        object.__setattr__(self, "state", state)


class _EasyDict(dict, metaclass=_Sealed):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict subclass); converted to ``dict`` after loading."""

    __slots__ = ()

    def __setstate__(self, state):
        if state not in (None, {}):
            raise _Refused("it gives an EasyDict instance attributes")


class _Guarded:
    """A callable that a file may name. It refuses a ``BUILD`` aimed at it, so a file cannot change
    the function it stands for (e.g. its defaults) for later loads."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name: str):
        self._fn = fn
        self._name = name

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise _Refused(f"it tries to change the attributes of {self._name}")

    def __repr__(self) -> str:
        return f"<guarded {self._name}>"


# ----------------------------------------------------------------------------------------------
# The restricted unpickler


_NUMERIC_DTYPE = re.compile(r"^[<>=|]?[biufc][0-9]{1,2}$")


class _EDMUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path | None):
        super().__init__(file)
        self._path = path
        self._storages: dict[int, tuple[object, torch.UntypedStorage, torch.dtype]] = {}
        g = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._reconstruct_persistent_obj,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
            ("numpy", "dtype"): self._numpy_dtype,
            ("numpy.core.multiarray", "scalar"): self._numpy_scalar,
            ("numpy._core.multiarray", "scalar"): self._numpy_scalar,
        }
        self._allowed: dict[tuple[str, str], object] = {
            key: _Guarded(fn, ".".join(key)) for key, fn in g.items()
        }
        self._allowed[("collections", "OrderedDict")] = OrderedDict  # a C type: immutable
        self._allowed[("torch.nn.modules.container", "ModuleDict")] = ModuleDictRecord
        self._allowed[("dnnlib.util", "EasyDict")] = _EasyDict
        assert set(self._allowed) == ALLOWED_GLOBALS

    # -- what the file may name ----------------------------------------------------------------

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
        if obj is None:
            raise UnsafeCheckpointError(
                self._path, f"it refers to the global {_one_line(module, 120)}.{_one_line(name, 120)}"
            )
        return obj

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(self._path, "it holds a persistent id (not used by EDM's pickles)")

    def _unsafe(self, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(self._path, what)

    # -- the stand-ins ---------------------------------------------------------------------------

    def _reconstruct_persistent_obj(self, meta):
        if not isinstance(meta, dict):
            raise self._unsafe(f"a persistent object is described by a {type(meta).__name__}, not a dict")
        kind = meta.get("type")
        if kind != "class":
            raise self._unsafe(f"a persistent object has type {kind!r}; only 'class' objects are supported")
        version = meta.get("version")
        if version != EDM_PERSISTENCE_VERSION:
            raise EDMCheckpointError(
                self._path,
                f"persistent object format version {version!r}; this loader reads version "
                f"{EDM_PERSISTENCE_VERSION} (EDM's torch_utils.persistence)",
            )
        class_name = meta.get("class_name")
        module_src = meta.get("module_src")
        state = meta.get("state")
        if not isinstance(class_name, str) or not class_name.isidentifier():
            raise self._unsafe(f"a persistent object has the class name {class_name!r}")
        if not isinstance(module_src, str):
            raise self._unsafe(f"persistent object {class_name} has no module source text")
        if state is None:
            state = {}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise self._unsafe(f"persistent object {class_name} has a state that is not a dict of attributes")
        return PersistentRecord(class_name, module_src, state, version)

    def _load_from_bytes(self, data):
        if not isinstance(data, (bytes, bytearray)):
            raise self._unsafe(f"torch.storage._load_from_bytes was given a {type(data).__name__}")
        try:
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's weights-only unpickler refused something in the nested file (or it is corrupt).
            raise self._unsafe(
                f"a tensor storage inside it is not a plain torch storage (torch.load weights_only: "
                f"{_one_line(e, 200)})"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise EDMCheckpointError(self._path, f"a tensor storage inside it cannot be read ({type(e).__name__}: {e})") from None
        if isinstance(storage, torch.storage.TypedStorage):
            untyped, dtype = storage._untyped_storage, storage.dtype
        else:
            raise self._unsafe(f"a nested storage file holds a {type(storage).__name__}, not a storage")
        if type(untyped) is not torch.UntypedStorage or not isinstance(dtype, torch.dtype):
            raise self._unsafe("a nested storage file holds a malformed storage")
        self._storages[id(storage)] = (storage, untyped, dtype)  # the tuple keeps the id valid
        return storage

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None):
        known = self._storages.get(id(storage))
        if known is None or known[0] is not storage:
            raise self._unsafe("a tensor is built on something other than a storage read from the file")
        _, untyped, dtype = known
        if not (_is_int(storage_offset) and _int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
            raise self._unsafe("a tensor has a malformed offset, size or stride")
        if not isinstance(requires_grad, bool):
            raise self._unsafe("a tensor has a non-boolean requires_grad")
        if not isinstance(backward_hooks, dict) or backward_hooks:
            raise self._unsafe("a tensor carries backward hooks (torch never pickles them)")
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, bool) for v in metadata.values())):
            raise self._unsafe("a tensor has malformed metadata")
        fresh = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        extra = () if metadata is None else (metadata,)
        try:
            return torch._utils._rebuild_tensor_v2(
                fresh, int(storage_offset), tuple(size), tuple(stride), requires_grad, OrderedDict(), *extra
            )
        except RuntimeError as e:
            raise EDMCheckpointError(self._path, f"a tensor does not fit its storage ({e})") from None

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if type(data) is not torch.Tensor:
            raise self._unsafe(f"a parameter wraps a {type(data).__name__}, not a tensor")
        if not isinstance(requires_grad, bool):
            raise self._unsafe("a parameter has a non-boolean requires_grad")
        if not isinstance(backward_hooks, dict) or backward_hooks:
            raise self._unsafe("a parameter carries backward hooks (torch never pickles them)")
        return torch._utils._rebuild_parameter(data, requires_grad, OrderedDict())

    def _numpy_dtype(self, obj, align=False, copy=False):
        import numpy as np

        if not isinstance(obj, str) or not _NUMERIC_DTYPE.match(obj) or not isinstance(align, bool):
            raise self._unsafe(f"a numpy dtype {obj!r} that is not a plain numeric type")
        # copy=True always: the BUILD that follows must not change numpy's shared dtype singleton.
        return np.dtype(obj, align=False, copy=True)

    def _numpy_scalar(self, dtype, data=None):
        import numpy as np

        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject \
                or dtype.fields is not None or dtype.subdtype is not None:
            raise self._unsafe("a numpy scalar whose dtype is not a plain numeric type")
        if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
            raise self._unsafe("a numpy scalar whose data does not match its dtype")
        return np.frombuffer(bytes(data), dtype=dtype)[0].item()  # -> Python int/float/bool/complex


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and all(_is_int(v) and v >= 0 for v in x)


# ----------------------------------------------------------------------------------------------
# From records to constructor arguments and a state_dict


def _plain(x):
    """Containers as plain Python (EasyDict -> dict); records and tensors are kept as they are."""
    if isinstance(x, dict) and not isinstance(x, OrderedDict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, OrderedDict):
        return OrderedDict((k, _plain(v)) for k, v in x.items())
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


def _constructor(path: Path, ema: PersistentRecord) -> dict[str, Any]:
    kwargs = _plain(ema.init_kwargs)
    args = ema.init_args
    precond, default_model = _PRECOND_ALIASES.get(ema.class_name, (ema.class_name, None))
    if args:
        names = _PRECOND_POSITIONAL.get(precond)
        if names is None or len(args) > len(names):
            raise EDMCheckpointError(path, f"{ema.class_name} was built with {len(args)} positional arguments, "
                                        f"which this loader cannot name")
        for name, value in zip(names, args):
            if name in kwargs:
                raise EDMCheckpointError(path, f"{ema.class_name} argument {name} given twice")
            kwargs[name] = _plain(value)
    if "precond" in kwargs:
        raise EDMCheckpointError(path, f"{ema.class_name} has a constructor argument named 'precond'")
    if not all(isinstance(k, str) for k in kwargs):
        raise EDMCheckpointError(path, f"{ema.class_name} has malformed constructor arguments")
    if default_model is not None:
        kwargs.setdefault("model_type", default_model)
    if isinstance(kwargs.get("model_type"), str) and kwargs["model_type"] in _MODEL_ALIASES:
        kwargs["model_type"] = _MODEL_ALIASES[kwargs["model_type"]]
    return {"precond": precond, **kwargs}


def _collect_state_dict(path: Path, record: _Record, prefix: str, out: dict[str, torch.Tensor],
                        active: set[int]) -> None:
    """Walk ``_parameters``, ``_buffers`` (persistent, not None) and ``_modules`` like
    ``torch.nn.Module.state_dict`` does, giving detached tensors."""
    where = prefix[:-1] or "<top>"
    if id(record) in active:
        raise EDMCheckpointError(path, f"module {where} contains itself")
    if len(active) > 64:
        raise EDMCheckpointError(path, f"module tree deeper than 64 levels at {where}")
    active.add(id(record))
    state = record.state
    params = state.get("_parameters", {})
    buffers = state.get("_buffers", {})
    transient = state.get("_non_persistent_buffers_set", set())
    modules = state.get("_modules", {})
    if not (isinstance(params, dict) and isinstance(buffers, dict) and isinstance(modules, dict)
            and isinstance(transient, (set, frozenset))):
        raise EDMCheckpointError(path, f"module {where} ({record.class_name}) is not a torch module state")
    for kind, table in (("parameter", params), ("buffer", buffers)):
        for name, t in table.items():
            if t is None or (kind == "buffer" and name in transient):
                continue
            if not isinstance(name, str) or not isinstance(t, torch.Tensor) \
                    or type(t) not in (torch.Tensor, torch.nn.Parameter):
                raise EDMCheckpointError(path, f"{kind} {prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, _Record):
            raise EDMCheckpointError(path, f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
        _collect_state_dict(path, child, f"{prefix}{name}.", out, active)
    active.discard(id(record))


# ----------------------------------------------------------------------------------------------
# Public API


@dataclass
class EDMCheckpoint:
    """The parts of an EDM checkpoint that a project needs, with no code from the file.

    ``constructor``: EDM's form, ``{"precond": "EDMPrecond" | "VPPrecond", **init kwargs}`` (with
    ``model_type`` and the model's own kwargs; SiDA's ``*_EncoderDecoder`` classes read as the EDM
    classes they extend), e.g. ``{"precond": "EDMPrecond", "img_resolution":
    32, ..., "model_type": "SongUNet", "model_channels": 128, ...}``; numpy scalars are Python
    numbers. ``state_dict``: what ``ema.state_dict()`` would give (``model.enc.32x32_conv.weight``,
    ...), detached tensors on the CPU. ``extra``: the file's other entries (``dataset_kwargs`` as a
    plain dict; ``loss_fn``/``augment_pipe`` as inert :class:`PersistentRecord`). ``ema``: the inert
    record of the network itself, for inspection.
    """

    path: Path
    constructor: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    ema: PersistentRecord | None = field(default=None, repr=False)


def _unpickle(path: Path) -> Any:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise EDMCheckpointError(path, "file not found") from None
    except OSError as e:
        raise EDMCheckpointError(path, f"cannot open the file ({e.strerror or e})") from None
    with fh:
        head = fh.read(4)
        if head[:2] == b"PK":
            raise EDMCheckpointError(path, "it is a zip archive (a torch.save file?), not an EDM pickle")
        if not head:
            raise EDMCheckpointError(path, "the file is empty")
        fh.seek(0)
        try:
            return _EDMUnpickler(fh, path).load()
        except EDMCheckpointError:
            raise
        except _Refused as e:
            raise UnsafeCheckpointError(path, str(e)) from None
        except (EOFError, pickle.UnpicklingError) as e:
            raise EDMCheckpointError(
                path, f"the file is truncated or is not a pickle ({type(e).__name__}: {_one_line(e, 200)})"
            ) from None
        except Exception as e:  # noqa: BLE001 - anything else a damaged file may raise
            raise EDMCheckpointError(path, f"the file is damaged ({type(e).__name__}: {_one_line(e, 200)})") from None


def load_edm_checkpoint(path: str | os.PathLike) -> EDMCheckpoint:
    """Read an EDM (or SiD) ``.pkl`` checkpoint without executing anything from it.

    Raises:
        UnsafeCheckpointError: the file refers to a global outside :data:`ALLOWED_GLOBALS`, or
            misuses an allowed one (nothing from the file is executed).
        EDMCheckpointError: missing, truncated or damaged file; no ``ema`` network; unsupported format.
    """
    path = Path(path)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise EDMCheckpointError(path, f"the pickle holds a {type(data).__name__}, not EDM's dict of entries")
    if "ema" not in data:
        keys = ", ".join(sorted(map(str, data))) or "none"
        raise EDMCheckpointError(path, f"it has no 'ema' network (entries: {keys})")
    ema = data["ema"]
    if not isinstance(ema, PersistentRecord):
        raise EDMCheckpointError(path, f"its 'ema' entry is a {type(ema).__name__}, not a persistent EDM module")
    try:
        constructor = _constructor(path, ema)
        state_dict: dict[str, torch.Tensor] = {}
        _collect_state_dict(path, ema, "", state_dict, set())
        extra = {str(k): _plain(v) for k, v in data.items() if k != "ema"}
    except RecursionError:
        raise EDMCheckpointError(path, "its entries are nested too deeply") from None
    if not state_dict:
        raise EDMCheckpointError(path, f"its 'ema' network ({ema.class_name}) holds no tensors")
    return EDMCheckpoint(path=path, constructor=constructor, state_dict=state_dict, extra=extra, ema=ema)
