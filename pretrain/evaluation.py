"""Validation during pre-training: each rank evaluates its own share of the validation structures
(each structure once across ranks, :func:`matforge.datasets.sampler.strided_share`) on the unwrapped
model, and one all-reduce of the sums and counts gives every rank the same numbers:

    val/<metric> = Σ_ranks Σ|error| / Σ_ranks count                 (the objective's metrics)
    val/loss     = Σ_k w_k · Σ_ranks sum_k / Σ_ranks count_k        (the training objective's weighted
                                                                    loss: what the plateau schedule watches)
"""

from __future__ import annotations

from typing import Any

import torch

from matforge.pretrain.distributed import all_reduce_sum


class Evaluator:
    """Validation on the unwrapped model: each rank its share, sums and counts all-reduced."""

    def __init__(self, loader: Any, objective: Any, device: torch.device) -> None:
        self.loader = loader
        self.objective = objective
        self.device = device

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``val/<metric>`` for each of the objective's metrics and ``val/loss``, the weighted loss
        Σ_k w_k · (Σ sum_k / Σ count_k) of the training objective on the validation set (what the
        plateau schedule watches); sums and counts are all-reduced once, so every rank gets the
        same numbers (each rank evaluates its own share of the structures, each structure once)."""
        if self.loader is None:
            return {}
        model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        needs_grad = self.objective.needs_forces or self.objective.needs_stress
        with torch.set_grad_enabled(needs_grad):
            for batch in self.loader:
                batch = batch.to(self.device)
                out = model(batch, forces=self.objective.needs_forces, stress=self.objective.needs_stress)
                for prefix, terms in (("", self.objective.metrics(out, batch)),
                                      ("loss:", self.objective.terms(out, batch))):
                    for name, term in terms.items():
                        sums[prefix + name] = sums.get(prefix + name, 0.0) + float(term.sum.detach())
                        counts[prefix + name] = counts.get(prefix + name, 0.0) + float(term.count)
        model.train()
        # every rank must contribute the same names, also a rank without validation batches
        names = union_over_ranks(set(sums) | {f"loss:{n}" for n in self.objective.weights()})
        vec = torch.tensor([sums.get(n, 0.0) for n in names] + [counts.get(n, 0.0) for n in names],
                           dtype=torch.float64, device=self.device)
        total = all_reduce_sum(vec).cpu().tolist()
        k = len(names)
        mean = {n: (total[i] / total[k + i] if total[k + i] > 0 else float("nan")) for i, n in enumerate(names)}
        out = {f"val/{n}": v for n, v in mean.items() if not n.startswith("loss:")}
        weights = self.objective.weights()
        parts = [w * mean[f"loss:{n}"] for n, w in weights.items() if mean[f"loss:{n}"] == mean[f"loss:{n}"]]
        out["val/loss"] = float(sum(parts)) if parts else float("nan")
        return out


def union_over_ranks(names: set[str]) -> list[str]:
    """The sorted union of every rank's ``names`` (one all_gather_object; local when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(names))
        names = set().union(*[set(g) for g in gathered])
    return sorted(names)
