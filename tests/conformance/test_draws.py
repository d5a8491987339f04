"""The record-and-replay harness behind every conformance test pins what it claims."""
from __future__ import annotations

import pytest
import torch
from draws import Recorder, Replay, step_gradients


def program() -> torch.Tensor:
    z = torch.randn(2, 3)
    u = torch.rand(2, 1)
    i = torch.randint(0, 10, (2,))
    return z * u + i[:, None]


def test_replay_reproduces_a_recorded_program_whatever_the_global_state() -> None:
    torch.manual_seed(1)
    with Recorder() as rec:
        expected = program()
    torch.manual_seed(2)  # a different stream: only the replay can make the result equal
    with Replay(rec.nonempty()) as replay:
        got = program()
    replay.assert_exhausted()
    assert torch.equal(got, expected)
    torch.manual_seed(2)
    assert not torch.equal(program(), expected)


def test_replay_refuses_other_shapes_extra_draws_and_reports_unused_ones() -> None:
    draws = {"randn": [torch.zeros(2, 3)]}
    with Replay(draws), pytest.raises(AssertionError, match=r"shape \(4, 3\) asked, \(2, 3\) recorded"):
        torch.randn(4, 3)
    with Replay(draws), pytest.raises(AssertionError, match="more often than recorded"):
        torch.randn(2, 3)
        torch.randn(2, 3)
    with Replay({"randn": [torch.zeros(1), torch.ones(1)]}) as replay:
        torch.randn(1)
    with pytest.raises(AssertionError, match="not used"):
        replay.assert_exhausted()


def test_replay_leaves_seeded_generators_alone() -> None:
    g = torch.Generator().manual_seed(0)
    with Replay({}):
        a = torch.randn(3, generator=g)
    assert torch.equal(a, torch.randn(3, generator=torch.Generator().manual_seed(0)))


def test_step_gradients_sees_the_gradient_after_clipping() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    seen = step_gradients(opt, {w: "w"})
    (w * w).sum().backward()  # gradient (6, 8), norm 10
    torch.nn.utils.clip_grad_norm_([w], 1.0)
    opt.step()
    torch.testing.assert_close(seen["w"], torch.tensor([0.6, 0.8]))
