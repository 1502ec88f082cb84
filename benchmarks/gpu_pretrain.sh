#!/usr/bin/env bash
# EFS pre-training on one GPU through Ray Train (NCCL), with the DDP check first: the figures issue 4
# asks for (atoms/s, GPU memory, utilisation) and proof that the CUDA/NCCL path works.
#
# Made for the `device` tool's machines (PyTorch, PyG, TensorBoard there; no package index):
#   here:  bash benchmarks/device_bundle.sh                       (builds .device_bundle/, ~37 MB)
#   there: run(command="bash benchmarks/gpu_pretrain.sh", carry=[".device_bundle"], timeout_s=540)
# On any machine with the bundle's Python (3.12), GPU_CHECK_DEVICE=cpu tries the same steps on the CPU.
#
# Steps: install the bundle and this working tree's matforge into $SITE; print the GPU and versions; benchmarks/gpu_ddp_step.py
# (GPU against CPU, DDP on NCCL against the plain step); then `matforge pretrain --config efs` with
# 1 worker and 1 GPU at each atom budget in GPU_CHECK_MAX_ATOMS (default 512 4096 16384 atoms per
# batch), GPU_CHECK_STEPS steps each (default 400), nvidia-smi sampled every 250 ms throughout;
# finally benchmarks/gpu_summary.py prints the table. Everything lands in $OUT (8 files: the tool brings back at most 8).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${BUNDLE:-.device_bundle}
out=${OUT:-/tmp/gpu_check}
site=${SITE:-/tmp/site}
device=${GPU_CHECK_DEVICE:-cuda}
steps=${GPU_CHECK_STEPS:-400}
budgets=${GPU_CHECK_MAX_ATOMS:-512 4096 16384}
runs=/tmp/gpu_runs
mkdir -p "$out" && rm -rf "$runs"
[ -d "$bundle" ] || { echo "no $bundle: build it with benchmarks/device_bundle.sh and carry it" >&2; exit 2; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$bundle"/*.whl || exit 1
# matforge from this working tree (not from the bundle), so the check runs the code as it is now
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$site" . || exit 1
tar -C "$site" -xJf "$bundle"/ray-*-trimmed.tar.xz || exit 1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi || echo "nvidia-smi: not available"
  python3 -c "import torch, ray, torch_geometric, matforge; print('python', __import__('sys').version.split()[0],
              '| torch', torch.__version__, 'cuda', torch.version.cuda, '| ray', ray.__version__,
              '| pyg', torch_geometric.__version__, '| cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$out/env.txt"

python3 benchmarks/gpu_ddp_step.py --data "$bundle/data/emt-efs" --device "$device" 2>&1 | tee "$out/ddp_step.txt"

smi_csv="$out/smi.csv"
: > "$smi_csv"
smi_pid=
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 250 > "$smi_csv" &
    smi_pid=$!
fi
use_gpu=$([ "$device" = cuda ] && echo true || echo false)
printf 'max_atoms\tsmi_first_step\tsmi_end\texit\n' > "$out/runs.tsv"
for atoms in $budgets; do
    log="$out/pretrain_$atoms.log"
    : > "$log"
    first=
    python3 -m matforge.cli.main pretrain --config efs data.train="$bundle/data/emt-efs" \
        data.val="$bundle/data/emt-efs" data.synth.structures=0 data.max_atoms="$atoms" \
        scaling.num_workers=1 scaling.use_gpu="$use_gpu" train.max_steps="$steps" train.log_every=20 \
        train.eval_every="$steps" train.checkpoint_every="$steps" run.storage_path="$runs" run.name="efs_$atoms" 2>&1 |
    while IFS= read -r line; do
        printf '%s\n' "$line" | tee -a "$log"
        case $line in *"] step "*) [ -n "$first" ] || { first=$(wc -l < "$smi_csv"); echo "$first" > "$log.first"; } ;; esac
    done
    code=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$atoms" "$(cat "$log.first" 2>/dev/null || echo 0)" "$(wc -l < "$smi_csv")" "$code" \
        >> "$out/runs.tsv"
    rm -f "$log.first"
done
[ -n "$smi_pid" ] && kill "$smi_pid"
python3 benchmarks/gpu_summary.py "$out" "$runs" | tee "$out/summary.txt"
