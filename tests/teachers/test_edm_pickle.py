"""sidbench.teachers.edm_pickle: EDM's pickle checkpoints load without executing anything.

The tests write their own checkpoints in the exact structure of EDM's files (docs/edm.md#checkpoint-format):
modules pickled by a stand-in of ``torch_utils.persistence`` (``_reconstruct_persistent_obj(meta)``
with the module's source text, which here would create a marker file if it were ever executed),
``torch.nn.ModuleDict`` pickled the ordinary way, tensors through torch's own reduce (so
``torch.storage._load_from_bytes`` appears as in real files), numpy scalars in constructor
arguments and a ``dnnlib.util.EasyDict`` for ``dataset_kwargs``.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import pickletools
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sidbench.teachers import edm_pickle
from sidbench.teachers.edm_pickle import (
    ALLOWED_GLOBALS,
    EDMCheckpointError,
    EDMCheckpoint,
    ModuleDictRecord,
    PersistentRecord,
    UnsafeCheckpointError,
    load_edm_checkpoint,
)
from sidbench.testing.edm_files import modules_standing_in

REPO = Path(__file__).resolve().parents[2]
NUMPY_SCALAR_MODULE = np.float64(0.0).__reduce__()[0].__module__  # numpy._core.multiarray on NumPy 2

# ----------------------------------------------------------------------------------------------
# Writing files like EDM does


def _fake_reconstruct(meta):  # stands for torch_utils.persistence._reconstruct_persistent_obj
    raise AssertionError("the loader must never call back into a module named by the file")


_fake_reconstruct.__module__ = "torch_utils.persistence"
_fake_reconstruct.__qualname__ = _fake_reconstruct.__name__ = "_reconstruct_persistent_obj"


class _FakeEasyDict(dict):  # stands for dnnlib.util.EasyDict
    pass


_FakeEasyDict.__module__ = "dnnlib.util"
_FakeEasyDict.__qualname__ = _FakeEasyDict.__name__ = "EasyDict"

_FAKE_MODULES = {
    "torch_utils": types.ModuleType("torch_utils"),
    "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
    "dnnlib": types.ModuleType("dnnlib"),
    "dnnlib.util": types.ModuleType("dnnlib.util"),
}
_FAKE_MODULES["torch_utils.persistence"]._reconstruct_persistent_obj = _fake_reconstruct
_FAKE_MODULES["dnnlib.util"].EasyDict = _FakeEasyDict


def persistent(cls):
    """Like EDM's ``@persistence.persistent_class``: remember the constructor arguments."""
    orig_init = cls.__init__

    def __init__(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        self._init_args = copy.deepcopy(args)
        self._init_kwargs = copy.deepcopy(kwargs)

    cls.__init__ = __init__
    cls._edm_persistent = True
    return cls


class EDMStylePickler(pickle.Pickler):
    """Pickles ``@persistent`` objects as EDM's persistence does; everything else the usual way."""

    def __init__(self, file, module_src: dict[str, str], meta_type="class", version=6):
        super().__init__(file, protocol=4)  # pickle.dump's default protocol, as in EDM
        self.module_src, self.meta_type, self.version = module_src, meta_type, version

    def reducer_override(self, obj):
        if not getattr(type(obj), "_edm_persistent", False):
            return NotImplemented
        fields = list(object.__reduce__(obj))  # = super().__reduce__() inside EDM's Decorator
        fields += [None] * max(3 - len(fields), 0)
        class_name = getattr(obj, "_edm_class_name", type(obj).__name__)
        meta = dict(type=self.meta_type, version=self.version,
                    module_src=self.module_src[getattr(obj, "_edm_source", "networks")],
                    class_name=class_name, state=fields[2])
        return (_fake_reconstruct, (meta,))


def write_edm_pickle(path: Path, data, marker_dir: Path, **pickler_kwargs) -> dict[str, Path]:
    """Write ``data`` like EDM's training loop; the module sources create a marker file when run."""
    markers = {name: marker_dir / f"executed-{name}" for name in ("networks", "loss", "augment")}
    sources = {
        name: f"import os\nopen({str(m)!r}, 'w').write('module_src was executed')\n"
              f"# ... the rest of training/{name}.py ...\n"
        for name, m in markers.items()
    }
    with modules_standing_in(_FAKE_MODULES), open(path, "wb") as f:
        EDMStylePickler(f, sources, **pickler_kwargs).dump(data)
    return markers


# ----------------------------------------------------------------------------------------------
# A small EDMPrecond + SongUNet-like module tree (EDM's layer names and attributes)


@persistent
class Linear(nn.Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.randn(out_features)) if bias else None


@persistent
class Conv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel, up=False, down=False, resample_filter=(1, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.randn(out_channels)) if kernel else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)


