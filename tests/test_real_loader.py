"""Real images from an EDM dataset on disk through `RealImageLoader`: one stream fixed by (seed, rank)
whatever the workers, chunks and prefetch; resumable at its position; decoded by worker processes;
images and labels kept together; a file that breaks is one line; and a run that resumes draws what an
uninterrupted run draws."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from sidbench.data.loader import BLOCK, STREAM, RealImageLoader, stream_indices
from sidbench.data.real import DataError, open_edm_dataset
from sidbench.seeding import generator
from sidbench.testing.edm_dataset import flat_edm_zip, flat_png
from sidbench.testing.tiny import tiny_overrides

CPU = torch.device("cpu")


def _index(images: torch.Tensor) -> torch.Tensor:
    """The image's number i (each test image is flat at 5 i)."""
    return torch.round((images[:, 0, 0, 0] + 1) * 127.5 / 5).long()


def test_the_stream_is_blocks_of_seeded_draws() -> None:
    # by hand: positions BLOCK-3 .. BLOCK+2 are the last 3 of block 0 and the first 3 of block 1
    b0 = torch.randint(40, (BLOCK,), generator=generator(7, STREAM, 1, 0))
    b1 = torch.randint(40, (BLOCK,), generator=generator(7, STREAM, 1, 1))
    assert torch.equal(stream_indices(40, 7, 1, BLOCK - 3, 6), torch.cat([b0[-3:], b1[:3]]))
    assert not torch.equal(stream_indices(40, 7, 0, 0, 64), stream_indices(40, 7, 1, 0, 64))  # ranks differ
    assert not torch.equal(stream_indices(40, 7, 0, 0, 64), stream_indices(40, 8, 0, 0, 64))  # seeds differ
    # uniform with replacement: every image drawn, about equally often
    counts = torch.bincount(stream_indices(40, 7, 0, 0, 40_000), minlength=40).float()
    assert counts.min() > 850 and counts.max() < 1150  # 1000 expected; > 4.7 std either side is off


@pytest.mark.parametrize(("workers", "chunk", "prefetch"), [(0, 5, 1), (2, 3, 2), (1, 64, 4)])
def test_workers_chunks_and_prefetch_change_nothing(tmp_path: Path, workers: int, chunk: int, prefetch: int) -> None:
    data = open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 40, (3, 8, 8), labels=True), (3, 8, 8), label_dim=3)
    loader = RealImageLoader(data, seed=7, rank=0, workers=workers, chunk=chunk, prefetch=prefetch)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    got = [loader.draw(n, CPU) for n in (4, 7, 1, 12)]
    assert torch.equal(torch.get_rng_state(), before)  # the training loop's random state is left alone
    want = stream_indices(40, 7, 0, 0, 24)
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([c for _, c in got])
    assert images.shape == (24, 3, 8, 8) and images.dtype == torch.float32 and labels.shape == (24, 3)
    assert torch.equal(_index(images), want)  # the stream's images, in order
    assert torch.equal(labels.argmax(1), want % 3)  # each with its own class
    assert loader.state_dict() == {"position": 24}
    loader.close()


def test_a_loader_resumes_at_its_position(tmp_path: Path) -> None:
    data = open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 30, (1, 8, 8), labels=False), (1, 8, 8), label_dim=0)
    straight = RealImageLoader(data, seed=3, workers=1, chunk=4)
    whole = [straight.draw(5, CPU)[0] for _ in range(6)]
    first = RealImageLoader(data, seed=3, workers=1, chunk=4)
    part = [first.draw(5, CPU)[0] for _ in range(2)]
    state = first.state_dict()
    first.close()
    again = RealImageLoader(data, seed=3, workers=2, chunk=7)  # other workers and chunks: the same stream
    again.load_state_dict(state)
    part += [again.draw(5, CPU)[0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(whole, part))
    assert whole[0][1] is not None


def test_a_member_that_does_not_decode_is_one_line_from_a_worker(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("00000/img00000000.png", flat_png(0, (1, 8, 8)))
        z.writestr("00000/img00000001.png", b"not a png")
        z.writestr("dataset.json", json.dumps({"labels": None}))
    data = open_edm_dataset(path, (1, 8, 8), 0)  # the first image decodes: the zip opens
    loader = RealImageLoader(data, seed=0, workers=1, chunk=8)
    with pytest.raises(DataError) as e:
        loader.draw(8, CPU)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "00000/img00000001.png" in message


@pytest.mark.parametrize(("case", "expected"), [
    ("broken", "is not a readable zip"),
    ("json", "is not JSON"),
    ("pairs", "are not [[image name, class], ...]"),
])
def test_a_dataset_that_breaks_when_opened_is_one_line(tmp_path: Path, case: str, expected: str) -> None:
    path = flat_edm_zip(tmp_path / "d.zip", 4, (3, 8, 8), labels=True)
    if case == "broken":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short, as an interrupted copy
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("00000/img00000000.png", flat_png(0, (3, 8, 8)))
            z.writestr("dataset.json", "{labels: oops" if case == "json" else json.dumps({"labels": [1, 2, 3]}))
    with pytest.raises(DataError) as e:
        open_edm_dataset(path, (3, 8, 8), label_dim=3)
    assert expected in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def _losses(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in d.items() if k.startswith("loss/")} for d in lines if any(k.startswith("loss/") for k in d)]


def test_a_resumed_run_reads_what_an_uninterrupted_run_reads(tiny_teacher: Path, run_env: Path) -> None:
    """SiDA on a dataset zip through the loader (2 workers): 4 iterations straight, or 2 then resumed
    for 2 more; the losses, which depend on every real image drawn, are equal."""
    from sidbench.cli import main

    zip_path = flat_edm_zip(run_env / "digits.zip", 50, (1, 8, 8), labels=False)
    common = ["method=sida", f"dataset.images.path={zip_path}", "data.workers=2", "data.chunk=5", "method.dropout=0",
              "method.generator_start_kimg=0.008", "method.adversarial_start_kimg=0.016", "eval.enabled=false",
              "tracking.enabled=false"]
    over = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.032, "trainer.tick_kimg": 0.008,
                                           "trainer.checkpoint_every_kimg": 0.016})
    assert main(["run", *common, *over, "run_name=straight"]) == 0
    half = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.016, "trainer.tick_kimg": 0.008,
                                           "trainer.checkpoint_every_kimg": 0.016})
    assert main(["run", *common, *half, "run_name=resumed"]) == 0
    ckpt = torch.load(run_env / "runs" / "digits" / "resumed" / "checkpoint.pt", weights_only=False)
    # the fake-score update reads 8 images an iteration; from 0.008 kimg the generator update 8 more
    assert ckpt["real_data"] == {"position": 8 + 16}
    assert main(["run", f"resume={run_env / 'runs' / 'digits' / 'resumed'}", "trainer.kimg=0.032"]) == 0
    straight, resumed = (_losses(run_env / "runs" / "digits" / n) for n in ("straight", "resumed"))
    assert len(straight) == 4 and straight == resumed
