from __future__ import annotations

import pytest
import torch

from sidbench.labels import label_frequencies, label_sampler


def test_uniform_and_data_frequencies() -> None:
    torch.testing.assert_close(label_frequencies(4, "uniform", "cifar10-cond"), torch.full((4,), 0.25))
    freq = label_frequencies(10, "data", "digits-cond")
    assert abs(float(freq.sum()) - 1) < 1e-6 and 0.09 < float(freq.min()) and float(freq.max()) < 0.11
    with pytest.raises(ValueError, match="only the digits datasets"):
        label_frequencies(10, "data", "cifar10-cond")
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        label_frequencies(3, [1.0, -1.0, 1.0], "x")


def test_sampler_draws_one_hot_labels_at_the_given_frequencies() -> None:
    torch.manual_seed(0)
    draw = label_sampler(3, torch.tensor([0.5, 0.3, 0.2]), torch.device("cpu"))
    labels = draw(20000)
    assert labels.shape == (20000, 3) and torch.equal(labels.sum(1), torch.ones(20000))
    torch.testing.assert_close(labels.mean(0), torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    assert label_sampler(0, torch.zeros(0), torch.device("cpu"))(5) is None