@persistent
class GroupNorm(nn.Module):
    def __init__(self, num_channels, num_groups=32, eps=1e-6):
        super().__init__()
        self.num_groups, self.eps = min(num_groups, num_channels // 4), eps
        self.weight = nn.Parameter(torch.randn(num_channels))
        self.bias = nn.Parameter(torch.randn(num_channels))


@persistent
class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint
        # Not in EDM; here to check that non-persistent buffers stay out of the state_dict.
        self.register_buffer("freqs_cache", torch.arange(num_channels // 2.0), persistent=False)


@persistent
class UNetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, down=False, skip_scale=1.0, eps=1e-5,
                 resample_filter=(1, 1)):
        super().__init__()
        self.skip_scale = skip_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if in_channels != out_channels or down:
            self.skip = Conv2d(in_channels, out_channels, 1, down=down, resample_filter=resample_filter)


@persistent
class SongUNet(nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=8, resample_filter=(1, 1)):
        super().__init__()
        emb = model_channels * 4
        block_kwargs = dict(emb_channels=emb, skip_scale=np.sqrt(0.5), eps=1e-6,
                            resample_filter=list(resample_filter))  # numpy float, as in EDM
        self.map_noise = PositionalEmbedding(model_channels, endpoint=True)
        self.map_label = Linear(label_dim, model_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb)
        self.map_layer1 = Linear(emb, emb)
        r = img_resolution
        self.enc = nn.ModuleDict()
        self.enc[f"{r}x{r}_conv"] = Conv2d(in_channels, model_channels, 3)
        self.enc[f"{r}x{r}_block0"] = UNetBlock(model_channels, model_channels, **block_kwargs)
        self.enc[f"{r // 2}x{r // 2}_down"] = UNetBlock(model_channels, model_channels, down=True, **block_kwargs)
        self.dec = nn.ModuleDict()
        self.dec[f"{r // 2}x{r // 2}_block0"] = UNetBlock(model_channels, 2 * model_channels, **block_kwargs)
        self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(2 * model_channels, eps=1e-6)
        self.dec[f"{r}x{r}_aux_conv"] = Conv2d(2 * model_channels, out_channels, 3)


@persistent
class EDMPrecond(nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="SongUNet", **model_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, sigma_min, sigma_max, sigma_data
        self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels,
                              out_channels=img_channels, label_dim=label_dim, **model_kwargs)


@persistent
class EDMLoss:
    _edm_source = "loss"

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data


@persistent
class AugmentPipe:
    _edm_source = "augment"

    def __init__(self, p=1, xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0):
        self.p, self.xflip, self.yflip, self.scale = float(p), float(xflip), float(yflip), float(scale)
        self.rotate_frac, self.aniso, self.translate_frac = float(rotate_frac), float(aniso), float(translate_frac)


NETWORK_KWARGS = dict(img_resolution=16, img_channels=3, label_dim=10, use_fp16=False, model_type="SongUNet",
                      augment_dim=9, model_channels=8, resample_filter=[1, 1], dropout_unused=np.float32(0.13))


def _make_network(**overrides) -> EDMPrecond:
    torch.manual_seed(0)
    kwargs = {**NETWORK_KWARGS, **overrides}
    kwargs.pop("dropout_unused")  # only to carry a float32 numpy scalar into _init_kwargs below
    net = EDMPrecond(**kwargs)
    net._init_kwargs = {**net._init_kwargs, "dropout": np.float32(0.13)}
    return net.eval().requires_grad_(False)


def _edm_data(net) -> dict:
    """What EDM's training loop pickles."""
    return dict(
        ema=net,
        loss_fn=EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5),
        augment_pipe=AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1),
        dataset_kwargs=_FakeEasyDict(class_name="training.dataset.ImageFolderDataset",
                                     path="datasets/cifar10-32x32.zip", use_labels=True, xflip=False,
                                     cache=True, resolution=16, max_size=50000),
    )


