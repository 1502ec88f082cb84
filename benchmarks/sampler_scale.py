"""Epoch set-up of the atom-budget sampler at MPtrj scale (1.58 M structures), with and without
the step balance: the time every rank spends, at every epoch, computing its batches.

    python benchmarks/sampler_scale.py [--structures 1580395] [--world-size 8] [--max-atoms 2048]
                                       [--docs docs/benchmarks.md]

Atom counts and cell volumes are drawn to look like MPtrj (median ~30 atoms per frame, 1-444;
~14 Å³ per atom); the costs are the default atoms + edges estimate at a 6 Å cutoff. Prints a
table (best of 3 epochs); ``--docs`` also writes it into that file between this script's markers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from matforge.training.docs_tables import printed_table_section, update_section


def main() -> None:
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.datasets.step_balance import structure_costs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structures", type=int, default=1_580_395)
    p.add_argument("--world-size", type=int, default=8)
    p.add_argument("--max-atoms", type=int, default=2048)
    p.add_argument("--docs", help="markdown file whose section between this script's markers is replaced")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    natoms = np.clip(np.round(rng.lognormal(np.log(30), 0.8, args.structures)), 1, 444).astype(np.int64)
    volume = natoms * rng.uniform(9.0, 25.0, args.structures)
    cost = structure_costs(natoms, volume, 6.0)
    rows = []
    for label, c in (("packing only", None), ("with step balance", cost)):
        sampler = AtomBudgetBatchSampler(natoms, args.max_atoms, world_size=args.world_size, rank=0, cost=c)
        times = []
        for epoch in range(3):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            batches = list(iter(sampler))
            times.append(time.perf_counter() - started)
        rows.append((label, min(times), len(batches)))
    lines = [f"- {args.structures:,} structures, {args.world_size} ranks, {args.max_atoms} atoms per batch", "",
             "| setting | epoch set-up, s (best of 3) | batches per rank |", "|---|---|---|"]
    lines += [f"| {label} | {seconds:.2f} | {count:,} |" for label, seconds, count in rows]
    body = printed_table_section("Sampler epoch set-up at MPtrj scale", "\n".join(lines), markdown=True)
    print(body)
    if args.docs:
        update_section(args.docs, "benchmarks/sampler_scale.py", body)


if __name__ == "__main__":
    main()
