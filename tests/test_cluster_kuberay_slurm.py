"""The KubeRay and Slurm cluster definitions in ``matforge.cluster.templates`` (offline).

* KubeRay files: the resources, volumes and lifecycle fields a GPU pre-training run needs, the same
  claim at the same path on head and workers, and entry points the real ``matforge pretrain`` parser
  and config loader accept.
* Slurm: ``bash -n``, the pretrain command it builds from Slurm's environment, and its order of
  events (head, workers, run, ``ray stop``) with stand-ins for srun, ray and matforge.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from matforge.cluster.templates import template_text, write_template
from cluster_template_helpers import SHARED, commented_command, cuda_tag, pretrain_command, ray_pin, yaml_template


# ---- KubeRay --------------------------------------------------------------------------------------------

def _groups(spec: dict) -> tuple[dict, list[dict]]:
    return spec["headGroupSpec"], spec["workerGroupSpecs"]


def _pod_checks(group: dict, pvc_name: str) -> tuple[str, dict]:
    """Check one group's pod; return its shared mount path and container resources."""
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    shared = [path for path, vol in mounts.items() if "persistentVolumeClaim" in volumes[vol]]
    assert len(shared) == 1
    assert volumes[mounts[shared[0]]]["persistentVolumeClaim"]["claimName"] == pvc_name
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], group.get("groupName", "head")
    assert container["image"] and ":" in container["image"]
    return shared[0], resources


def _gib(quantity: str) -> float:
    units = {"Gi": 1, "Mi": 1 / 1024, "Ti": 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi|Ti)", quantity).groups()
    return float(number) * units[unit]


def _check_cluster_spec(spec: dict) -> tuple[str, dict, dict]:
    pvc = yaml_template("kuberay-pvc")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert spec["rayVersion"] in ray_pin()
    head, workers = _groups(spec)
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # reachable through the head Service
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_path, head_res = _pod_checks(head, pvc["metadata"]["name"])
    assert "nvidia.com/gpu" not in head_res["limits"]
    (gpu,) = workers
    path, res = _pod_checks(gpu, pvc["metadata"]["name"])
    assert path == head_path == SHARED
    assert int(res["limits"]["nvidia.com/gpu"]) >= 1
    assert float(res["limits"]["cpu"]) >= 1 and _gib(res["limits"]["memory"]) > 0
    pod = gpu["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
    object_store = int(gpu["rayStartParams"]["object-store-memory"]) / 2**30
    assert object_store < _gib(shm["emptyDir"]["sizeLimit"]) < _gib(res["limits"]["memory"])
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    return head_path, gpu, res


def test_kuberay_rayjob() -> None:
    job = yaml_template("kuberay-rayjob")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 3600
    assert spec["backoffLimit"] >= 0
    path, gpu, res = _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"].get("enableInTreeAutoscaling") in (None, False)
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]  # the run needs all of them
    args, cfg = pretrain_command(shlex.split(spec["entrypoint"]))
    assert args.address == "auto" and args.config == "efs"
    assert cfg.scaling.use_gpu
    assert cfg.scaling.num_workers == gpu["replicas"] * int(res["limits"]["nvidia.com/gpu"])
    assert cfg.scaling.cpus_per_worker <= float(res["limits"]["cpu"])
    assert cfg.run.storage_path.startswith(path + "/") and cfg.data.train.startswith(path + "/")
    assert cfg.data.synth.structures == 0 and cfg.run.max_failures > 0


def test_kuberay_raycluster() -> None:
    cluster = yaml_template("kuberay-raycluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    path, gpu, res = _check_cluster_spec(spec)
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    text = template_text("kuberay-raycluster")
    service = f"{cluster['metadata']['name']}-head-svc"  # the Service KubeRay makes for the head
    assert f"kubectl port-forward service/{service} 8265:8265" in text
    submit = commented_command(text, "matforge cluster submit")
    assert submit[submit.index("--address") + 1] == "http://127.0.0.1:8265"
    args, cfg = pretrain_command(commented_command(text))
    assert args.address == "auto" and cfg.scaling.use_gpu
    assert cfg.scaling.num_workers <= gpu["maxReplicas"] * int(res["limits"]["nvidia.com/gpu"])
    assert cfg.run.storage_path.startswith(path + "/") and cfg.data.train.startswith(path + "/")


def test_kuberay_files_use_the_image_the_dockerfile_describes() -> None:
    dockerfile = template_text("kuberay-image")
    base = re.search(r"^FROM rayproject/ray:(\S+)$", dockerfile, re.M)
    assert base, "FROM line"
    assert base.group(1).split("-")[0] in ray_pin()
    index = re.search(r"download\.pytorch\.org/whl/(cu\d{3})", dockerfile)
    assert index and index.group(1) == cuda_tag(base.group(1))
    steps = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert steps.index("whl/cu") < steps.index('"${whl}[cluster]"')  # torch first, then matforge
    for name in ("kuberay-rayjob", "kuberay-raycluster"):
        text = template_text(name)
        images = set(re.findall(r"image: (\S+)", text))
        assert len(images) == 1, images  # head and workers run the same image
        assert images.pop().endswith(cuda_tag(base.group(1)))


# ---- Slurm ----------------------------------------------------------------------------------------------

@pytest.fixture()
def sbatch(tmp_path: Path) -> Path:
    return write_template("slurm", tmp_path / "slurm.sbatch")


def test_slurm_script_is_valid_bash_and_starts_ray_the_slurm_way(sbatch: Path) -> None:
    subprocess.run(["bash", "-n", str(sbatch)], check=True)
    text = sbatch.read_text()
    assert text.startswith("#!/bin/bash\n")
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert {"--ntasks-per-node=1", "--nodes=2"} <= {d.split()[1] for d in directives}
    assert any(d.startswith("#SBATCH --gpus-per-node=") for d in directives)
    assert any(d.startswith("#SBATCH --cpus-per-task=") for d in directives)
    assert "scontrol show hostnames" in text
    assert re.search(r"srun .*-w \"\$head_node\" \\\n\s+ray start --head --block", text)
    assert re.search(r"ray start --address=\"\$ray_address\" --block", text)
    assert 'matforge pretrain --address "$ray_address"' in text
    assert "trap cleanup EXIT" in text and "ray stop" in text
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(sbatch)], check=True)


