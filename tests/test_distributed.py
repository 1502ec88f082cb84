"""The trainer's collectives without and within a (one-rank, gloo) process group: values summed into a
new tensor, the started all-reduce's result, rank 0's JSON object."""

from __future__ import annotations

import torch
import torch.distributed as dist

from matforge.pretrain.distributed import all_reduce_sum, broadcast_json, is_distributed, start_all_reduce_sum


def _check_collectives() -> None:
    values = torch.tensor([1.0, 2.5, 0.0], dtype=torch.float64)
    summed = all_reduce_sum(values)
    pending = start_all_reduce_sum(values)
    values.add_(100.0)                      # the input is copied when the reduction starts
    assert summed.tolist() == [1.0, 2.5, 0.0]
    assert pending.result().tolist() == [1.0, 2.5, 0.0]
    assert pending.result().tolist() == [1.0, 2.5, 0.0]     # waiting twice is harmless
    fitted = {"element_refs": {"29": -3.5}, "energy_scale": 0.25, "note": "Å"}
    assert broadcast_json(fitted, torch.device("cpu")) == fitted


def test_collectives_without_a_process_group():
    assert not is_distributed()
    _check_collectives()


def test_collectives_in_a_real_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert is_distributed()
        _check_collectives()
    finally:
        dist.destroy_process_group()
