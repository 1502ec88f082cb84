"""The few collectives the trainer needs, as no-ops when ``torch.distributed`` is not initialised.

* :func:`all_reduce_sum`: one ``all_reduce`` of a flat float64 vector (metric sums, throughput
  counters): a single small message per call; :func:`start_all_reduce_sum` the same without
  waiting (the loss terms' counts, reduced while the forward pass runs).
* :func:`broadcast_json`: rank 0's JSON-able object to every rank (the fitted normalisers).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (a new tensor; input untouched)."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class PendingSum:
    """A sum over ranks in flight; :meth:`result` waits for it (at once when not distributed)."""

    def __init__(self, values: torch.Tensor, work: Any = None) -> None:
        self._values = values
        self._work = work

    def result(self) -> torch.Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._values


def start_all_reduce_sum(values: torch.Tensor) -> PendingSum:
    """Start summing ``values`` over ranks (a new tensor; input untouched) and return at once.

    Every rank must start the same collectives in the same order, as for any collective."""
    out = values.detach().clone()
    if is_distributed():
        return PendingSum(out, dist.all_reduce(out, op=dist.ReduceOp.SUM, async_op=True))
    return PendingSum(out)


def broadcast_json(obj: Any, device: torch.device) -> Any:
    """Send rank 0's JSON-able ``obj`` to all ranks (as UTF-8 bytes in a tensor, no pickle)."""
    if not is_distributed():
        return obj
    if rank() == 0:
        payload = torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8, device=device)
        size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    else:
        size = torch.zeros(1, dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    if rank() != 0:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return json.loads(bytes(payload.cpu().tolist()).decode("utf-8"))
