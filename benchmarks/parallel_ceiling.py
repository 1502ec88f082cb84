"""How much can P processes gain over one on this machine, with no communication at all?

A diagnostic beside ``matforge bench pretrain``: data-parallel training with W workers can at best
do what W *independent* processes running the same training step do (shared caches, memory
bandwidth and a VM's CPU time limit it before DDP, gloo or Ray add anything). This script runs the
pre-training step of a config (model, objective, per-worker atom budget, as ``matforge pretrain``
builds them) on pre-built batches, in one process with T threads and in P simultaneous processes
with one thread each, and prints the atoms/s of each and their sum::

    python benchmarks/parallel_ceiling.py --data DIR [--config quickstart] [--steps 60] [--set KEY=VALUE ...]

Run directly (it is not part of the package). Each child prints one JSON line; the parent sums.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.pretrain.config import load_config
    from matforge.pretrain.worker import build_model, build_objective

    cfg = load_config(args.config, [f"data.train={args.data}", "data.train_split=null", "data.val=null",
                                    "data.val_split=null", "data.synth.structures=0", *args.set])
    records = open_dataset(cfg.data.train)
    objective = build_objective(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, objective, records.manifest.elements)
    graphs = GraphDataset(records, GraphConfig(cutoff=model.cutoff, max_neighbors=model.max_neighbors,
                                               dtype=cfg.train.dtype))
    groups = list(AtomBudgetBatchSampler(graphs.natoms, cfg.data.max_atoms, shuffle=True, seed=args.seed))[:8]
    batches = [graphs.collate(g) for g in groups]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    options = objective.forward_options(training=True)

    def step(batch) -> None:
        loss = objective.loss(model(batch, **options), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    for b in batches[:3]:
        step(b)
    atoms = 0
    t0 = time.perf_counter()
    for k in range(args.steps):
        batch = batches[k % len(batches)]
        step(batch)
        atoms += int(batch.num_nodes)
    seconds = time.perf_counter() - t0
    print(json.dumps({"pid": os.getpid(), "threads": args.threads, "atoms_per_s": atoms / seconds,
                      "step_ms": 1e3 * seconds / args.steps}))


def spawn(args: argparse.Namespace, processes: int, threads: int) -> list[dict]:
    base = [sys.executable, __file__, "--child", "--data", args.data, "--config", args.config, "--steps",
            str(args.steps), "--threads", str(threads)] + [x for item in args.set for x in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(base + ["--seed", str(k)], stdout=subprocess.PIPE, text=True, env=env)
             for k in range(processes)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a child failed with {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="shard directory")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cores = os.cpu_count() or 1
    print(f"load average {os.getloadavg()[0]:.2f}; {cores} CPUs; config {args.config} {args.set}")
    rows = [(1, t) for t in range(1, cores + 1)] + [(p, 1) for p in range(2, cores + 1)]
    for processes, threads in rows:
        results = spawn(args, processes, threads)
        total = sum(r["atoms_per_s"] for r in results)
        per = ", ".join(f"{r['atoms_per_s']:.0f}" for r in results)
        print(f"{processes} process(es) x {threads} thread(s): {total:8.0f} atoms/s in total ({per})")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
