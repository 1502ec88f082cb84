"""Every objective with every backbone that supports it, on a real 2-rank gloo process group (two
processes started by torch.multiprocessing, no Ray): two training steps under DistributedDataParallel,
each rank on its own (unequal) half of a batch, must give every parameter the gradient that a single
process computes on the whole batch, and the same weights after the steps. Validation split over
the two ranks must equal one process's over every structure.

Each rank also holds the single-process reference (a copy of the model before wrapping), so the
comparison happens inside the ranks and only a failure message travels back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import traceback
from pathlib import Path

import numpy as np
import torch

CUTOFF = 4.0
SMOOTH = ("painn", "cgcnn_smooth")
CASES = ([(name, arch) for name in ("energy", "energy_forces", "efs", "denoise_derivative") for arch in SMOOTH]
         + [(name, arch) for name in ("energy", "denoise_head", "combined")
            for arch in ("painn", "cgcnn_smooth", "cgcnn", "cgcnn_attention")])
HYPER = {"painn": {"hidden": 8, "num_interactions": 2, "cutoff": CUTOFF},
         "cgcnn_smooth": {"hidden": 8, "num_interactions": 2, "cutoff": CUTOFF},
         "cgcnn": {"atom_fea_len": 8, "n_conv": 2, "cutoff": CUTOFF, "max_neighbors": 6},
         "cgcnn_attention": {"atom_fea_len": 8, "n_conv": 2, "cutoff": CUTOFF, "max_neighbors": 6}}


def _records():
    from matforge.datasets.synth import synth_records

    out = []
    for k, r in enumerate(synth_records(7, seed=0, max_atoms=8)):
        props = {"volume_per_atom": r.volume / r.natoms}
        if k != 2:
            props["mean_z"] = float(np.mean(r.numbers))
        out.append(dataclasses.replace(r, properties=props))
    return out


def _batch(objective, records, offset: int):
    from torch_geometric.data import Batch

    from matforge.datasets.graphs import GraphBuilder

    builder = GraphBuilder(cutoff=CUTOFF, dtype="float64", properties=tuple(objective.properties))
    transform = objective.record_transform()
    data = []
    for i, r in enumerate(records):
        extras = None
        if transform is not None:
            r, extras = transform(r, offset + i, 0)
        d = builder(r, offset + i)
        for name, value in (extras or {}).items():
            setattr(d, name, torch.from_numpy(np.asarray(value)))
        data.append(d)
    return Batch.from_data_list(data)


def _check_case(name: str, arch: str, rank: int, world: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from matforge.models.losses import combine, global_counts
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.pretrain.worker import _ddp_options, freeze_inert_parameters

    records = _records()
    objective = build_objective(name, equilibrium_only=False, properties=["volume_per_atom", "mean_z"])
    torch.manual_seed(0)
    backbone = create(arch, **HYPER[arch])
    model = AtomisticModel(backbone, objective.build_heads(backbone), elements=[]).double()
    objective.fit(records, model)
    freeze_inert_parameters(model, objective)
    reference = copy.deepcopy(model)
    ddp = DistributedDataParallel(model, **_ddp_options(model))
    cut = 3                                     # unequal halves: 3 and 4 structures
    mine = records[:cut] if rank == 0 else records[cut:]
    local = _batch(objective, mine, 0 if rank == 0 else cut)
    whole = _batch(objective, records, 0)
    options = objective.forward_options()
    opt_ddp = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    opt_ref = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.05)
    # BatchNorm (cgcnn) normalises over each rank's own batch: not the whole batch's statistics
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for step in range(2):
        opt_ref.zero_grad()
        objective.loss(reference(whole, **options), whole).backward()
        opt_ddp.zero_grad()
        terms = objective.terms(ddp(local, **options), local)
        counts = global_counts(terms)
        combine(terms, objective.weights(), counts, world).backward()
        for (pname, p), q in zip(model.named_parameters(), reference.parameters()):
            if not p.requires_grad:
                continue
            assert p.grad is not None, f"step {step}: {pname} got no gradient"
            if not batch_norm:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-10,
                                           msg=lambda m: f"step {step}: {pname}: {m}")
        opt_ddp.step()
        opt_ref.step()
    # every rank holds the same weights after the steps (DDP's whole point)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)


def _check_validation(rank: int, world: int) -> None:
    """Validation on two ranks, each its strided share, equals one process over every structure
    (each counted once: 7 records, shares of 4 and 3, no padded duplicate)."""
    from matforge.datasets.sampler import strided_share
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.pretrain.evaluation import Evaluator

    records = _records()
    objective = build_objective("efs")
    torch.manual_seed(0)
    backbone = create("painn", **HYPER["painn"])
    model = AtomisticModel(backbone, objective.build_heads(backbone)).double()
    objective.fit(records, model)
    share = strided_share(len(records), world, rank)
    mine = [_batch(objective, [records[i]], int(i)) for i in share]
    distributed = Evaluator(mine, objective, torch.device("cpu"))(model)
    whole = _batch(objective, records, 0)
    out = model(whole, forces=True, stress=True)
    expected = {f"val/{k}": float(t.mean()) for k, t in objective.metrics(out, whole).items()}
    expected["val/loss"] = float(objective.loss(out, whole).detach())
    assert set(distributed) == set(expected)
    for key, value in expected.items():
        assert abs(distributed[key] - value) <= 1e-9 * max(1.0, abs(value)), (key, distributed[key], value)


def _rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    failures = {}
    try:
        for name, arch in CASES:
            try:
                _check_case(name, arch, rank, world)
            except Exception:  # report every case, then fail in the test
                failures[f"{name}/{arch}"] = traceback.format_exc()[-1500:]
                dist.barrier()
        try:
            _check_validation(rank, world)
        except Exception:
            failures["validation"] = traceback.format_exc()[-1500:]
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(failures))
        dist.destroy_process_group()


def test_every_objective_trains_identically_on_two_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        failures = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert not failures, "\n\n".join(f"{case}:\n{tb}" for case, tb in failures.items())
