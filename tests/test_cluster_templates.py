"""The cluster definitions in ``matforge.cluster.templates`` (offline: nothing is launched).

* ``ray up`` files (aws, gcp): valid under Ray's own schema (``ray/autoscaler/ray-schema.json`` from
  the installed wheel) and Ray's own config checks, a broken copy is not; GPU worker types on-demand
  and spot; the project installed in the setup commands with the torch build of the image's CUDA;
  the shared filesystem mounted where the run command puts data and runs.
* ``write_template``: round trip, refusal to overwrite, unknown names.

KubeRay and Slurm: test_cluster_kuberay_slurm.py.
"""

from __future__ import annotations

import copy
import re
import stat
from pathlib import Path

import pytest

from matforge.cluster.templates import TEMPLATES, describe, list_templates, template_path, template_text, write_template
from cluster_template_helpers import (RAY_UP, ROOT, SHARED, commented_command, cuda_tag, pretrain_command, ray_pin,
                                      ray_schema, yaml_template)


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

    config = yaml_template(name)
    jsonschema.validate(config, ray_schema())
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

    config = yaml_template(name)
    breaker(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


def _is_spot(node_config: dict) -> bool:
    market = node_config.get("InstanceMarketOptions", {}).get("MarketType")  # AWS
    scheduling = node_config.get("scheduling", {})                           # GCP
    return market == "spot" or scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_has_a_cpu_head_and_gpu_workers_on_demand_and_spot(name: str) -> None:
    config = yaml_template(name)
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


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_installs_matforge_with_the_images_cuda_torch(name: str) -> None:
    config = yaml_template(name)
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:")
    ray_version = image.split(":")[1].split("-")[0]
    assert ray_version in ray_pin(), (image, str(ray_pin()))
    setup = config["setup_commands"]
    torch_at = next(i for i, cmd in enumerate(setup) if re.search(r"pip install .*\btorch\b", cmd))
    matforge_at = next(i for i, cmd in enumerate(setup) if "matforge" in cmd and "[cluster]" in cmd)
    assert torch_at < matforge_at  # torch first, so installing matforge keeps the CUDA build
    index = re.search(r"download\.pytorch\.org/whl/(cu\d{3})", setup[torch_at])
    assert index and index.group(1) == cuda_tag(image)
    assert config["file_mounts"]["/tmp/matforge-dist"] == "./dist"
    assert any("/tmp/matforge-dist/matforge-" in cmd for cmd in setup)


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_mounts_the_shared_path_that_the_run_uses(name: str) -> None:
    config = yaml_template(name)
    mounts = [cmd for cmd in config["initialization_commands"] if " mount " in f" {cmd} "]
    assert len(mounts) == 1 and mounts[0].rstrip().endswith(f" {SHARED}")
    assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"]  # same path inside the container
    assert any(f"{SHARED}/runs" in cmd and f"{SHARED}/data" in cmd for cmd in config["initialization_commands"])
    args, cfg = pretrain_command(commented_command(template_text(name)))
    assert args.address == "auto"
    assert cfg.run.storage_path == f"{SHARED}/runs" and cfg.data.train.startswith(f"{SHARED}/data/")
    assert cfg.scaling.use_gpu and cfg.data.synth.structures == 0 and cfg.run.max_failures > 0
    gpu_per_node = max(t["resources"].get("GPU", 0) for t in config["available_node_types"].values())
    cpu_per_node = max(t["resources"].get("CPU", 0) for t in config["available_node_types"].values())
    assert cfg.scaling.cpus_per_worker * gpu_per_node <= cpu_per_node
    assert cfg.scaling.num_workers % gpu_per_node == 0


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_start_commands_restart_ray(name: str) -> None:
    config = yaml_template(name)
    head, worker = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    assert "ray start --head" in head[1] and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[1]
    assert "--dashboard-port=8265" in head[1]
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker[1] and "--port=6379" in head[1]


def test_aws_efs_is_in_the_clusters_region() -> None:
    config = yaml_template("aws")
    mount = next(cmd for cmd in config["initialization_commands"] if "efs" in cmd)
    assert f".efs.{config['provider']['region']}.amazonaws.com:/" in mount
    assert config["provider"]["availability_zone"].startswith(config["provider"]["region"])


def test_gcp_zone_is_in_the_region() -> None:
    provider = yaml_template("gcp")["provider"]
    assert provider["availability_zone"].startswith(provider["region"] + "-")
