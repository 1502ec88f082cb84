"""The Ray-free training parts shared by pre-training and fine-tuning: weight EMA, early stopping,
the optimiser's per-group learning-rate scale, the TensorBoard writer and ``flatten``.

Weights are set by hand to dyadic values (and the EMA decay is 0.5 or 0.75) so that every expected
number is exact in binary floating point and compared with ``torch.equal``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from matforge.training import tensorboard as tb
from matforge.training.early_stopping import EarlyStopping
from matforge.training.ema import WeightEMA
from matforge.training.schedule import LRSchedule, build_optimizer


# -- helpers -----------------------------------------------------------------------------------------
def _linear(weight: list[float], bias: float) -> nn.Linear:
    layer = nn.Linear(len(weight), 1)
    _set_linear(layer, weight, bias)
    return layer


def _set_linear(layer: nn.Linear, weight: list[float], bias: float) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)


def _set_bn(bn: nn.BatchNorm1d, weight, bias, mean, var, count: int) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
        bn.num_batches_tracked.fill_(count)


# -- WeightEMA ------------------------------------------------------------------------------------------
STEPS = [([3.0, -1.0], 2.0), ([5.0, 1.0], -2.0), ([1.0, 0.5], 4.0), ([-3.0, 2.0], 0.0)]


def test_ema_updates_follow_the_recurrence_exactly():
    """θ_ema ← d·θ_ema + (1−d)·θ at every update, starting from the weights held at construction."""
    d = 0.75
    model = _linear([1.0, 2.0], 0.5)
    ema = WeightEMA(model, decay=d)
    for w, b in STEPS:
        _set_linear(model, w, b)
        before = {n: t.clone() for n, t in ema.module.state_dict().items()}
        ema.update()
        for name, value in ema.module.state_dict().items():
            expected = d * before[name] + (1 - d) * model.state_dict()[name]
            assert torch.equal(value, expected), name
    # the training model is never changed by update()
    assert torch.equal(model.weight.detach(), torch.tensor([[-3.0, 2.0]])) and model.bias.item() == 0.0


def test_ema_closed_form_from_the_construction_weights_for_every_update():
    d = 0.5
    model = _linear([1.0, 2.0], 0.5)
    ema = WeightEMA(model, decay=d)
    expected_w, expected_b = torch.tensor([1.0, 2.0]), torch.tensor(0.5)
    for w, b in STEPS:
        _set_linear(model, w, b)
        ema.update()
        expected_w = d * expected_w + (1 - d) * torch.tensor(w)
        expected_b = d * expected_b + (1 - d) * torch.tensor(b)
        assert torch.equal(ema.module.weight.detach(), expected_w.reshape(1, 2))
        assert torch.equal(ema.module.bias.detach(), expected_b.reshape(1))


def test_ema_averages_batchnorm_buffers_too():
    d = 0.5
    bn = nn.BatchNorm1d(2)
    _set_bn(bn, [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 0)
    ema = WeightEMA(bn, decay=d)
    _set_bn(bn, [2.0, 4.0], [1.0, -1.0], [4.0, -2.0], [2.0, 8.0], 1)
    ema.update()                                   # [1.5, 2.5], [0.5, -0.5], mean [2, -1], var [1.5, 4.5]
    _set_bn(bn, [6.0, 0.0], [3.0, 1.0], [0.0, 2.0], [4.0, 2.0], 2)
    ema.update()
    averaged = ema.module
    assert torch.equal(averaged.weight.detach(), torch.tensor([3.75, 1.25]))
    assert torch.equal(averaged.bias.detach(), torch.tensor([1.75, 0.25]))
    assert torch.equal(averaged.running_mean, torch.tensor([1.0, 0.5]))
    assert torch.equal(averaged.running_var, torch.tensor([2.75, 3.25]))
    # the buffers of the average are its own, not the source's
    assert averaged.running_mean.data_ptr() != bn.running_mean.data_ptr()


def test_ema_copies_integer_buffers():
    bn = nn.BatchNorm1d(2)
    ema = WeightEMA(bn, decay=0.5)
    for count in (1, 2, 3, 4):
        bn.num_batches_tracked.fill_(count)
        ema.update()
        assert int(ema.module.num_batches_tracked) == count


def test_ema_copy_into_loads_the_average_and_shares_nothing():
    model = _linear([1.0, 2.0], 0.5)
    ema = WeightEMA(model, decay=0.5)
    _set_linear(model, [3.0, -1.0], 2.0)
    ema.update()
    _set_linear(model, [5.0, 1.0], -2.0)
    ema.update()                                     # average: [3.5, 0.75], -0.375
    target = _linear([9.0, 9.0], 9.0)
    ema.copy_into(target)
    assert torch.equal(target.weight.detach(), torch.tensor([[3.5, 0.75]])) and target.bias.item() == -0.375
    with torch.no_grad():
        target.weight.fill_(-7.0)
    assert torch.equal(ema.module.weight.detach(), torch.tensor([[3.5, 0.75]]))
    assert torch.equal(model.weight.detach(), torch.tensor([[5.0, 1.0]]))   # source untouched


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_ema_decay_outside_the_open_unit_interval_raises(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(nn.Linear(2, 1), decay=decay)


# -- EarlyStopping --------------------------------------------------------------------------------------
def test_early_stopping_best_epoch_and_stop_after_exactly_patience_bad_epochs():
    stopper = EarlyStopping(patience=3)
    model = nn.Linear(1, 1)
    metrics = [5.0, 4.0, 4.5, 3.0, 3.0, 3.2, 3.1]
    improved, stops = [], []
    for epoch, value in enumerate(metrics):
        improved.append(stopper.observe(epoch, value, model))
        stops.append(stopper.should_stop)
    assert improved == [True, True, False, True, False, False, False]
    assert stops == [False, False, False, False, False, False, True]
    assert stopper.best == 3.0 and stopper.best_epoch == 3 and stopper.bad_epochs == 3


def test_early_stopping_min_delta_is_an_absolute_strict_margin():
    stopper = EarlyStopping(patience=5, min_delta=0.5)
    model = nn.Linear(1, 1)
    assert stopper.observe(0, 2.0, model)
    assert not stopper.observe(1, 1.75, model)       # better, but by less than 0.5
    assert not stopper.observe(2, 1.5, model)        # exactly 0.5 better: not more than min_delta
    assert stopper.observe(3, 1.25, model)           # 0.75 better than the best (2.0)
    assert stopper.best == 1.25 and stopper.best_epoch == 3 and stopper.bad_epochs == 0


def test_early_stopping_mode_max():
    stopper = EarlyStopping(patience=2, mode="max")
    model = nn.Linear(1, 1)
    results = [stopper.observe(e, v, model) for e, v in enumerate([0.5, 0.75, 0.625, 0.75])]
    assert results == [True, True, False, False]
    assert stopper.best == 0.75 and stopper.best_epoch == 1 and stopper.should_stop


@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopping_non_finite_never_improves(mode):
    stopper = EarlyStopping(patience=2, mode=mode)
    model = nn.Linear(1, 1)
    assert not stopper.observe(0, float("nan"), model)
    assert stopper.best_epoch == -1 and stopper.bad_epochs == 1
    assert stopper.observe(1, 1.0, model)
    bad = float("-inf") if mode == "min" else float("inf")
    assert not stopper.observe(2, float("nan"), model)
    assert not stopper.observe(3, bad, model)
    assert stopper.best == 1.0 and stopper.best_epoch == 1 and stopper.should_stop


def test_early_stopping_restore_loads_the_best_epochs_weights():
    stopper = EarlyStopping(patience=10)
    model = _linear([0.0], 0.0)
    for epoch, value in enumerate([3.0, 1.0, 2.0, 1.5]):
        _set_linear(model, [float(epoch + 1)], -float(epoch))   # changed in place between observes
        stopper.observe(epoch, value, model)
    assert stopper.best_epoch == 1
    assert model.weight.item() == 4.0
    stopper.restore(model)
    assert model.weight.item() == 2.0 and model.bias.item() == -1.0


def test_early_stopping_restore_without_improvement_leaves_the_weights():
    stopper = EarlyStopping(patience=10)
    model = _linear([1.5, -2.5], 0.25)
    stopper.observe(0, float("nan"), model)
    _set_linear(model, [7.0, 8.0], 9.0)
    stopper.restore(model)
    assert torch.equal(model.weight.detach(), torch.tensor([[7.0, 8.0]])) and model.bias.item() == 9.0


@pytest.mark.parametrize("kwargs", [dict(patience=0), dict(mode="avg"), dict(min_delta=-0.1),
                                    dict(min_delta=float("nan"))])
def test_early_stopping_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        EarlyStopping(**kwargs)


# -- optimiser groups and the schedule --------------------------------------------------------------------
def _groups():
    params = [nn.Parameter(torch.zeros(2)) for _ in range(4)]
    return params, [{"params": [params[0]], "lr_scale": 1.0, "name": "head"},
                    {"params": [params[1], params[2]], "lr_scale": 0.5, "name": "block.1"},
                    {"params": [params[3]], "lr_scale": 0.25, "name": "block.0"},
                    {"params": [], "lr_scale": 0.125, "name": "empty"}]


def test_build_optimizer_gives_each_group_base_lr_times_its_scale():
    params, groups = _groups()
    optimizer = build_optimizer(groups, lr=0.01, weight_decay=0.1)
    assert [g["name"] for g in optimizer.param_groups] == ["head", "block.1", "block.0"]   # empty group dropped
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.005, 0.0025], rel=1e-15)
    assert [g["lr_scale"] for g in optimizer.param_groups] == [1.0, 0.5, 0.25]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 2, 1]
    assert all(g["weight_decay"] == 0.1 for g in optimizer.param_groups)


def test_build_optimizer_group_without_scale_defaults_to_one():
    p = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [p]}], lr=0.02, weight_decay=0.0)
    assert optimizer.param_groups[0]["lr_scale"] == 1.0 and optimizer.param_groups[0]["lr"] == 0.02
    assert optimizer.param_groups[0]["params"] == [p]


def test_build_optimizer_accepts_a_generator_of_parameters_like_torch():
    head, body = nn.Linear(2, 1), nn.Linear(3, 2)
    optimizer = build_optimizer([{"params": head.parameters(), "lr_scale": 1.0},
                                 {"params": body.parameters(), "lr_scale": 0.5}], lr=0.01, weight_decay=0.0)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]


def test_schedule_keeps_the_group_scales_in_warmup_and_cosine():
    _, groups = _groups()
    optimizer = build_optimizer(groups, lr=0.01, weight_decay=0.0)
    schedule = LRSchedule(optimizer, peak_lr=0.01, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    scales = [1.0, 0.5, 0.25]
    checks = {
        5: 0.01 * 5 / 10,                                                       # warm-up
        10: 0.01,                                                               # peak
        60: 0.01 * (0.1 + 0.9 * 0.5),                                           # cos(π/2) = 0
        35: 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))),
        110: 0.001,                                                             # the floor
    }
    for step, base in checks.items():
        assert schedule.step_to(step) == pytest.approx(base, rel=1e-12)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([base * s for s in scales], rel=1e-12)


def test_build_optimizer_from_a_module_is_one_group_at_scale_one():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    optimizer = build_optimizer(model, lr=0.003, weight_decay=0.01)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.003 and group["lr_scale"] == 1.0
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    schedule = LRSchedule(optimizer, peak_lr=0.003, total_steps=20, warmup_steps=4)
    assert schedule.step_to(2) == pytest.approx(0.0015) and group["lr"] == schedule.lr_at(2)
    assert schedule.step_to(12) == group["lr"] == pytest.approx(0.003 * 0.5)


# -- TensorBoard ------------------------------------------------------------------------------------------
def test_open_writer_without_tensorboard(monkeypatch, tmp_path):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    assert tb.open_writer(tmp_path / "logs", required=False) is None
    assert not (tmp_path / "logs").exists()
    with pytest.raises(ModuleNotFoundError, match="tensorboard"):
        tb.open_writer(tmp_path / "logs")
    with pytest.raises(ModuleNotFoundError):
        tb.open_writer(tmp_path / "logs", required=True)


def test_open_writer_writes_an_event_file(tmp_path):
    assert tb.tensorboard_available()  # the dev install has it (matforge[pretrain])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "nested" / "logs"
    writer = tb.open_writer(log_dir, required=False)
    assert writer is not None
    writer.add_scalar("loss/train", 0.25, 3)
    writer.close()
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = acc.Scalars("loss/train")
    assert [(s.step, s.value) for s in scalars] == [(3, 0.25)]


def test_flatten_nested_config():
    config = {"a": {"b": 1, "c": {"d": "x"}}, "e": None, "f": [1, 2], "g": True, "h": 2.5, 3: "k"}
    out: dict = {}
    result = tb.flatten("", config, out)
    assert result is out
    assert out == {"a.b": 1, "a.c.d": "x", "e": "None", "f": "[1, 2]", "g": True, "h": 2.5, "3": "k"}
    assert tb.flatten("cfg", {"lr": 1e-3, "opt": {"betas": (0.9, 0.99)}}, {}) == {
        "cfg.lr": 1e-3, "cfg.opt.betas": "(0.9, 0.99)"}