@pytest.fixture()
def edm_file(tmp_path):
    net = _make_network()
    path = tmp_path / "edm-tiny-16x16-cond-vp.pkl"
    markers = write_edm_pickle(path, _edm_data(net), tmp_path)
    return path, net, markers


def _globals_in(data: bytes) -> set[str]:
    """Every global a pickle refers to, read from its opcodes (nothing is loaded)."""
    found, pushed, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        elif op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
            pushed.append(None)
        else:
            pushed.append(None)
    return found


def _assert_not_executed(markers):
    for m in markers if isinstance(markers, (list, tuple)) else markers.values():
        assert not Path(m).exists(), f"payload ran: {m}"
    for name in _FAKE_MODULES:
        assert name not in sys.modules


# ----------------------------------------------------------------------------------------------
# Genuine files


def test_fixture_refers_to_exactly_the_documented_globals(edm_file):  # docs/edm.md#safe-loading
    path, _, _ = edm_file
    found = _globals_in(path.read_bytes())
    assert found == {
        "torch_utils.persistence._reconstruct_persistent_obj",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "collections.OrderedDict",
        "torch.nn.modules.container.ModuleDict",  # protocol 4: NEWOBJ, no copyreg._reconstructor
        "torch.storage._load_from_bytes",
        "numpy.dtype",
        f"{NUMPY_SCALAR_MODULE}.scalar",
        "dnnlib.util.EasyDict",
    }
    assert {tuple(g.rsplit(".", 1)) for g in found} <= ALLOWED_GLOBALS


def test_loads_weights_constructor_and_extras_without_running_module_src(edm_file):
    path, net, markers = edm_file
    ckpt = load_edm_checkpoint(path)
    assert isinstance(ckpt, EDMCheckpoint) and ckpt.path == path
    _assert_not_executed(markers)

    # Weights: exactly the keys, order, dtypes and values of the module's own state_dict().
    expected = net.state_dict()
    assert list(ckpt.state_dict) == list(expected)
    assert "model.enc.16x16_conv.weight" in ckpt.state_dict
    assert "model.enc.8x8_down.conv0.resample_filter" in ckpt.state_dict  # persistent buffer
    assert not any("freqs_cache" in k for k in ckpt.state_dict)  # non-persistent buffer
    assert "model.map_augment.bias" not in ckpt.state_dict  # None parameter
    for k, t in expected.items():
        got = ckpt.state_dict[k]
        assert type(got) is torch.Tensor and not got.requires_grad
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), k

    # Constructor in EDM's form, numpy scalars as Python numbers.
    assert ckpt.constructor == {
        "precond": "EDMPrecond", "img_resolution": 16, "img_channels": 3, "label_dim": 10, "use_fp16": False,
        "model_type": "SongUNet", "augment_dim": 9, "model_channels": 8, "resample_filter": [1, 1],
        "dropout": pytest.approx(0.13),
    }
    assert type(ckpt.constructor["dropout"]) is float
    assert list(ckpt.constructor)[0] == "precond"

    # Records are inert and keep what the file said.
    ema = ckpt.ema
    assert isinstance(ema, PersistentRecord) and ema.class_name == "EDMPrecond" and ema.version == 6
    assert ema.module is None and "executed" in ema.module_src and len(ema.module_src_sha256) == 64
    assert ema.state["sigma_max"] == float("inf") and ema.state["sigma_data"] == 0.5
    enc = ema.modules["model"].modules["enc"]
    assert isinstance(enc, ModuleDictRecord) and enc.class_name == "ModuleDict"
    block = enc.modules["16x16_block0"]
    assert block.class_name == "UNetBlock"
    assert type(block.init_kwargs["skip_scale"]) is float and block.init_kwargs["skip_scale"] == np.sqrt(0.5)
    assert type(block.state["skip_scale"]) is float

    # The other entries.
    assert set(ckpt.extra) == {"loss_fn", "augment_pipe", "dataset_kwargs"}
    assert type(ckpt.extra["dataset_kwargs"]) is dict
    assert ckpt.extra["dataset_kwargs"]["path"] == "datasets/cifar10-32x32.zip"
    assert ckpt.extra["loss_fn"].class_name == "EDMLoss" and ckpt.extra["loss_fn"].state["P_std"] == 1.2
    assert ckpt.extra["augment_pipe"].init_kwargs["p"] == 0.12


