"""PaiNN's direction message summed per atom pair or per edge: which training step is faster, by edges per pair.

    python benchmarks/painn_direction_crossover.py SHARDS[@CUTOFF] [...] [--hyperparameter KEY=VALUE ...]
        [--max-atoms 3200] [--rounds 3] [--docs docs/benchmarks.md]

For each shard directory (with its own cutoff in Å after ``@``, which sets the edges per pair), one batch of ``--max-atoms`` atoms and one PaiNN model: energy steps and
force-and-stress (EFS) steps with the direction term forced per pair
(``PAIR_DIRECTION_MIN_EDGES = 1``) and forced per edge (``= ∞``), in alternating rounds in one process
(one warm-up round first), best round of each kept. Prints edges per pair of the batch, ms per step of
each, which is faster, and the default the backbone would choose
(:data:`matforge.models.painn.PAIR_DIRECTION_MIN_EDGES`).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any


def measure(directory: str, hyperparameters: dict[str, Any], max_atoms: int, rounds: int) -> dict[str, Any]:
    import torch

    import matforge.models.painn as painn_module
    from matforge.cli.bench_train import backbone_arguments, fill_missing_labels, open_shards
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights

    torch.manual_seed(0)
    backbone = create("painn", **backbone_arguments("painn", hyperparameters))
    graphs = GraphDataset(open_shards(directory), GraphConfig(cutoff=backbone.cutoff))
    batch = graphs.collate(next(iter(AtomBudgetBatchSampler(graphs.natoms, max_atoms, shuffle=True, seed=0))))
    fill_missing_labels(batch, seed=0)
    pairs, _ = painn_module.atom_pairs(batch.edge_index, int(batch.num_nodes))
    objectives = {"energy": build_objective("energy"), "efs": build_objective("efs")}
    model = AtomisticModel(backbone, objectives["efs"].build_heads(backbone))
    weights = trainable_weights(model)

    def step(objective) -> float:
        start = time.perf_counter()
        loss = objective.loss(model(batch, **objective.forward_options(training=True)), batch)
        backward_to_weights(loss, weights)
        for w in weights:
            w.grad = None
        return time.perf_counter() - start

    modes = {"per pair": 1.0, "per edge": math.inf}
    best: dict[tuple[str, str], float] = {}
    default = painn_module.PAIR_DIRECTION_MIN_EDGES
    try:
        for round_ in range(rounds + 1):
            for mode, threshold in modes.items():
                painn_module.PAIR_DIRECTION_MIN_EDGES = threshold
                for name, objective in objectives.items():
                    seconds = step(objective)
                    if round_ > 0:   # round 0 warms up (compiles the kernels of both paths)
                        best[(mode, name)] = min(best.get((mode, name), math.inf), seconds)
    finally:
        painn_module.PAIR_DIRECTION_MIN_EDGES = default
    edges_per_pair = int(batch.edge_index.shape[1]) / int(pairs.shape[1])
    return {"directory": directory, "atoms": int(batch.num_nodes), "edges_per_pair": edges_per_pair,
            "ms": {f"{mode} {name}": 1e3 * s for (mode, name), s in best.items()},
            "default": "per pair" if edges_per_pair >= default else "per edge", "threshold": default,
            "hyperparameters": backbone.hparams}


def format_table(results: list[dict[str, Any]], rounds: int) -> str:
    lines = [f"best of {rounds} alternating rounds, one batch per data set, 2 threads; ms per training step",
             "",
             "| data | hyper-parameters | atoms | edges per pair | energy, per pair | energy, per edge | EFS, per pair "
             "| EFS, per edge | EFS faster | default (threshold) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ms = r["ms"]
        faster = "per pair" if ms["per pair efs"] < ms["per edge efs"] else "per edge"
        hp = ", ".join(f"{k} {r['hyperparameters'][k]}" for k in ("hidden", "num_interactions", "cutoff", "num_radial"))
        lines.append(f"| {r['directory']} | {hp} | {r['atoms']:,} | {r['edges_per_pair']:.2f} | "
                     f"{ms['per pair energy']:,.0f} | {ms['per edge energy']:,.0f} | {ms['per pair efs']:,.0f} | "
                     f"{ms['per edge efs']:,.0f} | {faster} | {r['default']} ({r['threshold']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directories", nargs="+", help="shard directories, each optionally @CUTOFF (one batch of each)")
    p.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                   help="PaiNN hyper-parameter for every data set (repeatable)")
    p.add_argument("--max-atoms", type=int, default=3200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--docs", default=None, help="write the table into this markdown file")
    args = p.parse_args(argv)
    import torch

    from matforge.cli.bench_train import parse_hyperparameters

    torch.set_num_threads(args.threads)
    given = parse_hyperparameters(args.hyperparameter)
    results = []
    for spec in args.directories:
        directory, _, cutoff = spec.partition("@")
        hyperparameters = dict(given, **({"cutoff": float(cutoff)} if cutoff else {}))
        results.append(measure(directory, hyperparameters, args.max_atoms, args.rounds))
    table = format_table(results, args.rounds)
    print(table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, "benchmarks/painn_direction_crossover.py",
                       printed_table_section("PaiNN direction message: per pair or per edge", table, markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
