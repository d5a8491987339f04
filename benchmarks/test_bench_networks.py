"""Baseline speed of the five published EDM teacher architectures: one training-style
forward+backward at batch 1, CPU, float32, random weights.

    pytest benchmarks/test_bench_networks.py --benchmark-enable   # timings
    pytest benchmarks/test_bench_networks.py                       # (benchmarks disabled) one pass each
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sidbench.teachers import build_edm_network

CONFIGS = json.loads(
    (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "edm-state-dicts.json").read_text()
)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_backward(benchmark, name: str) -> None:
    constructor = CONFIGS[name]["constructor"]
    torch.manual_seed(0)
    net = build_edm_network(constructor).train()  # train mode: dropout on, as in distillation
    res, ch, label_dim = net.img_resolution, net.img_channels, net.label_dim
    x = torch.randn(1, ch, res, res)
    sigma = torch.tensor([2.5])
    labels = torch.nn.functional.one_hot(torch.tensor([0]), label_dim).float() if label_dim else None

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x, sigma, labels).square().mean().backward()

    benchmark.extra_info.update(num_params=CONFIGS[name]["num_params"], batch=1, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert all(p.grad is not None for p in net.parameters())
