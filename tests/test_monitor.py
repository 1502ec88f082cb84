"""The logging window: loss sums and counts kept on the device between logs, reduced with the
throughput counters in one collective; exact means, weighted total, resets and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from matforge.models.losses import Term
from matforge.pretrain.monitor import LossWindow, ThroughputMeter, reduce_window


def _term(total: float, count: float) -> Term:
    return Term(sum=torch.tensor(total, dtype=torch.float32, requires_grad=True), count=torch.tensor(count))


def _two_steps(window: LossWindow, meter: ThroughputMeter) -> None:
    window.add({"forces": _term(3.0, 12.0), "energy": _term(0.5, 2.0), "stress": _term(0.0, 0.0)})
    meter.add(atoms=20, structures=2, wait=0.25, compute=0.75)
    window.add({"energy": _term(1.5, 2.0), "forces": _term(9.0, 6.0), "stress": _term(0.0, 0.0)})
    meter.add(atoms=30, structures=3, wait=0.25, compute=0.75)


def _check(weights: dict[str, float]) -> None:
    window, meter = LossWindow(torch.device("cpu")), ThroughputMeter()
    _two_steps(window, meter)
    assert window.names == ["energy", "forces", "stress"]
    assert window.sums is not None and not window.sums.requires_grad
    logged = reduce_window(window, meter, weights, world_size=1)
    assert logged["loss/energy"] == pytest.approx(2.0 / 4.0)
    assert logged["loss/forces"] == pytest.approx(12.0 / 18.0)
    assert logged["loss/stress"] == 0.0                        # nothing counted: 0, not NaN
    assert logged["loss"] == pytest.approx(1.0 * 0.5 + 10.0 * 12.0 / 18.0)
    assert logged["time/data_wait_fraction"] == pytest.approx(0.25)
    assert logged["throughput/atoms_per_s"] > 0
    # both windows start again from zero
    assert window.local_vector().tolist() == [0.0] * 6
    assert meter.atoms == 0 and meter.wait == 0.0
    window.add({"energy": _term(2.0, 1.0), "forces": _term(1.0, 1.0), "stress": _term(0.3, 6.0)})
    meter.add(atoms=5, structures=1, wait=0.0, compute=1.0)
    again = reduce_window(window, meter, weights, world_size=1)
    assert again["loss/energy"] == pytest.approx(2.0) and again["loss/stress"] == pytest.approx(0.05)


def test_window_means_without_a_process_group():
    _check({"energy": 1.0, "forces": 10.0, "stress": 0.0})


def test_window_means_in_a_real_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _check({"energy": 1.0, "forces": 10.0, "stress": 0.0})
    finally:
        dist.destroy_process_group()


def test_throughput_is_the_rank_sum_over_the_mean_window():
    # two ranks' vectors summed: 300 atoms in windows of 2 s and 4 s -> 300 / 3 s
    figures = ThroughputMeter.figures([300.0, 30.0, 1.0, 5.0, 6.0, 0.0, 0.0], world_size=2)
    assert figures["throughput/atoms_per_s"] == pytest.approx(100.0)
    assert figures["throughput/structures_per_s"] == pytest.approx(10.0)
    assert figures["time/data_wait_fraction"] == pytest.approx(1.0 / 6.0)
    assert "time/sync_wait_fraction" not in figures     # no rank timed its waits


def test_sync_wait_is_logged_only_where_every_rank_times_it():
    # two ranks: 1 s of data wait, 5 s of compute of which 1.5 s at the synchronisation points
    both = ThroughputMeter.figures([300.0, 30.0, 1.0, 5.0, 6.0, 1.5, 2.0], world_size=2)
    assert both["time/sync_wait_fraction"] == pytest.approx(1.5 / 6.0)
    assert "time/sync_wait_fraction" not in ThroughputMeter.figures([300.0, 30.0, 1.0, 5.0, 6.0, 1.5, 1.0], 2)
    assert "time/sync_wait_fraction" not in ThroughputMeter.figures([300.0, 30.0, 1.0, 5.0, 6.0, 0.0, 1.0], 1)
    meter = ThroughputMeter(measures_sync=True)
    meter.add(atoms=10, structures=2, wait=0.25, compute=1.0, sync=0.125)
    meter.add(atoms=10, structures=2, wait=0.0, compute=1.0, sync=0.25)
    assert meter.local_vector()[5:] == [0.375, 1.0]


def test_an_empty_window_logs_throughput_only():
    window, meter = LossWindow(torch.device("cpu")), ThroughputMeter()
    meter.add(atoms=4, structures=1, wait=0.0, compute=0.1)
    logged = reduce_window(window, meter, {}, world_size=1)
    assert "loss" not in logged and logged["throughput/atoms_per_s"] > 0


def test_terms_may_not_change_within_a_run():
    window = LossWindow(torch.device("cpu"))
    window.add({"energy": _term(1.0, 1.0)})
    with pytest.raises(RuntimeError, match="changed within a run"):
        window.add({"energy": _term(1.0, 1.0), "forces": _term(1.0, 3.0)})
