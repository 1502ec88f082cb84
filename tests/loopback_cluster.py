"""Real Ray clusters on this machine (loopback) for the ``matforge cluster`` integration tests.

Each node is a ``ray start --block`` process of its own with a private ``--temp-dir`` and free ports,
so nothing collides with another Ray instance on the machine; cleaning up terminates exactly those
processes and their descendants (never ``ray stop``, which stops every Ray process of the machine),
also when a test fails, and the ``--block`` processes die with the test process (PR_SET_PDEATHSIG).
Used by tests/test_cluster_two_nodes.py and tests/test_cluster_token_head.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

psutil = pytest.importorskip("psutil")  # comes with ray[default]

RAY_CLI = Path(sys.executable).with_name("ray")
RANK_LINE = re.compile(r"\[matforge\] rank (\d+) of (\d+) on node ([0-9a-f]+) host (\S+)")
# variables of the test's own environment that would steer Ray or the client elsewhere
STRIPPED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
            "RAY_JOB_HEADERS", "MATFORGE_FAULT_INJECT", "MATFORGE_BATCH_LOG")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's address/auth variables, the venv's bin first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    env["PATH"] = f"{RAY_CLI.parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM this process when the test process dies (Linux), so a killed test run leaves no nodes."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RayNode:
    """One ``ray start --block`` process (a Ray node) with a private temp dir and free ports."""

    def __init__(self, name: str, root: Path, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.temp_dir = root / name
        self.log = root / f"{name}.log"
        ports = {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        self.argv = [str(RAY_CLI), "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                     "--min-worker-port=0", "--max-worker-port=0", "--object-store-memory=100000000",
                     "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()], *args]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> list["psutil.Process"]:
        """The ``ray start`` process and every process under it (raylet, GCS, workers, job drivers)."""
        try:
            top = psutil.Process(self.process.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole node at once: a machine that vanished."""
        procs = self.tree()
        for proc in procs:
            with _gone_ok():
                proc.kill()
        psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        """SIGTERM the node's processes (as ``ray stop`` does, but only this node's); SIGKILL what is left."""
        procs = self.tree()
        for proc in procs:
            with _gone_ok():
                proc.terminate()
        _, still = psutil.wait_procs(procs, timeout=3)
        for proc in still:
            with _gone_ok():
                proc.kill()
        psutil.wait_procs(still, timeout=5)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class _gone_ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:  # noqa: ANN001
        return kind is not None and issubclass(kind, psutil.NoSuchProcess)


class LocalCluster:
    """A head with its dashboard on 127.0.0.1, plus worker nodes added with :meth:`add_node`."""

    def __init__(self, root: Path, env: dict[str, str], head_args: tuple[str, ...] = ()) -> None:
        self.root, self.env = root, env
        root.mkdir(parents=True, exist_ok=True)
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.nodes: list[RayNode] = []
        self.head = self._start("head", ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                                         f"--dashboard-port={self.dashboard_port}",
                                         f"--ray-client-server-port={self.client_port}", *head_args])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, args: list[str]) -> RayNode:
        node = RayNode(name, self.root, args, self.env)
        self.nodes.append(node)
        return node

    def add_node(self, name: str, resources: dict[str, float]) -> RayNode:
        return self._start(name, [f"--address={self.gcs_address}", "--num-cpus=1",
                                  f"--resources={json.dumps(resources)}"])

    def wait_dashboard(self, timeout_s: float = 60.0, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.head.alive():
                raise RuntimeError(f"the head exited: {self.head.tail()}")
            try:
                request = urllib.request.Request(f"{self.url}/api/version", headers=headers or {})
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"no dashboard at {self.url} after {timeout_s:g} s: {self.head.tail()}")

    def alive_nodes(self) -> dict[str, dict]:
        """``{node_id: node}`` of the nodes the GCS reports ALIVE (the dashboard's state API)."""
        with urllib.request.urlopen(f"{self.url}/api/v0/nodes?limit=100", timeout=10) as response:
            payload = json.loads(response.read())
        rows = payload["data"]["result"]["result"]
        return {row["node_id"]: row for row in rows if row["state"] == "ALIVE"}

    def wait_nodes(self, count: int, timeout_s: float = 60.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                nodes = self.alive_nodes()
                if len(nodes) == count:
                    return nodes
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{count} nodes not alive after {timeout_s:g} s: "
                           + " | ".join(f"{n.name}: {n.tail(800)}" for n in self.nodes))

    def node_id(self, resource: str) -> str:
        """The id of the alive node that has the custom resource ``resource``."""
        found = [nid for nid, row in self.alive_nodes().items() if resource in (row.get("resources_total") or {})]
        assert len(found) == 1, found
        return found[0]

    def stop(self) -> None:
        for node in reversed(self.nodes):  # the head last
            node.stop()


@contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A short private directory (Ray's socket paths must stay under 107 characters), removed after."""
    path = Path(tempfile.mkdtemp(prefix="mfray-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# health checks every 0.5 s, a node dead after 3 missed: a killed node is noticed within seconds
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3"}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m matforge ARGS`` in a fresh process (the installed CLI, as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "matforge", *args], env=env or base_env(RAY_AUTH_MODE="disabled"),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def pretrain_command(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["matforge", "pretrain", "--config", "quickstart", f"data.train={data}", f"data.val={data}",
            "data.synth.structures=0", "data.max_atoms=48", "data.loader_workers=0", "scaling.num_workers=2",
            "scaling.cpus_per_worker=1", "scaling.threads_per_worker=1",
            "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}", "optim.warmup_steps=1",
            f"run.storage_path={storage}", f"run.name={name}", *extra]


def ranks_by_node(logs: str) -> dict[int, str]:
    """``{rank: node id}`` from the workers' start lines in the job's logs (the last line per rank)."""
    return {int(m.group(1)): m.group(3) for m in RANK_LINE.finditer(logs)}


def one_error_line(stderr: str) -> str:
    """The stderr of a refused command: exactly one line, ``matforge: error: ...``, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("matforge: error: "), stderr
    return lines[0]
