"""One EFS training step of the ``efs`` config's model under DDP on one GPU (NCCL), checked.

Run by ``benchmarks/gpu_pretrain.sh`` on a GPU machine (``--device cpu`` runs the same check on gloo,
for trying the script anywhere). It proves the CUDA/NCCL path the Ray trainer takes, without Ray:

1. forces and stress of the model on the GPU against the same model on the CPU (float32; the
   largest absolute difference, relative to the largest value);
2. a world-size-1 process group (NCCL on CUDA) and the model wrapped in
   ``DistributedDataParallel`` with the trainer's options (:func:`matforge.pretrain.worker._ddp_options`):
   the loss and every parameter gradient of the EFS step (forces and stress by autograd with
   ``create_graph``, so DDP's hooks fire in a double backward) against the unwrapped model's;
3. three optimizer steps under DDP: the loss stays finite.

Prints one ``name: value`` line per figure and ``ddp gpu check: ok`` (exit 0) or the first failure
(exit 1).

    python3 benchmarks/gpu_ddp_step.py --data .device_bundle/data/emt-efs [--max-atoms 2048]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys


def main() -> int:
    import warnings

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.pretrain.config import load_config
    from matforge.pretrain.worker import _ddp_options, build_model, build_objective

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="shard directory (the bundle's data/emt-efs)")
    parser.add_argument("--max-atoms", type=int, default=2048, help="atoms in the checked batch")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    # as in the trainer: DDP notes that a (1, F) weight's gradient from the double backward is transposed
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("ddp gpu check: FAILED: torch sees no CUDA device")
        return 1

    cfg = load_config("efs", [f"data.train={args.data}", "data.synth.structures=0"])
    records = open_dataset(args.data, split="train")
    objective = build_objective(cfg)
    torch.manual_seed(0)
    model_cpu = build_model(cfg, objective, records.manifest.elements)
    graphs = GraphDataset(records, GraphConfig(cutoff=model_cpu.backbone.cutoff,
                                               max_neighbors=model_cpu.backbone.max_neighbors,
                                               properties=tuple(objective.properties)))
    first = next(iter(AtomBudgetBatchSampler(graphs.natoms, args.max_atoms, shuffle=False, seed=0)))
    batch_cpu = graphs.collate(first)
    batch = batch_cpu.to(device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"torch: {torch.__version__}  cuda: {torch.version.cuda}  "
          f"nccl: {'.'.join(map(str, torch.cuda.nccl.version())) if device.type == 'cuda' else '-'}")
    print(f"batch: {batch.num_graphs} structures, {int(batch.num_nodes)} atoms, {int(batch.edge_index.shape[1])} edges")

    failures: list[str] = []
    options = objective.forward_options(training=True)

    # 1. GPU against CPU
    model = copy.deepcopy(model_cpu).to(device)
    ref = model_cpu(batch_cpu, **options)
    out = model(batch, **options)
    for key in ("energy", "forces", "stress"):
        a, b = out[key].detach().cpu().double(), ref[key].detach().double()
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        print(f"{key} gpu vs cpu, max |diff| / max |value|: {rel:.2e}")
        if not rel < 1e-3:
            failures.append(f"{key} differs between {device} and cpu by {rel:.2e}")

    # 2. DDP on a world-size-1 process group
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1, device_id=device if device.type == "cuda" else None)
    print(f"process group backend: {dist.get_backend()}")
    plain = copy.deepcopy(model)
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      **_ddp_options(model))

    def loss_and_grads(module: torch.nn.Module, params: list[torch.nn.Parameter]):
        for p in params:
            p.grad = None
        loss = objective.loss(module(batch, **options), batch)
        backward_to_weights(loss, params)
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return float(loss.detach()), grads

    loss_plain, grads_plain = loss_and_grads(plain, list(plain.parameters()))
    loss_ddp, grads_ddp = loss_and_grads(wrapped, list(model.parameters()))
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(grads_ddp, grads_plain))
    print(f"loss plain {loss_plain:.6g}  ddp {loss_ddp:.6g}")
    print(f"parameter gradients ddp vs plain, worst max |diff| / max |value|: {worst:.2e}")
    if abs(loss_ddp - loss_plain) > 1e-5 * max(1.0, abs(loss_plain)) or not worst < 1e-4:
        failures.append(f"DDP step differs from the plain step (loss {loss_ddp} vs {loss_plain}, grads {worst:.2e})")

    # 3. a few optimizer steps under DDP
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for k in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss = objective.loss(wrapped(batch, **options), batch)
        backward_to_weights(loss, trainable_weights(model))
        optimizer.step()
        print(f"ddp step {k + 1}: loss {float(loss.detach()):.6g}")
        if not torch.isfinite(loss):
            failures.append(f"DDP step {k + 1}: loss is {float(loss.detach())}")
    if device.type == "cuda":
        print(f"peak cuda memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    dist.destroy_process_group()
    if failures:
        print("ddp gpu check: FAILED: " + "; ".join(failures))
        return 1
    print("ddp gpu check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
