"""The two training-step measurements of ``matforge bench train`` (:mod:`matforge.cli.bench_train`).

Each runs over batches built once before timing, so the data loader is not measured:

1. **CGCNN-exact against the original CGCNN.** matforge's ``cgcnn`` backbone with its ``cgcnn``
   head at the released hyper-parameters (atom_fea_len 64, n_conv 3, h_fea_len 128, n_h 1, 12
   nearest neighbours within 8 Å, Gaussian step 0.2 Å) and the original's training recipe
   (batches of ``--batch-size`` = 256 structures, MSE on the normalised target, SGD lr 0.01
   momentum 0.9), against the original code's model and batch layout re-implemented in
   :mod:`matforge.cli.bench_original_cgcnn`, on the very same structures. A step is
   ``forward + loss + zero_grad + backward + optimizer.step``; matforge's step includes forming
   edge vectors from positions, cell and shifts and the Gaussian expansion (it featurises in the
   model, so gradients can reach geometry); the original's Gaussians are precomputed by its
   loader, as in its code. Reported: structures/s and atoms/s of each, and their ratio.
2. **EFS step over energy step, per backbone** (``cgcnn_smooth``, ``painn``, ``cgcnn_attention``,
   ``cgcnn``, each at its registry defaults, except ``cgcnn`` at the hyper-parameters above): the
   pre-training step of ``matforge pretrain`` (objective ``energy`` vs ``efs``: forces and stress by
   autograd with ``create_graph``, loss, backward, grad-norm clipping, AdamW) on the same batches
   (atom budget ``--max-atoms``). Labels the dataset lacks (perov5 has no energies, forces or
   stress) are filled with fixed random values: the cost of a step does not depend on them.
   ``cgcnn`` and ``cgcnn_attention`` are not EFS backbones (BatchNorm couples the structures of a
   batch; nearest-k featurisation is discontinuous); their ratio is reported but marked.

Timing: after ``--warmup`` steps each, the contenders run ``--repeats`` rounds of ``--steps``
steps, alternating (so a load change on a shared machine hits both); each keeps its best round.
``--threads`` sets ``torch.set_num_threads`` (default: all cores).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

CGCNN_RELEASED = {"atom_fea_len": 64, "n_conv": 3, "cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2,
                  "gaussian_dmin": 0.0}
CGCNN_HEAD = {"h_fea_len": 128, "n_h": 1}


def _index_groups(count: int, size: int, batches: int, seed: int = 0) -> list[list[int]]:
    """Up to ``batches`` disjoint groups of ``size`` shuffled record indices (fewer if data is short)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(count)
    full = max(1, count // size)
    return [order[k * size:(k + 1) * size].tolist() for k in range(min(batches, full))]


# --- timing -----------------------------------------------------------------------------------------

class Contender:
    """A step function and the batches it cycles through; ``structures``/``atoms`` per batch."""

    def __init__(self, name: str, step: Callable[[Any], Any], batches: Sequence[Any],
                 structures: Sequence[int], atoms: Sequence[int]) -> None:
        self.name, self.step, self.batches = name, step, list(batches)
        self.structures, self.atoms = list(structures), list(atoms)
        self.next = 0
        self.rounds: list[dict[str, float]] = []

    def run(self, steps: int) -> dict[str, float]:
        structures = atoms = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            k = self.next % len(self.batches)
            self.step(self.batches[k])
            structures += self.structures[k]
            atoms += self.atoms[k]
            self.next += 1
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "steps": steps, "structures": structures, "atoms": atoms}

    def best(self) -> dict[str, float]:
        r = min(self.rounds, key=lambda r: r["seconds"] / r["steps"])
        s = max(r["seconds"], 1e-12)
        return {"step_ms": 1e3 * s / r["steps"], "structures_per_s": r["structures"] / s, "atoms_per_s": r["atoms"] / s,
                "rounds_step_ms": [1e3 * x["seconds"] / x["steps"] for x in self.rounds]}


