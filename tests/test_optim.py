"""Learning-rate schedules and the LAMB optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from btard_ray.config import OptimizerConfig
from btard_ray.optim import Lamb, build_optimizer, lr_factor


def test_cosine_schedule_endpoints_and_warmup():
    cfg = OptimizerConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.5)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(5, 110, OptimizerConfig(schedule="constant")) == 1.0


def test_sgd_is_nesterov_with_weight_decay():
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], OptimizerConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 0.01


def test_lamb_step_length_is_lr_times_weight_norm():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(100))
    w0 = p.detach().clone()
    opt = Lamb([p], lr=0.01)
    p.grad = torch.randn(100)
    opt.step()
    # With the trust ratio ‖w‖/‖u‖ the update has norm lr·‖w‖ exactly.
    assert float((p.detach() - w0).norm()) == pytest.approx(0.01 * float(w0.norm()), rel=1e-5)
    assert math.isfinite(float(p.detach().sum()))
