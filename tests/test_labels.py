from __future__ import annotations

import pytest
import torch

from sidbench.labels import label_frequencies, label_sampler


def test_uniform_and_data_frequencies() -> None:
    from sidbench.config import group_config

    cifar, digits = group_config("dataset", "cifar10-cond"), group_config("dataset", "digits-cond")
    torch.testing.assert_close(label_frequencies(4, "uniform", cifar), torch.full((4,), 0.25))
    freq = label_frequencies(10, "data", digits)
    # the class counts of the 1797 scikit-learn digits, 174 to 183 of each
    assert abs(float(freq.sum()) - 1) < 1e-6 and 174 / 1797 - 1e-6 < float(freq.min()) and float(freq.max()) < 183 / 1797 + 1e-6
    # `data` follows the card's images, not its name: a card of another name on the bundled digits counts them
    torch.testing.assert_close(label_frequencies(10, "data", {"name": "mine", "images": {"builtin": "digits"}}), freq)
    with pytest.raises(ValueError, match="images.builtin"):
        label_frequencies(10, "data", cifar)
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        label_frequencies(3, [1.0, -1.0, 1.0], {})


def test_sampler_draws_one_hot_labels_at_the_given_frequencies() -> None:
    torch.manual_seed(0)
    draw = label_sampler(3, torch.tensor([0.5, 0.3, 0.2]), torch.device("cpu"))
    labels = draw(20000)
    assert labels.shape == (20000, 3) and torch.equal(labels.sum(1), torch.ones(20000))
    torch.testing.assert_close(labels.mean(0), torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    assert label_sampler(0, torch.zeros(0), torch.device("cpu"))(5) is None