def test_sid_generator_file_with_only_ema(tmp_path):
    """SiD's published generators: the same format (here with nothing but the network)."""
    net = _make_network(label_dim=0)
    path = tmp_path / "sid-generator.pkl"
    markers = write_edm_pickle(path, dict(ema=net), tmp_path)
    ckpt = load_edm_checkpoint(path)
    _assert_not_executed(markers)
    assert ckpt.extra == {} and ckpt.constructor["label_dim"] == 0
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in net.state_dict().items())


def test_positional_constructor_arguments_are_named(tmp_path):
    net = _make_network()
    net._edm_class_name = "VPPrecond"
    net._init_args = (16, 3)
    net._init_kwargs = {"label_dim": 10, "model_type": "SongUNet"}
    path = tmp_path / "vp.pkl"
    write_edm_pickle(path, dict(ema=net), tmp_path)
    ckpt = load_edm_checkpoint(path)
    assert ckpt.constructor == {"precond": "VPPrecond", "label_dim": 10, "model_type": "SongUNet",
                                "img_resolution": 16, "img_channels": 3}


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("value", [np.float64(np.sqrt(0.5)), np.float32(0.13), np.float16(-2.5), np.int64(-7),
                                   np.uint8(200), np.bool_(True), np.complex64(1 + 2j)])
def test_numpy_scalars_under_both_module_names_become_python_numbers(module, value):
    data = pickle.dumps({"x": value}, protocol=3)  # protocol 3: text GLOBAL lines, easy to rename
    data = data.replace(f"c{NUMPY_SCALAR_MODULE}\nscalar\n".encode(), f"c{module}\nscalar\n".encode())
    assert _globals_in(data) == {"numpy.dtype", f"{module}.scalar"}
    got = edm_pickle._EDMUnpickler(io.BytesIO(data), None).load()["x"]
    assert type(got) is type(value.item()) and got == value.item()


# ----------------------------------------------------------------------------------------------
# Malicious files: refused, payload provably not run


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Handmade:
    """Pickles as a call of ``module.name(*args)`` spelled exactly so (e.g. ``os.system``, which
    ``pickle`` itself would write as ``posix.system``)."""

    def __init__(self, module: str, name: str, args: tuple[str, ...]):
        self.module, self.name, self.args = module, name, args


def _dumps(obj) -> bytes:
    if not isinstance(obj, _Handmade):
        return pickle.dumps({"ema": obj, "dataset_kwargs": {}}, protocol=4)
    out = b"\x80\x02}X\x03\x00\x00\x00ema" + f"c{obj.module}\n{obj.name}\n(".encode()
    for a in obj.args:
        raw = a.encode()
        out += b"X" + len(raw).to_bytes(4, "little") + raw
    return out + b"tRs."


