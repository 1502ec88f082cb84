"""What atoms, edges and atom pairs cost in one training step, measured at the start of a run.

The step balancer (:mod:`matforge.datasets.step_balance`) deals each step's structures so the ranks
get equal estimated work ``w_n·n + w_e·e + w_p·p`` (atoms, directed edges, distinct atom pairs).
The weights depend on the backbone, its width, the objective and the device, so they are measured
rather than guessed. Time of one training step (forward pass with the objective's derivatives,
loss, backward; no optimiser step) on a batch of n atoms, e edges and p pairs::

    t = t₀ + w_n·n + w_e·e + w_p·p          (seconds; every w >= 0)

Calibration batches are drawn from the training structures so that the three counts vary apart:
by estimated neighbours per atom (densest first, sparsest first: edges at equal atoms) and by size
(largest first, smallest first: small cells have many images per pair, so fewer pairs per edge),
each up to the atom budget and up to half of it (atoms), eight batches in all. Each is timed
``repeats`` times after one warm-up pass, and its fastest time counts (the least disturbed by other
load). All ranks time the same batches at the same time, sharing the machine as they do in
training; the fastest times are averaged over the ranks, so every rank solves the same
non-negative least-squares problem

    minimise ‖ [1  n  e  p] (t₀, w_n, w_e, w_p)ᵀ − t ‖²   subject to every coefficient >= 0

(scipy's NNLS) and deals its batches with the same weights. Where two counts move together in the
training data, the split of the time between them is arbitrary, and so harmless: the estimate of
those structures' costs is what the fit pins down. No weights come out when all three are zero
(the part of the time that grows with them is under 1 % of it) or there are fewer than 4 structures.

A run takes its weights from ``data.balance_weights`` when set, else from its checkpoint (so a
resumed run deals exactly the batches it dealt before), else measures them
(:func:`run_balance_weights`).

The model is left as it was: parameters, buffers (BatchNorm running statistics), gradients and
the torch random number generators are restored after the timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from matforge.training.weight_gradients import backward_to_weights, trainable_weights

if TYPE_CHECKING:
    from matforge.training.checkpoint import TrainState
    from matforge.pretrain.config import PretrainConfig

MIN_VARIABLE_SHARE = 0.01
"""Below this share of the mean time, the part that grows with atoms, edges and pairs is taken as
noise: the fit gives no weights."""


@dataclass(frozen=True)
class CostFit:
    """Result of a calibration: the weights (seconds per atom, edge, pair), and the timed batches."""

    weights: tuple[float, float, float] | None    # None when not measurable
    seconds_per_step: float                        # t₀
    atoms: tuple[int, ...]                         # per calibration batch
    edges: tuple[int, ...]
    pairs: tuple[int, ...]
    seconds: tuple[float, ...]                     # fastest time per batch (averaged over ranks)
    reason: str = ""                               # why weights is None

    def describe(self) -> str:
        if self.weights is None:
            return f"cost weights not measurable ({self.reason})"
        per_atom, per_edge, per_pair = (1e6 * w for w in self.weights)
        return (f"a step costs {1e3 * self.seconds_per_step:.2f} ms + {per_atom:.2f} µs per atom + {per_edge:.3f} µs "
                f"per edge + {per_pair:.3f} µs per atom pair (from {len(self.seconds)} timed batches)")


def count_pairs(edge_index: torch.Tensor, num_nodes: int) -> int:
    """Distinct ordered atom pairs (j, i) among the (2, E) edges: the images of a neighbour count once."""
    if edge_index.numel() == 0:
        return 0
    return int(torch.unique(edge_index[0].long() * int(num_nodes) + edge_index[1].long()).numel())


def calibration_groups(natoms: np.ndarray, neighbours: np.ndarray, max_atoms: int) -> list[list[int]]:
    """Indices of the eight calibration batches (module docstring): the densest, the sparsest, the
    largest and the smallest structures, each up to the full and up to half the atom budget.
    natoms, neighbours: (R,); max_atoms >= 1.

    A structure joins a batch in its order while the batch stays within its budget; each batch gets
    at least one structure. Empty list when there are fewer than 4 structures.
    """
    natoms = np.asarray(natoms, dtype=np.int64)
    neighbours = np.asarray(neighbours, dtype=np.float64)
    if natoms.shape != neighbours.shape:
        raise ValueError(f"natoms has shape {natoms.shape}, neighbours {neighbours.shape}")
    if natoms.shape[0] < 4:
        return []
    by_density = np.argsort(neighbours, kind="stable")
    by_size = np.argsort(natoms, kind="stable")
    orders = (by_density[::-1], by_density, by_size[::-1], by_size)
    groups = []
    for budget in (max_atoms, max(1, max_atoms // 2)):
        for ranked in orders:
            chosen, total = [], 0
            for i in ranked.tolist():
                if chosen and total + natoms[i] > budget:
                    continue
                chosen.append(i)
                total += int(natoms[i])
                if total >= budget:
                    break
            groups.append(sorted(chosen))
    return groups


def fit_cost_weights(atoms: Sequence[int], edges: Sequence[int], pairs: Sequence[int],
                     seconds: Sequence[float]) -> CostFit:
    """Non-negative least-squares fit of ``t = t₀ + w_n·n + w_e·e + w_p·p`` (module docstring)."""
    from scipy.optimize import nnls

    columns = [np.asarray(x, dtype=np.float64) for x in (atoms, edges, pairs)]
    t = np.asarray(seconds, dtype=np.float64)
    if not all(c.shape == t.shape for c in columns) or t.ndim != 1:
        raise ValueError("atoms, edges, pairs and seconds must be equal-length sequences, got lengths "
                         f"{[c.shape for c in columns]} and {t.shape}")
    record = {"atoms": tuple(int(x) for x in columns[0]), "edges": tuple(int(x) for x in columns[1]),
              "pairs": tuple(int(x) for x in columns[2]), "seconds": tuple(float(x) for x in t)}
    if t.shape[0] < 4 or not np.isfinite(t).all():
        return CostFit(None, float("nan"), reason="fewer than 4 timed batches", **record)
    design = np.stack([np.ones_like(t), *columns], axis=1)
    scale = np.abs(design).max(axis=0)          # NNLS on unit-scaled columns, then back
    scale[scale == 0] = 1.0
    solution, _ = nnls(design / scale, t)
    t0, *weights = (solution / scale).tolist()
    variable = design[:, 1:] @ np.asarray(weights)
    if not variable.mean() >= MIN_VARIABLE_SHARE * t.mean():
        return CostFit(None, t0, reason="the time does not grow with atoms, edges or pairs", **record)
    return CostFit((weights[0], weights[1], weights[2]), t0, **record)


def time_training_steps(model: torch.nn.Module, objective: Any, batches: Sequence[Any], device: torch.device,
                        repeats: int = 3) -> list[float]:
    """Fastest of ``repeats`` timed training steps (after one warm-up) per batch, seconds.

    A step is the objective's forward pass (with its forces/stress), its single-process loss and the
    backward pass; the model's parameters, buffers, gradients and the torch RNGs are restored after.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    options = objective.forward_options(training=True)
    saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    was_training = model.training
    model.train()
    fastest = [float("inf")] * len(batches)
    try:
        on_device = [b.to(device) for b in batches]
        for attempt in range(repeats + 1):
            for k, batch in enumerate(on_device):
                _sync(device)
                start = time.perf_counter()
                loss = objective.loss(model(batch, **options), batch)
                backward_to_weights(loss, trainable_weights(model))
                _sync(device)
                if attempt:             # the first pass warms caches and the allocator
                    fastest[k] = min(fastest[k], time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved_state)
        for p, g in zip(model.parameters(), saved_grads):
            p.grad = g
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        model.train(was_training)
    return fastest


