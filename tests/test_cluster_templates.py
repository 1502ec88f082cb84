"""The cluster definitions in ``matforge.cluster.templates`` (offline: nothing is launched).

* ``ray up`` files (aws, gcp): valid under Ray's own schema (``ray/autoscaler/ray-schema.json`` from
  the installed wheel) and Ray's own config checks, a broken copy is not; GPU worker types on-demand
  and spot; the project installed in the setup commands with the torch build of the image's CUDA;
  the shared filesystem mounted where the run command puts data and runs.
* KubeRay files: the resources, volumes and lifecycle fields a GPU pre-training run needs, the same
  claim at the same path on head and workers, and entry points the real ``matforge pretrain`` parser
  and config loader accept.
* Slurm: ``bash -n``, the pretrain command it builds from Slurm's environment, and its order of
  events (head, workers, run, ``ray stop``) with stand-ins for srun, ray and matforge.
* ``write_template``: round trip, refusal to overwrite, unknown names.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from matforge.cluster.templates import (
    TEMPLATES,
    describe,
    list_templates,
    template_path,
    template_text,
    write_template,
)

ROOT = Path(__file__).resolve().parents[1]
RAY_UP = ["aws", "gcp"]
SHARED = "/mnt/matforge"


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load(template_text(name))


def _ray_schema() -> dict[str, Any]:
    ray = pytest.importorskip("ray")
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _ray_pin():
    """The Ray requirement of the [cluster] extra, from pyproject.toml."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("needs the source tree's pyproject.toml")
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["cluster"]
    return next(Requirement(r) for r in extras if Requirement(r).name == "ray").specifier


def _pretrain(argv: list[str]):
    """Parse ``matforge pretrain ARGS`` with the real sub-command parser and load its config."""
    from matforge.cli import pretrain as pretrain_cli
    from matforge.pretrain.config import load_config

    assert argv[:2] == ["matforge", "pretrain"], argv
    parser = argparse.ArgumentParser(prog="matforge")
    pretrain_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv[1:])
    return args, load_config(args.config, args.overrides)


def _commented_command(text: str, marker: str = "matforge pretrain") -> list[str]:
    """The shell command in the comments that contains ``marker`` (continuation lines joined), from
    ``marker`` on."""
    lines = [line.lstrip()[1:].strip() for line in text.splitlines() if line.lstrip().startswith("#")]
    logical, current = [], ""
    for line in lines:
        if line.endswith("\\"):
            current += line[:-1] + " "
        else:
            logical.append(current + line)
            current = ""
    found = [line[line.index(marker):] for line in logical if marker in line]
    assert len(found) == 1, f"expected one commented '{marker}' command, found {found}"
    return shlex.split(found[0])


# ---- the registry ---------------------------------------------------------------------------------------

def test_every_template_is_shipped_and_every_shipped_file_is_a_template() -> None:
    assert set(list_templates()) == {"aws", "gcp", "kuberay-rayjob", "kuberay-raycluster", "kuberay-pvc",
                                     "kuberay-image", "slurm"}
    assert list_templates() == sorted(list_templates())
    shipped = {p.name for p in (ROOT / "cluster" / "templates").iterdir() if p.is_file()}
    assert shipped == {filename for filename, _ in TEMPLATES.values()}
    for name in list_templates():
        assert template_path(name).is_file(), name
        assert template_text(name).strip(), name
        assert describe(name) == TEMPLATES[name][1] and describe(name), name


def test_unknown_template_names_the_known_ones() -> None:
    for call in (template_text, template_path, describe, lambda n: write_template(n, Path("unused"))):
        with pytest.raises(ValueError) as err:
            call("azure")
        message = str(err.value)
        assert "azure" in message and all(name in message for name in list_templates())


# ---- write_template -------------------------------------------------------------------------------------

def test_write_template_round_trip_to_file_and_directory(tmp_path: Path) -> None:
    out = write_template("aws", tmp_path / "nested" / "cluster.yaml")
    assert out == tmp_path / "nested" / "cluster.yaml"
    assert out.read_text() == template_text("aws")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    into_dir = write_template("slurm", tmp_path)
    assert into_dir == tmp_path / "slurm.sbatch" and into_dir.read_text() == template_text("slurm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nested", "slurm.sbatch"]  # no temporary left


