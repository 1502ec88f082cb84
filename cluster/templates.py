"""Cluster definitions that put ``matforge pretrain`` on a GPU cluster, shipped as package data.

Each template is a file under ``matforge/cluster/templates/`` that a user copies out, edits where it
says ``REPLACE``, and hands to the cluster's own tool. All of them end in the same entry point,
``matforge pretrain --address ... --config efs ...``, with the data and the run directory on storage
that every node sees at the same path (``/mnt/matforge/data``, ``/mnt/matforge/runs``; on Slurm the
site's shared filesystem). ``docs/cluster.md`` walks through each path.

================== ======================== ==============================================================
name               file                     for
================== ======================== ==============================================================
aws                aws.yaml                 ``ray up``: CPU head, GPU workers on-demand + spot, EFS
gcp                gcp.yaml                 ``ray up``: CPU head, GPU workers on-demand + spot, Filestore
kuberay-rayjob     kuberay-rayjob.yaml      ``kubectl apply``: one pre-training run, cluster torn down after
kuberay-raycluster kuberay-raycluster.yaml  ``kubectl apply``: an autoscaling cluster for ``matforge cluster submit``
kuberay-pvc        kuberay-pvc.yaml         ``kubectl apply``: the ReadWriteMany volume both KubeRay files mount
kuberay-image      Dockerfile               ``docker build``: the image the KubeRay pods run (Ray + CUDA torch + matforge)
slurm              slurm.sbatch             ``sbatch``: Ray head on the first node, workers on the rest, then the run
================== ======================== ==============================================================

:func:`write_template` is what ``matforge cluster template NAME --out FILE`` calls.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# name -> (file under templates/, what it is for); the one list of what ships
TEMPLATES: dict[str, tuple[str, str]] = {
    "aws": ("aws.yaml",
            "ray up cluster on AWS: CPU head, GPU workers on-demand and spot, EFS at /mnt/matforge"),
    "gcp": ("gcp.yaml",
            "ray up cluster on GCP: CPU head, GPU workers on-demand and spot, Filestore at /mnt/matforge"),
    "kuberay-rayjob": ("kuberay-rayjob.yaml",
                       "KubeRay RayJob: one pre-training run on its own Ray cluster, deleted after a TTL"),
    "kuberay-raycluster": ("kuberay-raycluster.yaml",
                           "KubeRay RayCluster: an autoscaling GPU cluster to submit runs to"),
    "kuberay-pvc": ("kuberay-pvc.yaml",
                    "KubeRay: the ReadWriteMany PersistentVolumeClaim for data and runs"),
    "kuberay-image": ("Dockerfile",
                      "KubeRay: the image the pods run (Ray 2.60, CUDA build of torch, matforge[cluster])"),
    "slurm": ("slurm.sbatch",
              "Slurm batch script: Ray head on the first node, workers on the others, then the run"),
}


def list_templates() -> list[str]:
    """Names of the shipped templates, sorted."""
    return sorted(TEMPLATES)


def describe(name: str) -> str:
    """One line saying what template ``name`` is for."""
    return TEMPLATES[_check_name(name)][1]


def _check_name(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"no cluster template {name!r}; templates: {', '.join(list_templates())}")
    return name


def template_path(name: str) -> Traversable:
    """The packaged file of template ``name`` (a Traversable: read it, do not assume a real path)."""
    return resources.files("matforge.cluster").joinpath("templates", TEMPLATES[_check_name(name)][0])


def template_text(name: str) -> str:
    """The text of template ``name``."""
    return template_path(name).read_text(encoding="utf-8")


def write_template(name: str, dest: Path | str, force: bool = False) -> Path:
    """Write template ``name`` to ``dest`` and return the path written.

    ``dest`` is a file path, or an existing directory (the template's own file name is used there);
    missing parent directories are created. The file appears whole or not at all (written to a
    temporary file beside it, then moved into place). An existing file is kept unless ``force``:
    :class:`FileExistsError` names it.
    """
    text = template_text(name)
    target = Path(dest).expanduser()
    if target.is_dir():
        target = target / TEMPLATES[name][0]
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=True (--force) to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the name appeared meanwhile: never clobber without force
            except FileExistsError:
                raise FileExistsError(f"{target} exists; pass force=True (--force) to overwrite it") from None
            except OSError:  # a filesystem without hard links
                if target.exists():
                    raise FileExistsError(f"{target} exists; pass force=True (--force) to overwrite it") from None
                os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