def _dry_run(sbatch: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MATFORGE_", "CUDA_VISIBLE"))}
    return subprocess.run(["bash", str(sbatch)], env={**clean, "MATFORGE_DRY_RUN": "1", **env},
                          capture_output=True, text=True)


def test_slurm_pretrain_command_follows_the_allocation(sbatch: Path) -> None:
    done = _dry_run(sbatch, SLURM_JOB_NUM_NODES="3", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="32",
                    MATFORGE_DATA="/lustre/me/mptrj", MATFORGE_RUNS="/lustre/me/runs",
                    MATFORGE_EXTRA="train.max_steps=10 optim.lr=2e-4")
    assert done.returncode == 0, done.stderr
    args, cfg = pretrain_command(shlex.split(done.stdout))
    assert args.address.endswith(":6379") and args.config == "efs"
    assert cfg.scaling.num_workers == 12 and cfg.scaling.use_gpu and cfg.scaling.cpus_per_worker == 8
    assert cfg.data.train == cfg.data.val == "/lustre/me/mptrj" and cfg.run.storage_path == "/lustre/me/runs"
    assert cfg.train.max_steps == 10 and cfg.optim.lr == 2e-4 and cfg.data.synth.structures == 0

    # GPU count from the older variable ("type:count"), CPU count from the node's
    done = _dry_run(sbatch, SLURM_JOB_NUM_NODES="2", SLURM_GPUS_PER_NODE="a100:2", SLURM_CPUS_ON_NODE="6")
    assert done.returncode == 0, done.stderr
    _, cfg = pretrain_command(shlex.split(done.stdout))
    assert cfg.scaling.num_workers == 4 and cfg.scaling.cpus_per_worker == 3


def test_slurm_refuses_an_allocation_without_gpus(sbatch: Path) -> None:
    done = _dry_run(sbatch, SLURM_JOB_NUM_NODES="2")
    assert done.returncode == 1 and "no GPUs" in done.stderr and not done.stdout


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_slurm_script_order_of_events_with_stand_ins(sbatch: Path, tmp_path: Path) -> None:
    """srun runs its command here; `ray start --block` sleeps until killed; `ray status` answers once
    the head has started; the wait for nodes waits for both `ray start`s; matforge exits 3."""
    bin_dir, log = tmp_path / "bin", tmp_path / "events.log"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", 'printf "node1\\nnode2\\n"\n')
    # drop srun's options (-w takes a value), then become the command, so killing srun kills it
    _stub(bin_dir, "srun", 'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\nexec "$@"\n')
    head_up = tmp_path / "head-up"
    _stub(bin_dir, "ray", f'if [[ "$1" == status ]]; then [[ -e {head_up} ]] || exit 1; fi\n'
                          f'echo "ray $*" >> {log}\n'
                          f'if [[ "$1" == start ]]; then [[ "$2" == --head ]] && touch {head_up}; exec sleep 60; fi\n')
    _stub(bin_dir, "python", 'cat > /dev/null\n'
                             f'for _ in $(seq 100); do (( $(grep -c "^ray start" {log}) >= 2 )) && break; sleep 0.1; done\n'
                             f'echo "wait-for-nodes $*" >> {log}\n')
    _stub(bin_dir, "matforge", f'echo "matforge $*" >> {log}\nexit 3\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MATFORGE_", "CUDA_VISIBLE"))}
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "16",
           "HEAD_IP": "10.0.0.7", "RAY_PORT": "6390", "MATFORGE_RUNS": str(tmp_path / "runs"),
           "MATFORGE_DATA": str(tmp_path / "data")}
    done = subprocess.run(["bash", str(sbatch)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr  # the run's exit status is the job's
    events = log.read_text().splitlines()
    kinds = [e.split()[0] + (" " + e.split()[1] if e.startswith("ray") else "") for e in events]
    # head, `ray status` answers, the workers, all nodes up, the run, ray stop
    assert kinds.index("ray start") < kinds.index("ray status") < kinds.index("wait-for-nodes") < kinds.index("matforge")
    starts = [e for e in events if e.startswith("ray start")]
    assert len(starts) == 2 and "--head" in starts[0] and "--node-ip-address=10.0.0.7" in starts[0]
    assert "--port=6390" in starts[0] and "--num-gpus=4" in starts[0] and "--num-cpus=16" in starts[0]
    assert "--address=10.0.0.7:6390" in starts[1] and "--num-gpus=4" in starts[1]
    assert any(e.startswith("wait-for-nodes - 10.0.0.7:6390 2 ") for e in events)
    run = next(e for e in events if e.startswith("matforge"))
    assert run.startswith("matforge pretrain --address 10.0.0.7:6390 --config efs")
    assert "scaling.num_workers=8" in run and "scaling.cpus_per_worker=4" in run
    assert kinds[-1] == "ray stop" and kinds.index("matforge") < kinds.index("ray stop")
    assert (tmp_path / "runs").is_dir()