def _payloads(marker: Path):
    code = f"open({str(marker)!r}, 'w').write('payload ran')"
    return {
        "os.system": (_Handmade("os", "system", (f"touch {marker}",)), "os.system"),
        "posix.system": (_Payload(os.system, (f"touch {marker}",)), f"{os.system.__module__}.system"),
        "builtins.getattr": (_Handmade("builtins", "getattr", ("os", "system")), "builtins.getattr"),
        "builtins.eval": (_Payload(eval, (code,)), "builtins.eval"),
        "builtins.exec": (_Payload(exec, (code,)), "builtins.exec"),
        "subprocess.Popen": (_Payload(subprocess.Popen, (["touch", str(marker)],)), "subprocess.Popen"),
        "builtins.open": (_Handmade("builtins", "open", (str(marker), "w")), "builtins.open"),
        "unknown class": (nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
        "allowed module, other name": (_Payload(torch.load, (str(marker),)), "torch.serialization.load"),
    }


@pytest.mark.parametrize("kind", list(_payloads(Path("x"))))
def test_malicious_globals_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[kind]
    path = tmp_path / "evil.pkl"
    path.write_bytes(_dumps(payload))
    assert _globals_in(path.read_bytes()) >= {global_name}
    with pytest.raises(UnsafeCheckpointError) as err:
        load_edm_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and global_name in msg
    assert "nothing from the file was executed" in msg
    assert isinstance(err.value, EDMCheckpointError)
    _assert_not_executed([marker])


def test_global_smuggled_into_a_nested_module_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    net = _make_network()
    # Deep inside: an attribute of a block in the encoder's ModuleDict.
    net.model.enc["16x16_block0"].conv0.__dict__["hook"] = _Payload(exec, (f"open({str(marker)!r}, 'w')",))
    path = tmp_path / "evil.pkl"
    markers = write_edm_pickle(path, _edm_data(net), tmp_path)
    assert "builtins.exec" in _globals_in(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        load_edm_checkpoint(path)
    _assert_not_executed([marker, *markers.values()])


def test_persistent_object_of_another_type_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    markers = write_edm_pickle(path, _edm_data(_make_network()), tmp_path, meta_type="module")
    with pytest.raises(UnsafeCheckpointError, match="type 'module'"):
        load_edm_checkpoint(path)
    _assert_not_executed(markers)


def test_other_persistence_version_is_an_error(tmp_path):
    path = tmp_path / "old.pkl"
    markers = write_edm_pickle(path, _edm_data(_make_network()), tmp_path, version=5)
    with pytest.raises(EDMCheckpointError, match="version 5") as err:
        load_edm_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    _assert_not_executed(markers)


def test_protocol_1_reconstructor_is_refused(tmp_path):
    """copyreg._reconstructor (ModuleDict at protocols 0-1) never occurs in EDM's files."""
    path = tmp_path / "p1.pkl"
    path.write_bytes(pickle.dumps({"ema": nn.ModuleDict()}, protocol=1, fix_imports=False))
    assert "copyreg._reconstructor" in _globals_in(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="copyreg._reconstructor"):
        load_edm_checkpoint(path)


def test_malicious_nested_storage_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Payload(exec, (f"open({str(marker)!r}, 'w')",)), protocol=2)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Payload(torch.storage._load_from_bytes, (inner,))}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_edm_checkpoint(path)
    _assert_not_executed([marker])


def test_tensor_with_backward_hooks_is_refused(tmp_path):
    storage = torch.zeros(4).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    evil = _Payload(torch._utils._rebuild_tensor_v2,
                    (typed, 0, (4,), (1,), False, OrderedDict(hook=_Payload(OrderedDict, ()))))
    path = tmp_path / "hooks.pkl"
    path.write_bytes(pickle.dumps({"ema": evil}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="backward hooks"):
        load_edm_checkpoint(path)


def test_tensor_on_a_forged_storage_is_refused(tmp_path):
    evil = _Payload(torch._utils._rebuild_tensor_v2, (OrderedDict(), 0, (4,), (1,), False, OrderedDict()))
    path = tmp_path / "forged.pkl"
    path.write_bytes(pickle.dumps({"ema": evil}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="storage"):
        load_edm_checkpoint(path)


def test_persistent_ids_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, str) and obj == "x" else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"ema": "x"})
    path = tmp_path / "pid.pkl"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="persistent id"):
        load_edm_checkpoint(path)