def test_write_template_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "job.yaml"
    target.write_text("my edits\n")
    with pytest.raises(FileExistsError, match=re.escape(str(target))):
        write_template("kuberay-rayjob", target)
    assert target.read_text() == "my edits\n"
    (tmp_path / "slurm.sbatch").write_text("mine")
    with pytest.raises(FileExistsError, match="slurm.sbatch"):
        write_template("slurm", tmp_path)  # into a directory: the file there is kept too
    assert (tmp_path / "slurm.sbatch").read_text() == "mine"
    assert write_template("kuberay-rayjob", target, force=True) == target
    assert target.read_text() == template_text("kuberay-rayjob")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "slurm.sbatch"]


# ---- ray up (AWS, GCP) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_is_valid_for_ray(name: str) -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml(name)
    jsonschema.validate(config, _ray_schema())
    # what `ray up` does with it before touching the cloud: merge provider defaults, then check
    validate_config(prepare_config(copy.deepcopy(config)))


def _break_top_level(c: dict) -> None:
    c["worker_nodes"] = {"InstanceType": "g5.xlarge"}  # a key the schema does not know


def _break_resources(c: dict) -> None:
    c["available_node_types"]["gpu_spot"]["resources"]["GPU"] = "4"  # not an integer


def _break_node_type(c: dict) -> None:
    del c["available_node_types"]["gpu_ondemand"]["node_config"]  # required


@pytest.mark.parametrize("name", RAY_UP)
@pytest.mark.parametrize("breaker", [_break_top_level, _break_resources, _break_node_type])
def test_ray_schema_rejects_a_broken_copy(name: str, breaker) -> None:
    import jsonschema

    config = _yaml(name)
    breaker(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())