def calibrate_cost_weights(model: torch.nn.Module, objective: Any, collate: Callable[[list[int]], Any],
                           natoms: np.ndarray, neighbours: np.ndarray, max_atoms: int, device: torch.device,
                           repeats: int = 3,
                           average_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CostFit:
    """Measure the cost weights for ``model`` and ``objective`` on the training structures.

    collate: indices -> batch (the training graphs, e.g. ``GraphDataset.collate``); natoms,
    neighbours: (R,) atoms and estimated neighbours per atom of the training structures; device:
    where the model is; average_over_ranks: (B,) float64 seconds -> the mean over ranks (identity
    when None), so that every rank fits the same numbers.
    """
    groups = calibration_groups(natoms, neighbours, max_atoms)
    if not groups:
        return fit_cost_weights([], [], [], [])
    batches = [collate(g) for g in groups]
    seconds = torch.tensor(time_training_steps(model, objective, batches, device, repeats), dtype=torch.float64)
    if average_over_ranks is not None:
        seconds = average_over_ranks(seconds.to(device)).cpu()
    return fit_cost_weights([int(b.num_nodes) for b in batches], [int(b.edge_index.shape[1]) for b in batches],
                            [count_pairs(b.edge_index, int(b.num_nodes)) for b in batches], seconds.tolist())


def run_balance_weights(cfg: "PretrainConfig", state: "TrainState", model: torch.nn.Module, objective: Any, records: Any,
                        graph_config: Any, transform: Any, device: torch.device, world: int, rank: int) -> list[float]:
    """Weights per atom, edge and pair of the step balance: the config's, else the run's (from its
    checkpoint), else, with ``data.calibrate_balance``, measured now by :func:`calibrate_cost_weights`
    on every rank at once (rank 0 prints them), else (or when they cannot be measured) atoms + edges."""
    from matforge.datasets.step_balance import DEFAULT_COST_WEIGHTS, neighbours_per_atom

    if cfg.data.balance_weights is not None:
        return [float(w) for w in cfg.data.balance_weights]
    if state.balance_weights is not None:
        return [float(w) for w in state.balance_weights]
    if not cfg.data.calibrate_balance:
        return list(DEFAULT_COST_WEIGHTS)
    neighbours = neighbours_per_atom(records.natoms, records.volume, model.backbone.cutoff)
    if neighbours is None:      # no cell volumes: the estimate is the atom count whatever the weights
        return list(DEFAULT_COST_WEIGHTS)
    from matforge.datasets.loader import GraphDataset
    from matforge.pretrain.distributed import all_reduce_sum

    graphs = GraphDataset(records, graph_config, **({"transform": transform} if transform is not None else {}))
    fit = calibrate_cost_weights(model, objective, graphs.collate, records.natoms, neighbours, cfg.data.max_atoms,
                                 device, repeats=2, average_over_ranks=lambda t: all_reduce_sum(t) / world)
    if rank == 0:
        print(f"[matforge] step balance: {fit.describe()}", flush=True)
    return list(fit.weights) if fit.weights is not None else list(DEFAULT_COST_WEIGHTS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
