"""`generated_batches`: the uint8 stream a generator is scored on (docs/edm.md#uint8-conversion)."""
from __future__ import annotations

import torch

from sidbench.eval.images import generated_batches, to_uint8


def _recording(scale: float = 3.0):
    seen = []

    def sample_fn(z, labels):
        seen.append(labels)
        return scale * z  # far outside [-1, 1]: must clip

    return sample_fn, seen


def test_dtype_range_shape_and_count():
    sample_fn, _ = _recording()
    batches = list(generated_batches(sample_fn, num_samples=23, batch_size=5, shape=(3, 6, 4)))
    assert [b.shape[0] for b in batches] == [5, 5, 5, 5, 3]
    for b in batches:
        assert b.dtype == torch.uint8 and b.shape[1:] == (3, 6, 4) and b.device.type == "cpu"
    allpix = torch.cat(batches)
    assert allpix.min() == 0 and allpix.max() == 255  # clipped at both ends


def test_uint8_conversion_follows_edm():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 5.0])
    # clip(x * 127.5 + 128, 0, 255) truncated: -1 -> 0.5 -> 0, 0 -> 128, 1 -> 255.5 -> 255.
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 255, 255, 255]


def test_same_seed_same_images_and_labels():
    a = torch.cat(list(generated_batches(lambda z, c: z, 12, 5, (1, 3, 3), label_dim=4, seed=7, label_mode="uniform")))
    b = torch.cat(list(generated_batches(lambda z, c: z, 12, 5, (1, 3, 3), label_dim=4, seed=7, label_mode="uniform")))
    c = torch.cat(list(generated_batches(lambda z, c: z, 12, 5, (1, 3, 3), label_dim=4, seed=8, label_mode="uniform")))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cyclic_labels_give_equal_counts():
    sample_fn, seen = _recording()
    list(generated_batches(sample_fn, num_samples=70, batch_size=9, shape=(1, 2, 2), label_dim=7))
    labels = torch.cat(seen)
    assert labels.shape == (70, 7) and torch.equal(labels.sum(1), torch.ones(70))
    assert labels.sum(0).tolist() == [10.0] * 7
    assert torch.equal(labels.argmax(1), torch.arange(70) % 7)


def test_uniform_labels_are_roughly_equal():
    sample_fn, seen = _recording()
    n, k = 6000, 10
    stream = generated_batches(sample_fn, n, batch_size=512, shape=(1, 1, 1), label_dim=k, label_mode="uniform")
    list(stream)
    counts = torch.cat(seen).sum(0)
    assert counts.sum() == n
    expected = n / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30  # 9 degrees of freedom: P(chi2 > 30) is about 4e-4
    assert (counts - expected).abs().max() < 0.15 * expected


def test_unconditional_gets_no_labels():
    sample_fn, seen = _recording()
    list(generated_batches(sample_fn, num_samples=4, batch_size=4, shape=(1, 2, 2), label_dim=0))
    assert seen == [None]
