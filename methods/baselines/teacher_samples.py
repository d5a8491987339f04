"""The images x that progressive distillation (arXiv 2202.00512) and consistency distillation
(arXiv 2303.01469) noise into x_t: the teacher's own samples (data-free), or the dataset's images.

Unlike SiD, both baselines regress along the teacher's ODE from a noised image x + t n, so they need
x. `method.data` chooses:

- ``teacher`` (default): `num_teacher_samples` samples of the teacher's deterministic Heun sampler
  (EDM, arXiv 2206.00364) at `teacher_sampler_steps`, made once before training and drawn
  uniformly with replacement afterwards. Sample i's noise (and class, for a conditional teacher)
  comes from a private stream keyed by (seed, its chunk of `teacher_sample_batch`), so the set is a
  function of its `SampleSpec` alone: the same on 1 or N processes, and the same when remade.
- ``real``: the dataset's training images through `ctx.real(n)` (the run opens them because the
  method's `uses_real_data(cfg)` is then true).

Their settings (`method.data`, `method.num_teacher_samples`, ...) are `TrainingImagesSettings`
(methods/baselines/settings.py), checked before the run starts.

The cache. The samples are stored under `<sidbench cache>/teacher-samples/` (see
`sidbench.download.default_cache_dir`), named by a hash of their `SampleSpec`: the teacher's
identity (its source and the SHA-256 of its file, or of its weights when it is not a file), the
Heun steps, the count, the seed, the chunk size and the class frequencies. A later run with the
same spec loads them instead of sampling again.

What a run is charged (equal compute, README "Equal compute"). Making the samples is work done
before training: the trainer runs `Method.prepare` inside `ctx.precompute()`, so every teacher call
is counted (count x (2 steps - 1) teacher passes, and their FLOPs). The cost is also measured on
its own and recorded in the cache file; a run that *reuses* the cache is charged that recorded
cost once (`ComputeCounter.charge`), so a run costs the same with a cold or a warm cache and two
runs given the same budget stop at the same point. A resumed run calls `prepare` too (the method
contract): it loads the cache (or, if the cache is gone, remakes the identical samples), and the
trainer drops that second charge, since the checkpoint's counters already hold the first.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from sidbench.atomic import atomic_path
from sidbench.distributed import broadcast_object, is_distributed, reduce_values
from sidbench.download import default_cache_dir, sha256_file
from sidbench.methods.baselines.settings import DATA_MODES
from sidbench.seeding import generator
from sidbench.diffusion import heun_sample
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.compute import Cost, ComputeCounter
from sidbench.trainer.context import StepContext

__all__ = ["DATA_MODES", "SampleSpec", "TeacherSamples", "TrainingImages", "teacher_identity", "cache_path",
           "make_teacher_samples", "load_teacher_samples", "save_teacher_samples", "obtain_teacher_samples"]

#: tag of the random stream of the teacher samples' noise, apart from every training draw
SAMPLE_STREAM = 0x7EAC4E
CACHE_FOLDER = "teacher-samples"
#: bump when the file layout or the way the samples are drawn changes (2: the noise is kept too)
FORMAT = 2


@dataclass(frozen=True)
class SampleSpec:
    """Everything the teacher samples depend on: their cache key."""

    teacher: str
    steps: int
    count: int
    seed: int
    batch: int
    shape: tuple[int, int, int]
    label_dim: int = 0
    label_freq: tuple[float, ...] | None = None

    @property
    def nfe(self) -> int:
        """Heun with `steps` steps on a grid ending at 0: 2 steps - 1 teacher calls per sample."""
        return 2 * self.steps - 1

    def as_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)

    def key(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()[:20]

    def filename(self) -> str:
        return f"heun{self.steps}-n{self.count}-seed{self.seed}-{self.key()}.safetensors"


@dataclass
class TeacherSamples:
    """Teacher samples in [-1, 1] (float32, on the CPU), their classes, what making them cost, and
    the unit-Gaussian noise each came from (DMD's regression pairs are (noise, sample))."""

    images: Tensor
    classes: Tensor | None
    label_dim: int
    cost: Cost
    noise: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def draw(self, n: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """n samples drawn uniformly with replacement from torch's global stream (which the step
        context seeds per micro-batch), with their one-hot labels (None if unconditional)."""
        return self._take(torch.randint(len(self), (n,)), device)[1:]

    def draw_pairs(self, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """n (noise, sample, one-hot label) triples, drawn as `draw` draws."""
        if self.noise is None:
            raise RuntimeError("these teacher samples were stored without their noise")
        return self._take(torch.randint(len(self), (n,)), device)

    def _take(self, index: Tensor, device: torch.device) -> tuple[Tensor | None, Tensor, Tensor | None]:
        noise = None if self.noise is None else self.noise[index].to(device)
        images = self.images[index].to(device)
        if self.classes is None:
            return noise, images, None
        return noise, images, torch.nn.functional.one_hot(self.classes[index], self.label_dim).float().to(device)


# -- the key ---------------------------------------------------------------------------------------
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:  # hashing a 64x64 teacher takes a second or two: once per process
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _weights_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def teacher_identity(teacher: Teacher) -> str:
    """The teacher's source and a SHA-256 of its content: the card's recorded value, else the
    file's, else (a teacher built in memory, like the analytic Gaussian) of its weights."""
    declared = (teacher.info or {}).get("sha256")
    path = Path(str(teacher.source))
    if declared:
        digest = str(declared)
    elif path.is_file():
        digest = _file_digest(path)
    else:
        digest = "weights:" + _weights_digest(teacher.net)
    return f"{teacher.source} sha256:{digest}"


def cache_path(spec: SampleSpec, root: Path | None = None) -> Path:
    return (root if root is not None else default_cache_dir() / CACHE_FOLDER) / spec.filename()


# -- making, saving, loading -----------------------------------------------------------------------
def _chunk(net: torch.nn.Module, spec: SampleSpec, index: int, device: torch.device,
           freq: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    start = index * spec.batch
    n = min(spec.batch, spec.count - start)
    g = generator(spec.seed, SAMPLE_STREAM, index)  # on the CPU: the same draws on every device
    classes = torch.multinomial(freq, n, replacement=True, generator=g) if freq is not None else None
    z = torch.randn(n, *spec.shape, generator=g).to(device)
    labels = None if classes is None else torch.nn.functional.one_hot(classes, spec.label_dim).float().to(device)
    images = heun_sample(net, z, labels, num_steps=spec.steps)
    return images.float().cpu(), classes, z.cpu()


def _gather(parts: dict[int, tuple[Tensor, Tensor | None, Tensor]], world: int) -> dict[int, tuple[Tensor, Tensor | None, Tensor]]:
    if world == 1 or not is_distributed():
        return parts
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, parts)
    return {k: v for part in gathered for k, v in part.items()}


def make_teacher_samples(net: torch.nn.Module, spec: SampleSpec, device: torch.device,
                         rank: int = 0, world: int = 1) -> TeacherSamples:
    """Sample the teacher; process `rank` of `world` makes every world-th chunk and all gather the
    rest. Its cost is measured on its own (a private counter, summed over processes) to record it."""
    freq = torch.tensor(spec.label_freq, dtype=torch.float64) if spec.label_dim else None
    own = ComputeCounter(count_flops=True)
    own.attach({"teacher": net})
    chunks = range(rank, -(-spec.count // spec.batch), world)
    try:
        with own.precompute():
            parts = {i: _chunk(net, spec, i, device, freq) for i in chunks}
    finally:
        own.detach()
    parts = _gather(parts, world)
    cost = reduce_values({}, asdict(own.take()), device)[1]
    images = torch.cat([parts[i][0] for i in sorted(parts)])
    classes = torch.cat([parts[i][1] for i in sorted(parts)]) if spec.label_dim else None
    noise = torch.cat([parts[i][2] for i in sorted(parts)])
    return TeacherSamples(images, classes, spec.label_dim, Cost(**cost), noise)


def save_teacher_samples(samples: TeacherSamples, spec: SampleSpec, path: Path) -> Path:
    """Write atomically (a temporary file, then a rename): a reader never sees half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": samples.images.contiguous()}
    if samples.noise is not None:
        tensors["noise"] = samples.noise.contiguous()
    if samples.classes is not None:
        tensors["classes"] = samples.classes.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"spec": spec.as_json(), "cost": json.dumps(asdict(samples.cost))})
    return path


def load_teacher_samples(path: Path, spec: SampleSpec) -> TeacherSamples | None:
    """The cached samples of `spec`, or None when the file is missing, unreadable or of another spec."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            images = f.get_tensor("images")
            classes = f.get_tensor("classes") if spec.label_dim else None
            noise = f.get_tensor("noise") if "noise" in f.keys() else None
        if meta.get("spec") != spec.as_json() or tuple(images.shape) != (spec.count, *spec.shape):
            return None
        cost = Cost(**json.loads(meta["cost"]))
    except Exception:  # noqa: BLE001 - a damaged cache is remade, whatever the damage
        return None
    return TeacherSamples(images, classes, spec.label_dim, cost, noise)


def obtain_teacher_samples(net: torch.nn.Module, spec: SampleSpec, device: torch.device, rank: int = 0,
                           world: int = 1, root: Path | None = None) -> tuple[TeacherSamples, bool]:
    """(samples, whether they came from the cache). Rank 0 alone decides whether the cache is
    usable and tells the others, so that all processes take the same branch (and meet in the same
    collectives); processes on several machines need a cache folder they share."""
    path = cache_path(spec, root)
    samples = load_teacher_samples(path, spec) if rank == 0 else None
    if broadcast_object(samples is not None if rank == 0 else None):
        if samples is None:
            samples = load_teacher_samples(path, spec)
            if samples is None:
                raise RuntimeError(f"teacher samples {path} are readable on rank 0 but not on rank {rank}")
        return samples, True
    samples = make_teacher_samples(net, spec, device, rank, world)
    if rank == 0:
        try:
            save_teacher_samples(samples, spec, path)
        except OSError as e:  # a read-only cache costs a later run its samples, not this run
            warnings.warn(f"teacher samples not cached at {path}: {e}", stacklevel=2)
    return samples, False


# -- what a method holds ---------------------------------------------------------------------------
def label_freq(teacher: Teacher, full_cfg: DictConfig | None) -> tuple[float, ...] | None:
    """The class frequencies teacher samples are drawn with (None for an unconditional teacher)."""
    if not teacher.label_dim:
        return None
    from sidbench.labels import label_frequencies

    spec = full_cfg.dataset.get("label_freq") if full_cfg is not None else None
    card = full_cfg.dataset if full_cfg is not None else {}
    return tuple(float(v) for v in label_frequencies(teacher.label_dim, spec, card).tolist())


def charge_recorded(ctx: StepContext, samples: TeacherSamples) -> None:
    """Charge a set of samples made earlier (cached, or a file) the cost it recorded, once over all
    processes, so a warm cache changes no budget (FLOPs only where the run counts them)."""
    if ctx.rank == 0:
        cost = samples.cost
        ctx.counter.charge(Cost(cost.passes, cost.teacher_passes, cost.flops if ctx.counter.count_flops else 0.0))


def samples_for_training(teacher: Teacher, spec: SampleSpec, device: torch.device,
                         ctx: StepContext) -> tuple[TeacherSamples, bool]:
    """The samples of `spec` and whether the cache held them (call it from `prepare`). Made now,
    they are counted as they are made; taken from the cache, they are charged their recorded cost."""
    samples, hit = obtain_teacher_samples(teacher.net, spec, device, ctx.rank, ctx.world_size)
    if hit:
        charge_recorded(ctx, samples)
    return samples, hit


class TrainingImages:
    """The x of a method's loss, from `cfg.data` (see the module docstring); its settings were
    checked before the run started."""

    def __init__(self, cfg: DictConfig, teacher: Teacher, full_cfg: DictConfig | None, device: torch.device) -> None:
        self.mode = str(cfg.data)
        self.teacher = teacher
        self.device = device
        self.samples: TeacherSamples | None = None
        self.spec = self._spec(cfg, teacher, full_cfg) if self.mode == "teacher" else None

    @staticmethod
    def _spec(cfg: DictConfig, teacher: Teacher, full_cfg: DictConfig | None) -> SampleSpec:
        return SampleSpec(teacher_identity(teacher), int(cfg.teacher_sampler_steps), int(cfg.num_teacher_samples),
                          int(cfg.teacher_sample_seed), int(cfg.teacher_sample_batch), tuple(teacher.shape),
                          teacher.label_dim, label_freq(teacher, full_cfg))

    def prepare(self, ctx: StepContext) -> bool:
        """Make or load the teacher samples (from the method's `prepare`, on a fresh or resumed
        run). Returns whether the cache was used."""
        if self.spec is None:
            return False
        self.samples, hit = samples_for_training(self.teacher, self.spec, self.device, ctx)
        return hit

    def draw(self, ctx: StepContext, n: int) -> tuple[Tensor, Tensor | None]:
        """n images x and their labels; call inside an update's loss function (seeded draws)."""
        if self.mode == "real":
            return ctx.real(n)
        if self.samples is None:
            raise RuntimeError("teacher samples are not loaded: call prepare(ctx) before the update")
        return self.samples.draw(n, self.device)

    def describe(self) -> dict[str, Any]:
        """For the run's records: where x came from."""
        if self.spec is None:
            return {"data": "real"}
        return {"data": "teacher", "teacher_samples": self.spec.count, "teacher_sampler_steps": self.spec.steps}
