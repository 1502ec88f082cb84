"""The time a rank waits for the others: two DDP ranks (two forked processes in a gloo group), one
of them late by a known delay. The early rank's measured wait covers the delay, the late rank's does
not, backward work that overlaps the all-reduce is not counted as waiting, and the timed hook
averages gradients exactly as DDP's own all-reduce."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from matforge.pretrain.distributed import PendingSum
from matforge.pretrain.sync_timing import SyncTimer, attach_sync_timer

DELAY_S = 0.3


def _inputs() -> list[torch.Tensor]:
    return [torch.randn(5, 3, generator=torch.Generator().manual_seed(r)) for r in range(2)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


class _SlowTail(torch.autograd.Function):
    """Identity whose backward sleeps: on the input's path, it runs after every parameter gradient
    (the engine runs gradient accumulation first), like the position derivatives of force training."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        time.sleep(ctx.seconds)
        return grad, None


def _rank(rank: int, tmp: str, tail_s: float = 0.0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    model = _model()
    ddp = DistributedDataParallel(model)
    assert not attach_sync_timer(ddp, torch.device("cpu"), enabled=False).measures  # opt-in: DDP's own hook stays
    timer = attach_sync_timer(ddp, torch.device("cpu"))
    x = _inputs()[rank].requires_grad_(True)
    loss = ddp(_SlowTail.apply(x, tail_s) if tail_s else x).pow(2).sum()
    if rank == 1:
        time.sleep(DELAY_S)        # the straggler: rank 0 reaches the all-reduce DELAY_S earlier
    started = time.perf_counter()
    loss.backward()
    if tail_s:
        assert time.perf_counter() - started >= tail_s
    result = {"measures": timer.measures, "wait": timer.take_step(), "after_reset": timer.take_step(),
              "grads": [p.grad.tolist() for p in model.parameters()]}
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _two_ranks(tmp_path: Path, tail_s: float = 0.0) -> list[dict]:
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_rank, args=(r, str(tmp_path), tail_s)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_early_rank_waits_for_the_late_one_and_gradients_are_averaged(tmp_path):
    out = _two_ranks(tmp_path)
    measures, early_wait, after_reset = out[0]["measures"], out[0]["wait"], out[0]["after_reset"]
    late_wait = out[1]["wait"]
    grads0 = [torch.tensor(g) for g in out[0]["grads"]]
    grads1 = [torch.tensor(g) for g in out[1]["grads"]]
    assert measures
    assert early_wait >= 0.8 * DELAY_S and late_wait < 0.5 * DELAY_S
    assert after_reset == 0.0                     # take_step() starts the next step from zero

    model = _model()                              # the same model without DDP: mean of the ranks' gradients
    for x in _inputs():
        (model(x).pow(2).sum() / 2).backward()
    for g0, g1, p in zip(grads0, grads1, model.parameters()):
        assert torch.allclose(g0, p.grad, atol=1e-6) and torch.equal(g0, g1)


def test_backward_work_after_the_last_parameter_gradient_is_not_waiting(tmp_path):
    # each rank's backward goes on for 2 x DELAY_S after its parameter gradients, so the late rank's
    # all-reduce contribution arrives while the early rank is still computing: nobody waits
    out = _two_ranks(tmp_path, tail_s=2 * DELAY_S)
    assert out[0]["wait"] < 0.5 * DELAY_S and out[1]["wait"] < 0.5 * DELAY_S


class _SlowSum(PendingSum):
    def result(self) -> torch.Tensor:
        time.sleep(0.05)
        return super().result()


def test_count_wait_is_timed_and_a_bare_model_measures_nothing():
    timer = SyncTimer()
    assert timer.wait_counts(_SlowSum(torch.tensor([3.0]))).tolist() == [3.0]
    assert timer.take_step() >= 0.04
    bare = attach_sync_timer(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert not bare.measures
    assert bare.wait_counts(_SlowSum(torch.tensor([1.0]))).tolist() == [1.0]
    assert bare.take_step() == 0.0


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_no_hook_off_the_cpu(device):
    # attach_sync_timer decides by device type before touching the model: nothing is registered
    assert not attach_sync_timer(torch.nn.Linear(2, 2), torch.device(device)).measures