def test_a_file_cannot_change_the_functions_it_names(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD {"__defaults__"-like attribute} on it.
    data = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x03\x00\x00\x00fooK\x01sb."
    path = tmp_path / "tamper.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="change the attributes"):
        load_edm_checkpoint(path)
    assert not hasattr(torch._utils._rebuild_tensor_v2, "foo")
    # The same with a (dict, slots) state aimed at the ModuleDict stand-in class.
    data = b"\x80\x02ctorch.nn.modules.container\nModuleDict\nN}X\x03\x00\x00\x00fooK\x01s\x86b."
    path.write_bytes(data)
    with pytest.raises(EDMCheckpointError):
        load_edm_checkpoint(path)
    assert not hasattr(ModuleDictRecord, "foo")
    # And a dtype aimed at numpy's shared float64 (copy=True keeps the singleton untouched).
    data = pickle.dumps(np.dtype(">f8"), protocol=2)
    assert edm_pickle._EDMUnpickler(io.BytesIO(data), None).load() == np.dtype(">f8")
    assert np.dtype("f8").byteorder == "="


def test_object_dtype_scalar_is_refused(tmp_path):
    data = pickle.dumps({"x": np.float64(1.0)}, protocol=3).replace(b"X\x02\x00\x00\x00f8", b"X\x02\x00\x00\x00O8")
    path = tmp_path / "odtype.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="numpy dtype"):
        load_edm_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# Broken files: one clear line naming the file


@pytest.mark.parametrize("keep", [0.5, 0.9, 10, -1])
def test_truncated_file(edm_file, tmp_path, keep):
    path, _, markers = edm_file
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(data) + keep)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[:n])
    with pytest.raises(EDMCheckpointError) as err:
        load_edm_checkpoint(cut)
    msg = str(err.value)
    assert "\n" not in msg and str(cut) in msg and "truncated" in msg
    assert not isinstance(err.value, UnsafeCheckpointError)
    _assert_not_executed(markers)


