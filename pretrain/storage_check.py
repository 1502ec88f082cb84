"""Check, on every worker before the first step, that it sees the run directory and the data the driver saw.

On a cluster the driver (on the head node) and the training workers (on GPU nodes) are different
machines. ``run.storage_path`` and ``data.train``/``data.val`` must then name a shared filesystem mounted
at the same path everywhere (NFS, Lustre, EFS, Filestore). When one node lacks the mount, a worker
would create an empty run directory on its local disk (its checkpoints lost, or the first checkpoint
failing) or read another copy of the data: both fail late or silently.

So the driver writes a marker file with a random token into ``<run>/.storage-check/`` and puts the
token and the datasets' manifest digests into the workers' payload; each worker then checks that

* the marker is there and holds the token (same run directory, shared), and
* ``manifest.json`` of each dataset has the digest the driver computed (same data, same version),

and raises :class:`StorageCheckError` naming its rank, node, host and the path otherwise.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from pathlib import Path

MARKER_DIR = ".storage-check"


class StorageCheckError(RuntimeError):
    """A worker does not see the run directory or the data as the driver does."""


def write_marker(run_dir: Path) -> str:
    """Write a fresh marker under ``run_dir`` (driver side); return its token (32 hex characters)."""
    token = secrets.token_hex(16)
    marker_dir = run_dir / MARKER_DIR
    marker_dir.mkdir(parents=True, exist_ok=True)
    for old in marker_dir.glob("*.token"):  # one per launch; earlier launches' markers are stale
        old.unlink(missing_ok=True)
    partial = marker_dir / f".{token}.partial"
    partial.write_text(token)
    partial.replace(marker_dir / f"{token}.token")
    return token


def where(rank: int, node_id: str | None = None) -> str:
    """``rank R on node ID (host H)``: how a worker names itself in messages."""
    node = f" on node {node_id}" if node_id else ""
    return f"rank {rank}{node} (host {socket.gethostname()})"


def check_marker(run_dir: Path, token: str, rank: int, node_id: str | None = None) -> None:
    """Raise unless ``run_dir`` holds the marker with ``token`` (worker side)."""
    marker = run_dir / MARKER_DIR / f"{token}.token"
    try:
        seen = marker.read_text()
    except OSError:
        raise StorageCheckError(
            f"{where(rank, node_id)} does not see the run directory {run_dir}: the driver's marker {marker} is "
            "missing there. run.storage_path must be on storage every node mounts at the same path "
            "(NFS, Lustre, EFS, Filestore)") from None
    if seen != token:
        raise StorageCheckError(f"{where(rank, node_id)}: the marker {marker} holds another launch's token; "
                                "two runs share this run directory")


def check_dataset(directory: str, expected_sha256: str, rank: int, node_id: str | None = None) -> None:
    """Raise unless ``directory/manifest.json`` has the digest the driver computed (worker side)."""
    from matforge.datasets.manifest import MANIFEST_NAME

    manifest = Path(directory) / MANIFEST_NAME
    try:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError as err:
        raise StorageCheckError(
            f"{where(rank, node_id)} cannot read the dataset {directory}: {manifest}: {err.strerror or err}. "
            "Data must be on storage every node mounts at the same path") from None
    if digest != expected_sha256:
        raise StorageCheckError(
            f"{where(rank, node_id)} sees a different dataset at {directory}: {manifest} has sha256 {digest[:12]}…, "
            f"the driver's has {expected_sha256[:12]}…. Every node must read the same copy (a shared mount)")


def check_worker_storage(run_dir: Path, token: str | None, datasets: dict[str, str], rank: int,
                         node_id: str | None = None) -> None:
    """All of a worker's checks: the marker (when the driver wrote one) and each ``{directory: sha256}``."""
    if token:
        check_marker(run_dir, token, rank, node_id)
    for directory, digest in datasets.items():
        if digest:
            check_dataset(directory, digest, rank, node_id)
