"""The optimiser and learning-rate schedule of pre-training: exact learning rates at known steps
(warm-up, cosine, plateau reductions and their resume), and the fused AdamW against the reference
implementation."""

from __future__ import annotations

import math

import pytest
import torch

from matforge.training.schedule import LRSchedule, build_optimizer


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


def test_warm_up_then_cosine_to_the_floor():
    schedule = LRSchedule(_optimizer(), peak_lr=1e-3, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert schedule.lr_at(1) == pytest.approx(1e-4) and schedule.lr_at(10) == pytest.approx(1e-3)
    assert schedule.lr_at(60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))          # half way: cos(π/2) = 0
    assert schedule.lr_at(110) == pytest.approx(1e-4) and schedule.lr_at(500) == pytest.approx(1e-4)
    assert schedule.step_to(35) == schedule.optimizer.param_groups[0]["lr"]
    assert schedule.lr_at(35) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.25))))


def test_plateau_reduces_after_patience_and_resumes_its_state():
    schedule = LRSchedule(_optimizer(), peak_lr=1.0, total_steps=100, kind="plateau", plateau_factor=0.5,
                          plateau_patience=2)
    for metric in (1.0, 0.5, 0.6, 0.6, 0.6):        # better, better, then 3 evaluations without: > patience
        schedule.observe(metric)
    assert schedule.reductions == 1 and schedule.lr_at(50) == 0.5
    schedule.observe(float("nan"))                   # ignored
    resumed = LRSchedule(_optimizer(), peak_lr=1.0, total_steps=100, kind="plateau", plateau_patience=2)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.state_dict() == {"best": 0.5, "bad_evals": 0, "reductions": 1} and resumed.lr_at(7) == 0.5


def test_fused_adamw_on_cpu_matches_the_reference_and_leaves_frozen_parameters_alone():
    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
        net[0].bias.requires_grad_(False)
        return net

    fused_model, reference_model = model(), model()
    fused = build_optimizer(fused_model, lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95))
    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95),
                                  foreach=False)
    assert fused.defaults["fused"] is True and len(fused.param_groups[0]["params"]) == 4
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for net, opt in ((fused_model, fused), (reference_model, reference)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), reference_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert torch.equal(fused_model[0].bias, model()[0].bias)                       # frozen: untouched