def race(contenders: Sequence[Contender], steps: int, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Warm up each, then ``repeats`` alternating rounds of ``steps``; the best round of each."""
    for c in contenders:
        c.run(warmup)
    for _ in range(max(1, repeats)):
        for c in contenders:
            c.rounds.append(c.run(max(1, steps)))
    return {c.name: c.best() for c in contenders}


# --- 1. CGCNN against the original -----------------------------------------------------------------

def bench_cgcnn(ds, target: str | None, batch_size: int, batches: int, steps: int, repeats: int,
                warmup: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from matforge.cli.bench_original_cgcnn import (ORIGINAL_LR, ORIGINAL_MOMENTUM, OriginalCGCNN, OriginalTrainer,
                                                   load_matforge_weights, original_batch)
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.models.cgcnn import CGCNN, CGCNNHead
    from matforge.models.model import AtomisticModel

    hp = CGCNN_RELEASED
    graphs = GraphDataset(ds, GraphConfig(cutoff=hp["cutoff"], max_neighbors=hp["max_neighbors"],
                                          properties=(target,) if target else ()))
    groups = _index_groups(len(ds), min(batch_size, len(ds)), batches)
    mf_batches = [graphs.collate(g) for g in groups]
    targets = [b.y[:, 0].clone() if target else torch.zeros(b.num_graphs) for b in mf_batches]
    every = torch.cat(targets)
    mean, std = float(every.mean()), float(every.std()) if every.numel() > 1 else 1.0
    std = std if std > 0 else 1.0

    torch.manual_seed(0)
    backbone = CGCNN(**hp)
    model = AtomisticModel(backbone, {"target": CGCNNHead(backbone.embedding_dim, **CGCNN_HEAD, mean=mean, std=std)})
    original = OriginalCGCNN(nbr_fea_len=backbone.expansion.num_features, atom_fea_len=hp["atom_fea_len"],
                             n_conv=hp["n_conv"], **CGCNN_HEAD)
    load_matforge_weights(original, model, "target")  # same starting point
    orig_batches = [original_batch(b, t, radius=hp["cutoff"], max_num_nbr=hp["max_neighbors"],
                                   dmin=hp["gaussian_dmin"], step=hp["gaussian_step"]) for b, t in zip(mf_batches, targets)]
    optimizer = torch.optim.SGD(model.parameters(), ORIGINAL_LR, momentum=ORIGINAL_MOMENTUM)
    model.train()

    def matforge_step(batch_and_target) -> None:
        batch, t = batch_and_target
        out = model(batch)
        loss = F.mse_loss(out["properties_normalized"], ((t - mean) / std).unsqueeze(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trainer = OriginalTrainer(original, mean, std)
    sizes = [b.num_graphs for b in mf_batches]
    atoms = [int(b.num_nodes) for b in mf_batches]
    results = race([Contender("original", trainer.step, orig_batches, sizes, atoms),
                    Contender("matforge", matforge_step, list(zip(mf_batches, targets)), sizes, atoms)],
                   steps, repeats, warmup)
    edges = sum(int(b.edge_index.shape[1]) for b in mf_batches) / max(1, sum(atoms))
    return {"target": target, "batch_size": sizes[0], "batches": len(mf_batches), "edges_per_atom": edges,
            "hyperparameters": {**hp, **CGCNN_HEAD}, "optimizer": f"SGD lr {ORIGINAL_LR} momentum {ORIGINAL_MOMENTUM}",
            "original": results["original"], "matforge": results["matforge"],
            "speedup": results["matforge"]["structures_per_s"] / results["original"]["structures_per_s"]}


# --- 2. EFS over energy ----------------------------------------------------------------------------

def _fill_missing_labels(batch, seed: int) -> bool:
    """Give a batch energy/forces/stress labels where it has none (in place); True if it filled any."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    filled = False
    if not bool(batch.has_energy.all()):
        batch.energy.copy_(torch.randn(batch.energy.shape, generator=gen) * batch.natoms)
        batch.has_energy.fill_(True)
        filled = True
    if not bool(batch.has_forces.all()):
        batch.forces.copy_(torch.randn(batch.forces.shape, generator=gen) * 0.1)
        batch.has_forces.fill_(True)
        filled = True
    if not bool(batch.has_stress.all()):
        stress = torch.randn(batch.stress.shape, generator=gen) * 0.01
        batch.stress.copy_(0.5 * (stress + stress.transpose(-1, -2)))
        batch.has_stress.fill_(True)
        filled = True
    return filled


def bench_efs_ratio(ds, name: str, max_atoms: int, batches: int, steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create

    torch.manual_seed(0)
    backbone = create(name, **(CGCNN_RELEASED if name == "cgcnn" else {}))
    graphs = GraphDataset(ds, GraphConfig(cutoff=backbone.cutoff, max_neighbors=backbone.max_neighbors))
    groups = list(AtomBudgetBatchSampler(graphs.natoms, max_atoms, shuffle=True, seed=0))[:max(1, batches)]
    built = [graphs.collate(g) for g in groups]
    placeholder = False
    for k, b in enumerate(built):
        placeholder |= _fill_missing_labels(b, seed=k)
    energy, efs = build_objective("energy"), build_objective("efs")
    model = AtomisticModel(backbone, efs.build_heads(backbone))  # the same EnergyHead for both objectives
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step_of(objective) -> Callable[[Any], None]:
        options = objective.forward_options(training=True)

        def step(batch) -> None:
            out = model(batch, **options)
            loss = objective.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        return step

    sizes = [b.num_graphs for b in built]
    atoms = [int(b.num_nodes) for b in built]
    results = race([Contender("energy", step_of(energy), built, sizes, atoms),
                    Contender("efs", step_of(efs), built, sizes, atoms)], steps, repeats, warmup)
    return {"smooth": bool(backbone.smooth), "efs_backbone": bool(backbone.smooth), "hyperparameters": backbone.hparams,
            "parameters": sum(p.numel() for p in model.parameters()), "batches": len(built),
            "atoms_per_batch": sum(atoms) / len(atoms), "edges_per_atom": sum(int(b.edge_index.shape[1]) for b in built) / sum(atoms),
            "placeholder_labels": placeholder, "energy": results["energy"], "efs": results["efs"],
            "ratio": results["efs"]["step_ms"] / results["energy"]["step_ms"]}
