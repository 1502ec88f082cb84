"""``matforge cluster submit`` on a real two-node Ray cluster on this machine (loopback), as the CLI.

* a head (dashboard on 127.0.0.1, 1 CPU) and a second node joined with ``ray start --address`` (1 CPU,
  its own temp dir, ports and custom resource); a 2-worker pre-training job runs one rank on each node,
  ends SUCCEEDED, and leaves its checkpoint, TensorBoard events and export in the run directory;
* the same cluster loses its second node mid-run (all of that node's processes SIGKILLed, as a
  preempted spot machine) and a replacement node joins: the job resumes from its checkpoint and
  succeeds, or fails naming the lost node, and never hangs (a bounded wait, then a stop).

The nodes are tests/loopback_cluster.py's. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import pytest
from loopback_cluster import (FAST_HEALTH, LocalCluster, base_env, cli, one_error_line, pretrain_command,
                              ranks_by_node, short_socket_dir)

# a stuck test is stopped (and its clusters torn down by the fixtures) well before CI gives up
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def short_tmp() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path


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
