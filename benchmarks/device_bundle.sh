#!/usr/bin/env bash
# Build .device_bundle/: what `benchmarks/gpu_pretrain.sh` needs on a GPU machine that has PyTorch,
# PyG, TensorBoard, pandas and pyarrow but no package index (the `device` tool's machines).
#
#   bash benchmarks/device_bundle.sh            # here, with the dev venv active; ~1-2 min
#   -> .device_bundle/  (git-ignored; pass it to the device run in `carry`; must stay under 64 MiB)
#
# Contents:
#   *.whl                 the packages the pre-training path imports that such an image lacks (lmdb, vesin, omegaconf, Ray's own needs: jsonschema, pydantic, ...),
#                         for CPython 3.12 on manylinux x86-64
#   ray-<v>-trimmed.tar.xz  Ray's wheel unpacked without what a Ray Train job never loads (the Java
#                         jars, RLlib, Serve, the LLM libraries, the dashboard's web client): the
#                         wheel itself (79 MB) is over the tool's 64 MiB limit
#   data/emt-efs/         the EFS config's dataset (2,000 EMT structures, split), made here so the
#                         device's minutes go to training
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.device_bundle}
ray_version=$(python -c "import ray; print(ray.__version__)")
py=3.12
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf "$out" && mkdir -p "$out"
fetch() { python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
          "${platforms[@]}" -d "$out" "$@"; }
fetch lmdb vesin "omegaconf>=2.4" jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core \
      annotated-types typing-inspection tensorboardX

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch -d "$work" "ray==$ray_version"
(cd "$work" && python -m zipfile -e ray-*.whl unpacked)
rm -rf "$work"/unpacked/ray/{jars,rllib,serve,llm} "$work"/unpacked/ray/dashboard/client/build
chmod +x "$work"/unpacked/ray/core/src/ray/raylet/raylet "$work"/unpacked/ray/core/src/ray/gcs/gcs_server
tar -C "$work/unpacked" -cJf "$out/ray-$ray_version-trimmed.tar.xz" .

python - "$out/data/emt-efs" <<'EOF'
import sys
from matforge.pretrain.config import load_config
from matforge.pretrain.data_prep import ensure_synth
cfg = load_config("efs", [f"data.train={sys.argv[1]}", f"data.val={sys.argv[1]}"])
ensure_synth(cfg)
EOF
du -sh "$out"
ls -la "$out"
