"""``matforge cluster submit`` against real Ray clusters on this machine (loopback), run as the CLI.

* a two-node cluster: a head (dashboard on 127.0.0.1, 1 CPU) and a second node joined with
  ``ray start --address`` (1 CPU, its own temp dir, ports and custom resource); a 2-worker
  pre-training job runs one rank on each node, ends SUCCEEDED, and leaves its checkpoint,
  TensorBoard events and export in the run directory;
* the same cluster loses its second node mid-run (all of that node's processes SIGKILLed, as a
  preempted spot machine) and a replacement node joins: the job resumes from its checkpoint and
  succeeds, or fails naming the lost node, and never hangs (a bounded wait, then a stop);
* a head that requires token authentication (``RAY_AUTH_MODE=token``): the right token submits and
  follows a job; a wrong or missing token is a one-line error;
* a head without the dashboard: a one-line error for its dashboard URL and for its GCS address.

Each node is a ``ray start --block`` process of its own with a private ``--temp-dir`` and free ports,
so nothing collides with another Ray instance on the machine; cleaning up terminates exactly those
processes and their descendants (never ``ray stop``, which stops every Ray process of the machine),
also when a test fails, and the ``--block`` processes die with the test process (PR_SET_PDEATHSIG).
About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

psutil = pytest.importorskip("psutil")  # comes with ray[default]

# a stuck test is stopped (and its clusters torn down by the fixtures) well before CI gives up
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

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


@pytest.fixture(scope="module")
def short_tmp() -> Iterator[Path]:
    """A short private directory (Ray's socket paths must stay under 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="mfray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# health checks every 0.5 s, a node dead after 3 missed: a killed node is noticed within seconds
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def two_nodes(short_tmp: Path) -> Iterator[LocalCluster]:
    """Head (1 CPU, resource ``mf_head``) + a second node (1 CPU, resource ``mf_second``), no token auth."""
    cluster = LocalCluster(short_tmp / "two", base_env(RAY_AUTH_MODE="disabled", **FAST_HEALTH),
                           ("--num-cpus=1", '--resources={"mf_head": 1}'))
    try:
        cluster.wait_dashboard()
        cluster.add_node("second", {"mf_second": 1})
        cluster.wait_nodes(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from matforge.datasets.splits import write_splits
    from matforge.datasets.synth import write_synth

    out = tmp_path_factory.mktemp("cluster-data") / "emt"
    write_synth(out, 40, seed=1, max_atoms=16)
    write_splits(out, [0.8, 0.2], names=["train", "val"], group="trajectory", seed=0)
    return out


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


def test_two_node_job_succeeds_with_one_rank_per_node(two_nodes: LocalCluster, tiny_data: Path,
                                                      tmp_path: Path) -> None:
    head_id, second_id = two_nodes.node_id("mf_head"), two_nodes.node_id("mf_second")
    started = time.monotonic()
    done = cli("cluster", "submit", "--address", two_nodes.url, "--entrypoint-num-cpus", "0",
               "--submission-id", "mf-two-nodes", "--follow", "--",
               *pretrain_command(tiny_data, tmp_path, "two-nodes", "train.max_steps=6", "train.eval_every=3",
                                 "train.checkpoint_every=3", "train.log_every=1"), timeout=300)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    assert done.stdout.splitlines()[0] == "mf-two-nodes"  # the submission id comes first, alone
    assert "matforge: job mf-two-nodes SUCCEEDED" in done.stderr
    # one rank on each node: the 1-CPU nodes cannot hold both workers
    assert ranks_by_node(done.stdout) in ({0: head_id, 1: second_id}, {0: second_id, 1: head_id}), done.stdout[-4000:]

    status = cli("cluster", "status", "mf-two-nodes", "--address", two_nodes.url)
    assert status.returncode == 0 and re.search(r"^status\s+SUCCEEDED$", status.stdout, re.M), status
    listed = cli("cluster", "list", "--address", two_nodes.url)
    assert listed.returncode == 0 and re.search(r"^mf-two-nodes\s+SUCCEEDED\s", listed.stdout, re.M), listed
    logs = cli("cluster", "logs", "mf-two-nodes", "--address", two_nodes.url)
    assert logs.returncode == 0 and ranks_by_node(logs.stdout) == ranks_by_node(done.stdout)
    # the GCS address (what ray start prints) finds the same job server
    assert cli("cluster", "status", "mf-two-nodes", "--address", two_nodes.gcs_address).returncode == 0
    taken = cli("cluster", "submit", "--address", two_nodes.url, "--submission-id", "mf-two-nodes", "--no-wait",
                "--", "true")
    assert taken.returncode == 2 and "submission id 'mf-two-nodes' is taken" in one_error_line(taken.stderr)
    ended = cli("cluster", "stop", "mf-two-nodes", "--address", two_nodes.url)
    assert ended.returncode == 0 and "SUCCEEDED: Job finished successfully. (it had already ended)" in ended.stdout

    run_dir = tmp_path / "two-nodes"
    assert list(run_dir.glob("checkpoint_*/state.json")), sorted(run_dir.iterdir())
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "export" / "card.json").is_file()
    print(f"two-node job: {elapsed:.1f} s")


def test_lost_node_resumes_from_checkpoint_or_fails_naming_it(two_nodes: LocalCluster, tiny_data: Path,
                                                             tmp_path: Path) -> None:
    """SIGKILL every process of the second node once the run has a checkpoint; a new node joins."""
    second = next(node for node in two_nodes.nodes if node.name == "second")
    lost_id = two_nodes.node_id("mf_second")
    submitted = cli("cluster", "submit", "--address", two_nodes.url, "--entrypoint-num-cpus", "0",
                    "--submission-id", "mf-lost-node", "--no-wait", "--",
                    *pretrain_command(tiny_data, tmp_path, "lost-node", "train.max_steps=60", "train.eval_every=60",
                                      "train.checkpoint_every=5", "train.log_every=10", "run.max_failures=2"))
    assert submitted.returncode == 0 and submitted.stdout.strip() == "mf-lost-node", submitted
    run_dir = tmp_path / "lost-node"
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 180
        while len(list(run_dir.glob("checkpoint_*/state.json"))) < 2:  # the first one surely registered
            assert time.monotonic() < deadline, cli("cluster", "logs", "mf-lost-node", "--address", two_nodes.url).stdout[-3000:]
            time.sleep(0.2)
        second.kill()
        print(f"killed the second node at {time.monotonic() - started:.1f} s")
        replacement = two_nodes.add_node("replacement", {"mf_second": 1})
        assert replacement.alive()
        followed = cli("cluster", "logs", "mf-lost-node", "--follow", "--address", two_nodes.url, timeout=300)
    finally:
        final = cli("cluster", "status", "mf-lost-node", "--address", two_nodes.url)
        if "RUNNING" in final.stdout or "PENDING" in final.stdout:
            cli("cluster", "stop", "mf-lost-node", "--address", two_nodes.url)
    logs = followed.stdout
    last_line = (followed.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    print(f"lost node: exit {followed.returncode}; {last_line}")
    if followed.returncode == 0:  # recovered: restarted from the checkpoint on the replacement node
        assert re.search(r"\[matforge\] resumed at step \d+ ", logs), logs[-4000:]
        new_id = two_nodes.node_id("mf_second")
        assert new_id != lost_id and new_id in ranks_by_node(logs).values(), logs[-4000:]
        assert "matforge: job mf-lost-node SUCCEEDED" in followed.stderr
    else:  # gave up: the failure names the node that was lost
        assert followed.returncode == 1, (followed.returncode, followed.stderr[-2000:])
        assert lost_id in logs or lost_id in followed.stderr, (logs[-4000:], followed.stderr[-2000:])


@pytest.fixture(scope="module")
def token_head(short_tmp: Path) -> Iterator[tuple[LocalCluster, str]]:
    """A one-node cluster started with ``RAY_AUTH_MODE=token`` and a fresh token."""
    token = secrets.token_hex(16)
    cluster = LocalCluster(short_tmp / "token", base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                           ("--num-cpus=1",))
    try:
        cluster.wait_dashboard(headers={"Authorization": f"Bearer {token}"})
        yield cluster, token
    finally:
        cluster.stop()


def test_token_auth(token_head: tuple[LocalCluster, str], tmp_path: Path) -> None:
    cluster, token = token_head
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    right = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(home))
    code = tmp_path / "code"  # uploaded as the working directory (an authenticated upload)
    code.mkdir()
    (code / "hello.txt").write_text("uploaded\n")
    env_file = tmp_path / "env.yaml"
    env_file.write_text("env_vars: {GREETING: from-file, OTHER: kept}\n")
    done = cli("cluster", "submit", "--address", cluster.url, "--runtime-env", str(env_file), "--working-dir", str(code),
               "--env", "GREETING=from-flag", "--entrypoint-num-cpus", "0", "--", sys.executable, "-c",
               "import os; print('token accepted', open('hello.txt').read().strip(), os.environ['GREETING'], "
               "os.environ['OTHER'])", env=right)
    assert done.returncode == 0, (done.stdout, done.stderr)
    # the log stream (a websocket) carried the token too; the runtime env arrived merged
    assert "token accepted uploaded from-flag kept" in done.stdout
    job_id = done.stdout.splitlines()[0]

    token_file = tmp_path / "token.txt"
    token_file.write_text(f"{token}\n")
    by_file = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), HOME=str(home))
    assert cli("cluster", "status", job_id, "--address", cluster.url, env=by_file).returncode == 0
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(token)
    listed = cli("cluster", "list", "--address", cluster.url, env=base_env(RAY_AUTH_MODE="token", HOME=str(home)))
    assert listed.returncode == 0 and job_id in listed.stdout

    wrong = cli("cluster", "list", "--address", cluster.url,
                env=base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token", HOME=str(home)))
    assert wrong.returncode == 2
    assert "refused the token from RAY_AUTH_TOKEN" in one_error_line(wrong.stderr)
    missing = cli("cluster", "submit", "--address", cluster.url, "--", "true", env=base_env(HOME=str(home)))
    assert missing.returncode == 2
    assert "requires token authentication" in one_error_line(missing.stderr)
    none_found = cli("cluster", "list", "--address", cluster.url,
                     env=base_env(RAY_AUTH_MODE="token", HOME=str(tmp_path)))
    assert none_found.returncode == 2 and "no token was found" in one_error_line(none_found.stderr)

    # by the GCS address the token goes to the GCS first (gRPC), with the same outcomes
    assert cli("cluster", "list", "--address", cluster.gcs_address, env=right).returncode == 0
    gcs_wrong = cli("cluster", "list", "--address", cluster.gcs_address,
                    env=base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token", HOME=str(home)))
    assert gcs_wrong.returncode == 2 and "refused the token" in one_error_line(gcs_wrong.stderr)
    gcs_missing = cli("cluster", "list", "--address", cluster.gcs_address, env=base_env(HOME=str(home)))
    assert gcs_missing.returncode == 2 and "requires token authentication" in one_error_line(gcs_missing.stderr)


def test_head_without_dashboard_is_a_one_line_error(short_tmp: Path) -> None:
    cluster = LocalCluster(short_tmp / "nodash", base_env(RAY_AUTH_MODE="disabled"),
                           ("--num-cpus=1", "--include-dashboard=false"))
    try:
        deadline = time.monotonic() + 60
        while not list(cluster.head.temp_dir.glob("session_*/logs/raylet.out")):  # the node is up
            assert cluster.head.alive() and time.monotonic() < deadline, cluster.head.tail()
            time.sleep(0.5)
        time.sleep(2)
        by_url = cli("cluster", "list", "--address", cluster.url)
        assert by_url.returncode == 2 and "connection refused" in one_error_line(by_url.stderr)
        by_gcs = cli("cluster", "list", "--address", cluster.gcs_address)
        assert by_gcs.returncode == 2
        assert "without the dashboard" in one_error_line(by_gcs.stderr), by_gcs.stderr
    finally:
        cluster.stop()