def _is_spot(node_config: dict) -> bool:
    market = node_config.get("InstanceMarketOptions", {}).get("MarketType")  # AWS
    scheduling = node_config.get("scheduling", {})                           # GCP
    return market == "spot" or scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_has_a_cpu_head_and_gpu_workers_on_demand_and_spot(name: str) -> None:
    config = _yaml(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # no training there
    workers = {key: t for key, t in types.items() if key != config["head_node_type"]}
    gpu = {key: t for key, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu == workers
    spot = [key for key, t in gpu.items() if _is_spot(t["node_config"])]
    on_demand = [key for key, t in gpu.items() if not _is_spot(t["node_config"])]
    assert spot and on_demand
    for key, t in gpu.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"], key
        assert t["resources"]["CPU"] >= t["resources"]["GPU"], key
        assert t["labels"]["market-type"] == ("spot" if key in spot else "on-demand"), key
    assert sum(t["min_workers"] for t in gpu.values()) <= config["max_workers"]


def _cuda_tag(text: str) -> str:
    tags = set(re.findall(r"-(cu\d{3})\b", text))
    assert len(tags) == 1, tags
    return tags.pop()


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_installs_matforge_with_the_images_cuda_torch(name: str) -> None:
    config = _yaml(name)
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:")
    ray_version = image.split(":")[1].split("-")[0]
    assert ray_version in _ray_pin(), (image, str(_ray_pin()))
    setup = config["setup_commands"]
    torch_at = next(i for i, cmd in enumerate(setup) if re.search(r"pip install .*\btorch\b", cmd))
    matforge_at = next(i for i, cmd in enumerate(setup) if "matforge" in cmd and "[cluster]" in cmd)
    assert torch_at < matforge_at  # torch first, so installing matforge keeps the CUDA build
    index = re.search(r"download\.pytorch\.org/whl/(cu\d{3})", setup[torch_at])
    assert index and index.group(1) == _cuda_tag(image)
    assert config["file_mounts"]["/tmp/matforge-dist"] == "./dist"
    assert any("/tmp/matforge-dist/matforge-" in cmd for cmd in setup)


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_mounts_the_shared_path_that_the_run_uses(name: str) -> None:
    config = _yaml(name)
    mounts = [cmd for cmd in config["initialization_commands"] if " mount " in f" {cmd} "]
    assert len(mounts) == 1 and mounts[0].rstrip().endswith(f" {SHARED}")
    assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"]  # same path inside the container
    assert any(f"{SHARED}/runs" in cmd and f"{SHARED}/data" in cmd for cmd in config["initialization_commands"])
    args, cfg = _pretrain(_commented_command(template_text(name)))
    assert args.address == "auto"
    assert cfg.run.storage_path == f"{SHARED}/runs" and cfg.data.train.startswith(f"{SHARED}/data/")
    assert cfg.scaling.use_gpu and cfg.data.synth.structures == 0 and cfg.run.max_failures > 0
    gpu_per_node = max(t["resources"].get("GPU", 0) for t in config["available_node_types"].values())
    cpu_per_node = max(t["resources"].get("CPU", 0) for t in config["available_node_types"].values())
    assert cfg.scaling.cpus_per_worker * gpu_per_node <= cpu_per_node
    assert cfg.scaling.num_workers % gpu_per_node == 0


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_start_commands_restart_ray(name: str) -> None:
    config = _yaml(name)
    head, worker = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    assert "ray start --head" in head[1] and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[1]
    assert "--dashboard-port=8265" in head[1]
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker[1] and "--port=6379" in head[1]


def test_aws_efs_is_in_the_clusters_region() -> None:
    config = _yaml("aws")
    mount = next(cmd for cmd in config["initialization_commands"] if "efs" in cmd)
    assert f".efs.{config['provider']['region']}.amazonaws.com:/" in mount
    assert config["provider"]["availability_zone"].startswith(config["provider"]["region"])


def test_gcp_zone_is_in_the_region() -> None:
    provider = _yaml("gcp")["provider"]
    assert provider["availability_zone"].startswith(provider["region"] + "-")


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
    pvc = _yaml("kuberay-pvc")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert spec["rayVersion"] in _ray_pin()
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
    job = _yaml("kuberay-rayjob")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 3600
    assert spec["backoffLimit"] >= 0
    path, gpu, res = _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"].get("enableInTreeAutoscaling") in (None, False)
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]  # the run needs all of them
    args, cfg = _pretrain(shlex.split(spec["entrypoint"]))
    assert args.address == "auto" and args.config == "efs"
    assert cfg.scaling.use_gpu
    assert cfg.scaling.num_workers == gpu["replicas"] * int(res["limits"]["nvidia.com/gpu"])
    assert cfg.scaling.cpus_per_worker <= float(res["limits"]["cpu"])
    assert cfg.run.storage_path.startswith(path + "/") and cfg.data.train.startswith(path + "/")
    assert cfg.data.synth.structures == 0 and cfg.run.max_failures > 0


def test_kuberay_raycluster() -> None:
    cluster = _yaml("kuberay-raycluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    path, gpu, res = _check_cluster_spec(spec)
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    text = template_text("kuberay-raycluster")
    service = f"{cluster['metadata']['name']}-head-svc"  # the Service KubeRay makes for the head
    assert f"kubectl port-forward service/{service} 8265:8265" in text
    submit = _commented_command(text, "matforge cluster submit")
    assert submit[submit.index("--address") + 1] == "http://127.0.0.1:8265"
    args, cfg = _pretrain(_commented_command(text))
    assert args.address == "auto" and cfg.scaling.use_gpu
    assert cfg.scaling.num_workers <= gpu["maxReplicas"] * int(res["limits"]["nvidia.com/gpu"])
    assert cfg.run.storage_path.startswith(path + "/") and cfg.data.train.startswith(path + "/")


def test_kuberay_files_use_the_image_the_dockerfile_describes() -> None:
    dockerfile = template_text("kuberay-image")
    base = re.search(r"^FROM rayproject/ray:(\S+)$", dockerfile, re.M)
    assert base, "FROM line"
    assert base.group(1).split("-")[0] in _ray_pin()
    index = re.search(r"download\.pytorch\.org/whl/(cu\d{3})", dockerfile)
    assert index and index.group(1) == _cuda_tag(base.group(1))
    steps = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert steps.index("whl/cu") < steps.index('"${whl}[cluster]"')  # torch first, then matforge
    for name in ("kuberay-rayjob", "kuberay-raycluster"):
        text = template_text(name)
        images = set(re.findall(r"image: (\S+)", text))
        assert len(images) == 1, images  # head and workers run the same image
        assert images.pop().endswith(_cuda_tag(base.group(1)))


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
    args, cfg = _pretrain(shlex.split(done.stdout))
    assert args.address.endswith(":6379") and args.config == "efs"
    assert cfg.scaling.num_workers == 12 and cfg.scaling.use_gpu and cfg.scaling.cpus_per_worker == 8
    assert cfg.data.train == cfg.data.val == "/lustre/me/mptrj" and cfg.run.storage_path == "/lustre/me/runs"
    assert cfg.train.max_steps == 10 and cfg.optim.lr == 2e-4 and cfg.data.synth.structures == 0

    # GPU count from the older variable ("type:count"), CPU count from the node's
    done = _dry_run(sbatch, SLURM_JOB_NUM_NODES="2", SLURM_GPUS_PER_NODE="a100:2", SLURM_CPUS_ON_NODE="6")
    assert done.returncode == 0, done.stderr
    _, cfg = _pretrain(shlex.split(done.stdout))
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
