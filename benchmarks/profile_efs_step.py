"""Profile the EFS pre-training step: which operators take the time (``torch.profiler``).

    python benchmarks/profile_efs_step.py SHARDS [--backbone cgcnn_smooth] [--max-atoms 3200]
        [--hyperparameter hidden=100 --hyperparameter num_interactions=4 ...] [--steps 3] [--top 25]

Builds one atom-budget batch of the shard directory, runs warm-up steps, then profiles ``--steps``
training steps of objective ``efs`` (forward, forces and stress by autograd with ``create_graph``,
loss, backward, clipping, AdamW: the step of ``matforge bench train``) and prints the operators with
the most self CPU time (or CUDA time with ``--device cuda``), with their call counts.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    import torch

    from matforge.cli.bench_train import open_shards, backbone_arguments, fill_missing_labels, parse_hyperparameters
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory")
    p.add_argument("--backbone", default="cgcnn_smooth")
    p.add_argument("--objective", default="efs")
    p.add_argument("--max-atoms", type=int, default=3200)
    p.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = open_shards(args.directory)
    hp = backbone_arguments(args.backbone, parse_hyperparameters(args.hyperparameter))
    torch.manual_seed(0)
    backbone = create(args.backbone, **hp)
    graphs = GraphDataset(ds, GraphConfig(cutoff=backbone.cutoff, max_neighbors=backbone.max_neighbors))
    group = next(iter(AtomBudgetBatchSampler(graphs.natoms, args.max_atoms, shuffle=True, seed=0)))
    batch = graphs.collate(group)
    fill_missing_labels(batch, seed=0)
    batch = batch.to(device)
    objective = build_objective(args.objective)
    model = AtomisticModel(backbone, objective.build_heads(backbone)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    options = objective.forward_options(training=True)

    def step() -> None:
        loss = objective.loss(model(batch, **options), batch)
        optimizer.zero_grad(set_to_none=True)
        backward_to_weights(loss, trainable_weights(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    edges = int(batch.edge_index.shape[1])
    print(f"{args.backbone} {backbone.hparams}; objective {args.objective}; batch {batch.num_graphs} structures, "
          f"{int(batch.num_nodes)} atoms, {edges} edges ({edges / int(batch.num_nodes):.1f} per atom); "
          f"{args.steps} profiled steps, {torch.get_num_threads()} threads")
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