def test_other_broken_files(tmp_path):
    cases = {
        "missing.pkl": (None, "file not found"),
        "empty.pkl": (b"", "empty"),
        "text.pkl": (b"hello, this is not a pickle\n", "not a pickle"),
        "no-ema.pkl": (pickle.dumps({"G": 1, "loss_fn": None}, protocol=4), "no 'ema' network (entries: G, loss_fn)"),
        "list.pkl": (pickle.dumps([1, 2], protocol=4), "holds a list"),
        "plain-ema.pkl": (pickle.dumps({"ema": {"a": 1}}, protocol=4), "not a persistent EDM module"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(EDMCheckpointError) as err:
            load_edm_checkpoint(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and reason in msg, msg
    zpath = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(1)}, zpath)
    assert zipfile.is_zipfile(zpath)
    with pytest.raises(EDMCheckpointError, match="zip archive"):
        load_edm_checkpoint(zpath)


# ----------------------------------------------------------------------------------------------
# The network (sidbench.teachers.networks.build_edm_network)

HAVE_BUILD = (REPO / "teachers" / "networks" / "build.py").exists()
PARITY = REPO / "tests" / "fixtures" / "edm-parity.pt"


@persistent
class _Node(nn.Module):
    """A generic persistent module for writing a file from a flat state_dict."""


def _edm_file_from_state_dict(path: Path, constructor: dict, state_dict: dict, buffers: set[str],
                              marker_dir: Path) -> dict[str, Path]:
    top = _Node()
    top._edm_class_name = constructor["precond"]
    top._init_kwargs = {k: v for k, v in constructor.items() if k != "precond"}
    for key, t in state_dict.items():
        *parents, leaf = key.split(".")
        node = top
        for depth, name in enumerate(parents):
            if name not in node._modules:
                child = nn.ModuleDict() if depth == 1 and name in ("enc", "dec") else _Node()
                if depth == 0:
                    child._edm_class_name = constructor["model_type"]
                node.add_module(name, child)
            node = node._modules[name]
        if key in buffers:
            node.register_buffer(leaf, t.clone())
        else:
            node.register_parameter(leaf, nn.Parameter(t.clone(), requires_grad=False))
    return write_edm_pickle(path, dict(ema=top, dataset_kwargs=_FakeEasyDict(resolution=16)), marker_dir)


@pytest.mark.skipif(not HAVE_BUILD, reason="teachers/networks/build.py not written yet")
@pytest.mark.skipif(not PARITY.exists(), reason="tests/fixtures/edm-parity.pt missing")
@pytest.mark.parametrize("config", ["songunet-tiny-cond/EDMPrecond", "dhariwal-tiny-cond/EDMPrecond"])
def test_load_teacher_file_reproduces_the_weights_and_outputs_of_a_pickle(tmp_path, config):
    from sidbench.teachers.load import load_teacher_file

    from sidbench.teachers.networks import build_edm_network

    ref = torch.load(PARITY, weights_only=True)[config]
    direct = build_edm_network(ref["constructor"]).eval()
    direct.load_state_dict(ref["state_dict"], strict=True)
    buffers = {k for k, _ in direct.named_buffers()}

    path = tmp_path / "teacher.pkl"
    markers = _edm_file_from_state_dict(path, ref["constructor"], ref["state_dict"], buffers, tmp_path)
    net, constructor, _ = load_teacher_file(path)
    net.eval()
    _assert_not_executed(markers)
    assert constructor == ref["constructor"]
    loaded = net.state_dict()
    assert list(loaded) == list(direct.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in ref["state_dict"].items())
    with torch.no_grad():  # one sample: the CPU forward pass is the slow part of this test
        args = (ref["x"][:1], ref["sigma"][:1], ref["class_labels"][:1])
        kwargs = {} if ref["augment_labels"] is None else {"augment_labels": ref["augment_labels"][:1]}
        assert torch.equal(net(*args, **kwargs), direct(*args, **kwargs))


@pytest.mark.skipif(not HAVE_BUILD, reason="teachers/networks/build.py not written yet")
@pytest.mark.skipif(not PARITY.exists(), reason="tests/fixtures/edm-parity.pt missing")
def test_a_pickle_that_does_not_fit_its_network_is_one_line(tmp_path):
    from sidbench.teachers.load import TeacherLoadError, load_teacher_file
    from sidbench.teachers.networks import build_edm_network

    ref = torch.load(PARITY, weights_only=True)["songunet-tiny-cond/EDMPrecond"]
    buffers = {k for k, _ in build_edm_network(ref["constructor"]).named_buffers()}

    # A missing tensor.
    sd = dict(ref["state_dict"])
    sd.pop("model.map_layer0.weight")
    path = tmp_path / "missing.pkl"
    _edm_file_from_state_dict(path, ref["constructor"], sd, buffers, tmp_path)
    with pytest.raises(TeacherLoadError) as err:
        load_teacher_file(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "missing in the file: model.map_layer0.weight" in msg

    # Constructor arguments that do not fit the weights.
    path = tmp_path / "wide.pkl"
    _edm_file_from_state_dict(path, {**ref["constructor"], "model_channels": 32}, ref["state_dict"], buffers, tmp_path)
    with pytest.raises(TeacherLoadError, match="shape mismatches") as err:
        load_teacher_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)

    # Constructor arguments the builder does not know.
    path = tmp_path / "unknown.pkl"
    _edm_file_from_state_dict(path, {**ref["constructor"], "wings": 2}, ref["state_dict"], buffers, tmp_path)
    with pytest.raises(TeacherLoadError, match="cannot build the network") as err:
        load_teacher_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_errors_survive_pickling():
    for err in (EDMCheckpointError("/x/a.pkl", "bad"), UnsafeCheckpointError("/x/a.pkl", "it refers to os.system")):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err) and again.path == Path("/x/a.pkl")
